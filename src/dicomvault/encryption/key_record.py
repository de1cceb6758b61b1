"""The key record: which master keys the stored objects may need, kept beside them.

The record is the JSON file ``.encryption.json`` in the storage folder, or
the object of that name under the prefix in S3 storage. For
each master key that may have wrapped a stored data key, it contains a check:
a random data key wrapped under that key. Start-up unwraps every check, so a
missing or wrong key stops the server before it serves anything. It also
records the key the running server wraps new data keys under, and whether
objects stored before encryption was turned on may still be plaintext.

The record contains no key material: a check is as safe to show as any
wrapped data key in an object header.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dicomvault.encryption.keys import KEY_BYTES, KeyProvider, UnknownKeyError, UnwrapError

LOGGER = logging.getLogger(__name__)

RECORD_NAME = ".encryption.json"
RECORD_VERSION = 1


class KeyRecordError(ValueError):
    """The key record is unreadable, or the configured keys do not match it."""


@dataclasses.dataclass
class KeyRecord:
    """The contents of the key record.

    ``key_checks`` maps each master key id that stored objects may need to a
    data key wrapped under it, in base64. ``current_key_id`` is the key the
    server that holds the data directory lock wraps new data keys under.
    ``plaintext_objects`` is True while objects stored before encryption was
    turned on may remain unencrypted.
    """

    key_checks: dict[str, str] = dataclasses.field(default_factory=dict)
    current_key_id: str = ""
    plaintext_objects: bool = False

    @staticmethod
    def path(root: Path) -> Path:
        """Return the path of the record in the storage folder ``root``."""
        return root / RECORD_NAME

    @classmethod
    def load(cls, root: Path) -> KeyRecord | None:
        """Read the record of the storage folder ``root``; None if there is none.

        Raises
        ------
        KeyRecordError
            If the file cannot be read or is not a record of this version.
        """
        path = cls.path(root)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyRecordError(f"Cannot read the key record {path}: {exc}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: bytes, where: str) -> KeyRecord:
        """Return the record encoded in ``data``, read from ``where`` (for messages).

        Raises
        ------
        KeyRecordError
            If ``data`` is not a record of this version.
        """
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyRecordError(f"Cannot read the key record {where}: {exc}") from None
        if not isinstance(document, dict) or document.get("version") != RECORD_VERSION:
            raise KeyRecordError(
                f"The key record {where} is not a version {RECORD_VERSION} key record; "
                "restore it from a backup"
            )
        checks = document.get("key_checks")
        if not isinstance(checks, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in checks.items()
        ):
            raise KeyRecordError(f"The key record {where} has no valid 'key_checks' object")
        return cls(
            dict(checks),
            str(document.get("current_key_id") or ""),
            bool(document.get("plaintext_objects", False)),
        )

    def encode(self) -> bytes:
        """Return the record as indented JSON text in UTF-8."""
        document = {
            "version": RECORD_VERSION,
            "current_key_id": self.current_key_id,
            "plaintext_objects": self.plaintext_objects,
            "key_checks": dict(sorted(self.key_checks.items())),
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")

    def save(self, root: Path) -> None:
        """Write the record atomically: to a temporary file that replaces the old one."""
        path = self.path(root)
        temporary = root / f".encryption-{uuid.uuid4().hex}.part"
        try:
            with temporary.open("wb") as file:
                file.write(self.encode())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        LOGGER.info("Saved the key record %s", path)

    def add_key(self, provider: KeyProvider) -> None:
        """Add a check for the provider's current key."""
        check = provider.wrap(AESGCM.generate_key(bit_length=KEY_BYTES * 8))
        self.key_checks[provider.current_key_id] = base64.b64encode(check).decode("ascii")

    def verify(self, provider: KeyProvider, location: str, record_location: str) -> None:
        """Check that the provider has every key of the record, and that each is the right key.

        ``location`` is the storage folder or bucket, and ``record_location``
        the record's file or object, both for messages.

        Raises
        ------
        KeyRecordError
            If a key of the record is not configured, or its check does not
            unwrap. The message names the key ids and what to do.
        """
        missing = [key_id for key_id in self.key_checks if key_id not in provider.key_ids]
        if missing:
            raise KeyRecordError(
                f"The stored files in {location} need master key {', '.join(missing)}, and the "
                f"configured keys are {', '.join(provider.key_ids)}. Set "
                f"{provider.current_key_setting} to the archive's key; while keys are being "
                f"rotated, list the earlier key in {provider.earlier_key_setting(missing[0])}"
            )
        for key_id, check in self.key_checks.items():
            try:
                provider.unwrap(key_id, base64.b64decode(check, validate=True))
            except (UnknownKeyError, UnwrapError, binascii.Error) as exc:
                raise KeyRecordError(
                    f"The configured master key {key_id} does not open its check in the key "
                    f"record {record_location} ({exc}); configure the key the archive was "
                    "encrypted with"
                ) from None
