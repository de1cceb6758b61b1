"""Unit tests for master keys: key files, key variables, wrapping and key ids."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from dicomvault.config import load_settings
from dicomvault.encryption.keys import (
    KeySetupError,
    LocalKeyProvider,
    UnknownKeyError,
    UnwrapError,
    generate_key_file,
    key_from_variable,
    key_id_for,
    load_key_provider,
    parse_key,
    read_key_file,
)

SECRET = bytes(range(32))


def write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="ascii")
    path.chmod(mode)
    return path


class TestParseKey:
    @pytest.mark.parametrize(
        "text",
        [
            SECRET.hex(),
            SECRET.hex().upper() + "\n",
            base64.b64encode(SECRET).decode(),
            base64.urlsafe_b64encode(SECRET).decode().rstrip("="),
        ],
        ids=["hex", "hex-upper-newline", "base64", "base64-url-unpadded"],
    )
    def test_accepted_forms(self, text: str) -> None:
        assert parse_key(text, "here") == SECRET

    @pytest.mark.parametrize(
        "text",
        ["", "abc", SECRET.hex()[:-2], base64.b64encode(SECRET[:16]).decode(), "z" * 64],
        ids=["empty", "short", "31-bytes-hex", "128-bit-base64", "not-hex"],
    )
    def test_rejected_without_quoting(self, text: str) -> None:
        with pytest.raises(KeySetupError) as raised:
            parse_key(text, "Key file /k")

        message = str(raised.value)
        assert message.startswith("Key file /k must contain a 256-bit key")
        assert not text or text not in message


class TestKeyFile:
    def test_read(self, tmp_path: Path) -> None:
        key = read_key_file(write_key(tmp_path / "k", SECRET.hex()), "encryption.key_file")

        assert key.secret == SECRET
        assert key.key_id == key_id_for(SECRET)
        assert key.source == f"key file {tmp_path / 'k'}"
        assert SECRET.hex() not in repr(key)

    def test_missing_names_path_and_fix(self, tmp_path: Path) -> None:
        path = tmp_path / "missing.key"

        with pytest.raises(KeySetupError) as raised:
            read_key_file(path, "encryption.key_file")

        assert str(raised.value) == (
            f"Key file {path} (encryption.key_file) not found; correct the path, or create a "
            f"new key with 'dicomvault keys generate {path}'"
        )

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
    def test_readable_by_others_rejected(self, tmp_path: Path, mode: int) -> None:
        path = write_key(tmp_path / "k", SECRET.hex(), mode)

        with pytest.raises(KeySetupError, match=f"mode {mode:04o}.*chmod 600"):
            read_key_file(path, "encryption.key_file")

    def test_directory_rejected(self, tmp_path: Path) -> None:
        with pytest.raises(KeySetupError, match="is not a regular file"):
            read_key_file(tmp_path, "encryption.key_file")

    def test_binary_content_not_quoted(self, tmp_path: Path) -> None:
        path = tmp_path / "k"
        path.write_bytes(SECRET)
        path.chmod(0o600)

        with pytest.raises(KeySetupError, match="must contain a 256-bit key"):
            read_key_file(path, "encryption.key_file")


class TestGenerate:
    def test_writes_private_hex_key(self, tmp_path: Path) -> None:
        path = tmp_path / "new.key"

        key_id = generate_key_file(path)

        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = read_key_file(path, "encryption.key_file")
        assert key.key_id == key_id
        assert len(path.read_text().strip()) == 64

    def test_existing_file_kept(self, tmp_path: Path) -> None:
        path = write_key(tmp_path / "old.key", SECRET.hex())

        with pytest.raises(KeySetupError, match="exists; choose another path"):
            generate_key_file(path)

        assert path.read_text() == SECRET.hex()

    def test_keys_differ(self, tmp_path: Path) -> None:
        assert generate_key_file(tmp_path / "a") != generate_key_file(tmp_path / "b")


class TestProvider:
    def test_key_id_does_not_reveal_key(self) -> None:
        key_id = key_id_for(SECRET)

        assert key_id.startswith("local:")
        assert len(key_id) == len("local:") + 16
        assert SECRET.hex()[:16] not in key_id

    def test_wrap_and_unwrap(self) -> None:
        provider = LocalKeyProvider(key_from_variable(SECRET.hex(), "VAR"))
        data_key = os.urandom(32)

        wrapped = provider.wrap(data_key)

        assert data_key not in wrapped
        assert provider.unwrap(provider.current_key_id, wrapped) == data_key

    def test_unknown_key(self) -> None:
        provider = LocalKeyProvider(key_from_variable(SECRET.hex(), "VAR"))

        with pytest.raises(UnknownKeyError, match="master key local:nope is not configured"):
            provider.unwrap("local:nope", b"\0" * 60)

    def test_damaged_wrapped_key(self) -> None:
        provider = LocalKeyProvider(key_from_variable(SECRET.hex(), "VAR"))
        wrapped = bytearray(provider.wrap(os.urandom(32)))
        wrapped[20] ^= 1

        with pytest.raises(UnwrapError, match="from environment variable VAR"):
            provider.unwrap(provider.current_key_id, bytes(wrapped))

    def test_load_from_settings(self, tmp_path: Path) -> None:
        old = write_key(tmp_path / "old.key", os.urandom(32).hex())
        settings = load_settings(
            environ={
                "DICOMVAULT_ENCRYPTION_ENABLED": "true",
                "DICOMVAULT_ENCRYPTION_KEY": SECRET.hex(),
                "DICOMVAULT_ENCRYPTION_PREVIOUS_KEY_FILES": str(old),
                "DICOMVAULT_ENCRYPTION_PREVIOUS_KEYS": base64.b64encode(os.urandom(32)).decode(),
            }
        )

        provider = load_key_provider(settings.encryption)

        assert provider.current_key_id == key_id_for(SECRET)
        assert len(provider.key_ids) == 3
        assert SECRET.hex() not in provider.describe()
