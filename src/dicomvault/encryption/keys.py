"""Master keys: the KeyProvider protocol and the local provider that reads key files.

Every stored object has its own random data key. A master key never
encrypts object bytes. It only wraps (encrypts) and unwraps data keys, so
rotating the master key rewrites a few hundred bytes per object instead of
the objects. A provider for a cloud key management service implements the
same protocol: :mod:`dicomvault.encryption.kms` for AWS KMS.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dicomvault.config import EncryptionSettings
from dicomvault.storage.base import StorageError

LOGGER = logging.getLogger(__name__)

KEY_BYTES = 32  # AES-256
LOCAL_KEY_ID_PREFIX = "local:"
_KEY_ID_LABEL = b"dicomvault master key id"
_WRAP_LABEL = b"dicomvault data key wrapped under "
_WRAP_NONCE_BYTES = 12
_URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")


class KeySetupError(ValueError):
    """A master key cannot be used as configured.

    Causes are a missing or unsafe key file, a malformed key, or a KMS key
    that is missing, disabled or not accessible. The message names the
    setting, file or key and the fix, and never contains key material.
    """


class UnknownKeyError(LookupError):
    """A data key is wrapped under a master key that is not configured."""


class UnwrapError(ValueError):
    """A wrapped data key does not authenticate under the configured master key."""


class KeyServiceError(StorageError):
    """The key management service failed a wrap or unwrap request.

    The service could not be reached, kept throttling until the retries ran
    out, or denied access. A storage error, so that the request that
    stores or reads the object fails like one with a storage failure.
    """


class KeyProvider(Protocol):
    """Master keys that wrap and unwrap the data keys of stored objects.

    A provider has one current key, under which new data keys are wrapped,
    and may have earlier keys that still unwrap. Key ids are ASCII strings of
    at most 255 bytes that are stored in each object's header, so they must
    not reveal the key.
    """

    @property
    def current_key_id(self) -> str:
        """The id of the key that :meth:`wrap` uses."""
        ...

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of every configured key, the current one first."""
        ...

    @property
    def current_key_setting(self) -> str:
        """The setting that names the current key, for messages."""
        ...

    def earlier_key_setting(self, key_id: str) -> str:
        """Return the setting that lists the key ``key_id`` as an earlier key, for messages."""
        ...

    def wrap(self, data_key: bytes) -> bytes:
        """Encrypt ``data_key`` under the current master key.

        Raises
        ------
        KeyServiceError
            If the provider's key service fails the request.
        """
        ...

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """Decrypt a data key that :meth:`wrap` returned under the key ``key_id``.

        Raises
        ------
        UnknownKeyError
            If no configured key has the id ``key_id``.
        UnwrapError
            If the wrapped key does not authenticate: another key wrapped
            it, or its bytes were changed.
        KeyServiceError
            If the provider's key service fails the request.
        """
        ...

    def describe(self) -> str:
        """Return a one-line description for logs, with key ids and no key material."""
        ...


@dataclasses.dataclass(frozen=True)
class MasterKey:
    """A 256-bit master key, its id, and where it came from (a file or a variable)."""

    key_id: str
    source: str
    secret: bytes = dataclasses.field(repr=False)


class LocalKeyProvider:
    """Wraps data keys with AES-256-GCM under master keys held in this process.

    The wrapped form is a 12-byte random nonce followed by the ciphertext
    and tag. The key id is bound as associated data.
    """

    def __init__(self, current: MasterKey, previous: Sequence[MasterKey] = ()) -> None:
        self._current = current
        self._keys = {current.key_id: current}
        for key in previous:
            self._keys.setdefault(key.key_id, key)

    @property
    def current_key_id(self) -> str:
        """The id of the key new data keys are wrapped under."""
        return self._current.key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of the current key and then the previous keys."""
        return tuple(self._keys)

    @property
    def current_key_setting(self) -> str:
        """The key file setting and the variable that can name the current key."""
        return "encryption.key_file (or DICOMVAULT_ENCRYPTION_KEY)"

    def earlier_key_setting(self, key_id: str) -> str:
        """Return the key files setting and the variable that can list earlier keys."""
        return "encryption.previous_key_files (or DICOMVAULT_ENCRYPTION_PREVIOUS_KEYS)"

    def wrap(self, data_key: bytes) -> bytes:
        """Encrypt ``data_key`` under the current master key."""
        nonce = os.urandom(_WRAP_NONCE_BYTES)
        aad = _WRAP_LABEL + self._current.key_id.encode("ascii")
        return nonce + AESGCM(self._current.secret).encrypt(nonce, data_key, aad)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """Decrypt a data key wrapped under the master key ``key_id``; see KeyProvider."""
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownKeyError(f"master key {key_id} is not configured")
        nonce, sealed = wrapped[:_WRAP_NONCE_BYTES], wrapped[_WRAP_NONCE_BYTES:]
        try:
            return AESGCM(key.secret).decrypt(nonce, sealed, _WRAP_LABEL + key_id.encode("ascii"))
        except (InvalidTag, ValueError):
            raise UnwrapError(
                f"the data key does not authenticate under master key {key_id} from "
                f"{key.source}: another key wrapped it, or its bytes were changed"
            ) from None

    def describe(self) -> str:
        """Return the current key id and how many earlier keys are configured."""
        earlier = len(self._keys) - 1
        noun = "key" if earlier == 1 else "keys"
        return f"master key {self.current_key_id} and {earlier} earlier {noun} from local sources"


def key_id_for(secret: bytes) -> str:
    """Return the id of a local master key: a keyed hash of a fixed label, not the key.

    The same key always gets the same id, so a header names its key without
    a registry, and another key (a wrong key file) gets another id.
    """
    digest = hmac.new(secret, _KEY_ID_LABEL, hashlib.sha256).hexdigest()
    return LOCAL_KEY_ID_PREFIX + digest[:16]


def parse_key(text: str, where: str) -> bytes:
    """Return the 32 bytes of a key written as 64 hexadecimal digits or as base64.

    Raises
    ------
    KeySetupError
        If ``text`` is neither; the message names ``where`` and not the text.
    """
    text = text.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    # Standard and URL-safe base64, padded or not.
    padded = text.translate(_URL_SAFE_TO_STANDARD) + "=" * (-len(text) % 4)
    try:
        secret = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) == KEY_BYTES:
        return secret
    raise KeySetupError(
        f"{where} must contain a 256-bit key as 64 hexadecimal digits or as base64 "
        "(44 characters); 'dicomvault keys generate FILE' writes a key file"
    )


def read_key_file(path: str | Path, setting: str) -> MasterKey:
    """Read the master key in the file at ``path``, named by ``setting`` in messages.

    Raises
    ------
    KeySetupError
        If the file is missing, not a regular file, accessible to group or
        others, unreadable, or does not contain a key.
    """
    path = Path(path).expanduser()
    try:
        status = path.stat()
    except FileNotFoundError:
        raise KeySetupError(
            f"Key file {path} ({setting}) not found; correct the path, or create a new key "
            f"with 'dicomvault keys generate {path}'"
        ) from None
    except OSError as exc:
        raise KeySetupError(f"Cannot read key file {path} ({setting}): {exc.strerror}") from None
    if not stat.S_ISREG(status.st_mode):
        raise KeySetupError(f"Key file {path} ({setting}) is not a regular file")
    if status.st_mode & 0o077:
        raise KeySetupError(
            f"Key file {path} ({setting}) is accessible to group or others (mode "
            f"{stat.S_IMODE(status.st_mode):04o}); restrict it with 'chmod 600 {path}'"
        )
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        text = ""  # parse_key reports it without quoting the bytes
    except OSError as exc:
        raise KeySetupError(f"Cannot read key file {path} ({setting}): {exc.strerror}") from None
    secret = parse_key(text, f"Key file {path} ({setting})")
    return MasterKey(key_id_for(secret), f"key file {path}", secret)


def key_from_variable(text: str, variable: str) -> MasterKey:
    """Return the master key given in the environment variable ``variable``."""
    secret = parse_key(text, f"The environment variable {variable}")
    return MasterKey(key_id_for(secret), f"environment variable {variable}", secret)


def load_key_provider(settings: EncryptionSettings) -> KeyProvider:
    """Build the provider that ``settings.provider`` names, from ``settings`` alone.

    Worker processes call it too, so it needs nothing else: AWS credentials
    come from the standard AWS environment variables, profiles or role.

    Raises
    ------
    KeySetupError
        If a key file or key variable is missing, unsafe or malformed, or a
        KMS key is missing, disabled, not accessible or not a symmetric
        encryption key.
    """
    if settings.provider == "aws-kms":
        # Imported here: boto3 takes a noticeable time to import, which
        # commands with local keys need not pay.
        from dicomvault.encryption.kms import load_kms_provider

        return load_kms_provider(settings)
    return load_local_provider(settings)


def load_local_provider(settings: EncryptionSettings) -> LocalKeyProvider:
    """Build the local provider from the key files and variables of ``settings``.

    Raises
    ------
    KeySetupError
        If a key file or key variable is missing, unsafe or malformed.
    """
    if settings.key_file:
        current = read_key_file(settings.key_file, "encryption.key_file")
    elif settings.key:
        current = key_from_variable(settings.key, "DICOMVAULT_ENCRYPTION_KEY")
    else:
        raise KeySetupError(
            "No master key is configured: set encryption.key_file or DICOMVAULT_ENCRYPTION_KEY"
        )
    previous = read_previous_keys(settings)
    for key in previous:
        if key.key_id == current.key_id:
            LOGGER.warning(
                "The previous key from %s is the current key %s; it is not needed there",
                key.source,
                key.key_id,
            )
    return LocalKeyProvider(current, previous)


def read_previous_keys(settings: EncryptionSettings) -> list[MasterKey]:
    """Read the earlier local keys of ``settings``: key files, then the variable's keys.

    Raises
    ------
    KeySetupError
        If a key file or key is missing, unsafe or malformed.
    """
    previous = [
        read_key_file(path, "encryption.previous_key_files") for path in settings.previous_key_files
    ]
    previous += [
        key_from_variable(text, "DICOMVAULT_ENCRYPTION_PREVIOUS_KEYS")
        for text in settings.previous_keys
    ]
    return previous


def generate_key_file(path: str | Path) -> str:
    """Write a new random master key to a new file readable by its owner only; return its id.

    The key is written as 64 hexadecimal digits and a newline, and flushed
    to disk before the function returns.

    Raises
    ------
    KeySetupError
        If the file exists (a key is never overwritten, because stored files
        may still need it) or cannot be written.
    """
    path = Path(path).expanduser()
    secret = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeySetupError(
            f"Key file {path} exists; choose another path. An existing key is never "
            "overwritten, because stored files may still need it"
        ) from None
    except OSError as exc:
        raise KeySetupError(f"Cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(secret.hex() + "\n")
        file.flush()
        os.fsync(file.fileno())
    return key_id_for(secret)
