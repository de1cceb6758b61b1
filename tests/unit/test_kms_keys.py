"""Unit tests for the AWS KMS key provider against moto's KMS server on loopback."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from dicomvault.config import Settings, load_settings
from dicomvault.encryption.key_record import KeyRecord
from dicomvault.encryption.keys import (
    KeyServiceError,
    KeySetupError,
    UnknownKeyError,
    UnwrapError,
    generate_key_file,
    load_key_provider,
    load_local_provider,
)
from dicomvault.encryption.kms import (
    CONTEXT_KEY_ID,
    CONTEXT_PURPOSE,
    CONTEXT_PURPOSE_VALUE,
    KmsKeyProvider,
    load_kms_provider,
)
from dicomvault.encryption.object_format import ObjectHeader, open_sealed, seal_chunks
from dicomvault.encryption.rotation import Outcome, rotate_storage
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.setup import STORAGE_FOLDER, StorageSetupError, open_storage
from tests.support.moto import REGION, MotoServer
from tests.support.network import LOOPBACK, free_port

DATA_KEY = bytes(range(32))
PLAINTEXT = b"DICM" + bytes(range(256)) * 300
KEY = "ab/cd/abcdef.dcm"


def kms_settings(
    moto_server: MotoServer,
    key_id: str,
    *previous: str,
    data_dir: Path | None = None,
    **extra: Any,
) -> Settings:
    """Return settings with encryption on under the KMS key ``key_id`` of ``moto_server``."""
    overrides = {
        "encryption.enabled": True,
        "encryption.provider": "aws-kms",
        "encryption.kms_key_id": key_id,
        "encryption.kms_previous_key_ids": list(previous),
        "encryption.kms_endpoint_url": moto_server.endpoint_url,
        "encryption.kms_max_attempts": 2,
        **extra,
    }
    if data_dir is not None:
        overrides["storage.data_dir"] = str(data_dir)
    return load_settings(environ={}, overrides=overrides)


def kms_provider(moto_server: MotoServer, key_id: str, *previous: str) -> KmsKeyProvider:
    return load_kms_provider(kms_settings(moto_server, key_id, *previous).encryption)


def seal(data: bytes, provider: KmsKeyProvider) -> bytes:
    return b"".join(seal_chunks([data], provider))


def header_key_ids(sealed: bytes) -> list[str]:
    header = ObjectHeader.read(io.BytesIO(sealed), "test")
    return [slot.key_id for slot in header.slots if slot is not None]


def count_requests(provider: KmsKeyProvider, operation: str) -> list[str]:
    """Record the key id of every ``operation`` request the provider's client sends."""
    calls: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(json.loads(params["body"])["KeyId"])

    provider.client.meta.events.register(f"before-call.kms.{operation}", record)
    return calls


@pytest.fixture
def key_arn(moto_server: MotoServer) -> str:
    return moto_server.new_kms_key()


@pytest.fixture
def provider(moto_server: MotoServer, key_arn: str) -> KmsKeyProvider:
    return kms_provider(moto_server, key_arn)


class TestWrapUnwrap:
    def test_round_trip(self, provider: KmsKeyProvider, key_arn: str) -> None:
        wrapped = provider.wrap(DATA_KEY)

        assert DATA_KEY not in wrapped
        assert provider.unwrap(key_arn, wrapped) == DATA_KEY

    def test_alias_resolved_to_arn(self, moto_server: MotoServer) -> None:
        alias = f"alias/dicomvault-{uuid.uuid4().hex[:8]}"
        arn = moto_server.new_kms_key(alias)

        provider = kms_provider(moto_server, alias)

        assert provider.current_key_id == arn
        assert provider.key_ids == (arn,)
        assert provider.describe() == (
            f"KMS key {arn} ({alias}) and 0 earlier keys at {moto_server.endpoint_url}"
        )

    def test_load_key_provider_picks_kms(self, moto_server: MotoServer, key_arn: str) -> None:
        provider = load_key_provider(kms_settings(moto_server, key_arn).encryption)

        assert isinstance(provider, KmsKeyProvider)
        assert provider.current_key_setting == "encryption.kms_key_id"

    def test_changed_bytes_rejected(self, provider: KmsKeyProvider, key_arn: str) -> None:
        wrapped = bytearray(provider.wrap(DATA_KEY))
        wrapped[-1] ^= 1

        with pytest.raises(UnwrapError) as raised:
            provider.unwrap(key_arn, bytes(wrapped))

        assert str(raised.value) == (
            f"the data key does not authenticate under KMS key {key_arn}: another key "
            "wrapped it, or its bytes were changed"
        )

    def test_empty_wrapped_key_rejected(self, provider: KmsKeyProvider, key_arn: str) -> None:
        with pytest.raises(UnwrapError, match="has 0 bytes, and KMS accepts 1 to 6144"):
            provider.unwrap(key_arn, b"")

    def test_context_binds_key_id(
        self, provider: KmsKeyProvider, moto_server: MotoServer, key_arn: str
    ) -> None:
        context = {CONTEXT_PURPOSE: CONTEXT_PURPOSE_VALUE, CONTEXT_KEY_ID: "another key"}
        wrapped = moto_server.kms_client().encrypt(
            KeyId=key_arn, Plaintext=DATA_KEY, EncryptionContext=context
        )["CiphertextBlob"]

        with pytest.raises(UnwrapError):
            provider.unwrap(key_arn, wrapped)

    def test_unknown_key_id(self, provider: KmsKeyProvider, moto_server: MotoServer) -> None:
        other = moto_server.new_kms_key()

        with pytest.raises(UnknownKeyError, match=f"master key {other} is not configured"):
            provider.unwrap(other, provider.wrap(DATA_KEY))

    def test_unwrap_cached(self, provider: KmsKeyProvider, key_arn: str) -> None:
        wrapped = provider.wrap(DATA_KEY)
        decrypts = count_requests(provider, "Decrypt")

        for _ in range(3):
            assert provider.unwrap(key_arn, wrapped) == DATA_KEY

        assert decrypts == [key_arn]

    def test_sealed_object_names_arn(self, provider: KmsKeyProvider, key_arn: str) -> None:
        sealed = seal(PLAINTEXT, provider)

        assert header_key_ids(sealed) == [key_arn]
        with open_sealed(io.BytesIO(sealed), provider, KEY) as reader:
            assert reader.read() == PLAINTEXT


class TestRotation:
    def test_old_key_opens_after_switch(self, moto_server: MotoServer, key_arn: str) -> None:
        sealed_old = seal(PLAINTEXT, kms_provider(moto_server, key_arn))
        new_arn = moto_server.new_kms_key()

        switched = kms_provider(moto_server, new_arn, key_arn)
        sealed_new = seal(PLAINTEXT, switched)

        assert switched.key_ids == (new_arn, key_arn)
        assert header_key_ids(sealed_new) == [new_arn]
        for sealed in (sealed_old, sealed_new):
            with open_sealed(io.BytesIO(sealed), switched, KEY) as reader:
                assert reader.read() == PLAINTEXT

    def test_without_old_key_names_setting(self, moto_server: MotoServer, key_arn: str) -> None:
        sealed_old = seal(PLAINTEXT, kms_provider(moto_server, key_arn))
        new_only = kms_provider(moto_server, moto_server.new_kms_key())

        with pytest.raises(OSError) as raised:
            open_sealed(io.BytesIO(sealed_old), new_only, KEY)

        assert str(raised.value) == (
            f"Stored object {KEY} is encrypted under master key {key_arn}, which is not "
            "configured; add that key to encryption.kms_previous_key_ids"
        )

    def test_rotate_storage_to_new_key(
        self, moto_server: MotoServer, key_arn: str, tmp_path: Path
    ) -> None:
        old = open_storage(kms_settings(moto_server, key_arn, data_dir=tmp_path))
        assert isinstance(old, EncryptedStorage)
        keys = [f"ab/cd/{number:04d}.dcm" for number in range(3)]
        for key in keys:
            old.put(key, [PLAINTEXT])
        new_arn = moto_server.new_kms_key()
        settings = kms_settings(moto_server, new_arn, key_arn, data_dir=tmp_path)
        rotating = open_storage(settings, serving=True)
        assert isinstance(rotating, EncryptedStorage)

        report = rotate_storage(rotating)

        assert report.counts[Outcome.REWRAPPED] == len(keys)
        assert report.counts[Outcome.FAILED] == 0
        only_new = kms_provider(moto_server, new_arn)
        for key in keys:
            sealed = (tmp_path / STORAGE_FOLDER / key).read_bytes()
            assert header_key_ids(sealed) == [new_arn]
            with open_sealed(io.BytesIO(sealed), only_new, key) as reader:
                assert reader.read() == PLAINTEXT

    def test_local_key_moves_to_kms(
        self, moto_server: MotoServer, key_arn: str, tmp_path: Path
    ) -> None:
        key_file = tmp_path / "local.key"
        local_id = generate_key_file(key_file)
        local_settings = load_settings(
            environ={},
            overrides={"encryption.enabled": True, "encryption.key_file": str(key_file)},
        )
        sealed_local = b"".join(
            seal_chunks([PLAINTEXT], load_local_provider(local_settings.encryption))
        )

        provider = load_kms_provider(
            kms_settings(
                moto_server, key_arn, **{"encryption.previous_key_files": [str(key_file)]}
            ).encryption
        )

        assert provider.key_ids == (key_arn, local_id)
        assert provider.earlier_key_setting(local_id) == (
            "encryption.previous_key_files (or DICOMVAULT_ENCRYPTION_PREVIOUS_KEYS)"
        )
        with open_sealed(io.BytesIO(sealed_local), provider, KEY) as reader:
            assert reader.read() == PLAINTEXT

    def test_rotate_local_storage_to_kms(
        self, moto_server: MotoServer, key_arn: str, tmp_path: Path
    ) -> None:
        data_dir = tmp_path / "data"
        key_file = tmp_path / "local.key"
        local_id = generate_key_file(key_file)
        local = open_storage(
            load_settings(
                environ={},
                overrides={
                    "storage.data_dir": str(data_dir),
                    "encryption.enabled": True,
                    "encryption.key_file": str(key_file),
                },
            )
        )
        local.put(KEY, [PLAINTEXT])
        settings = kms_settings(
            moto_server,
            key_arn,
            data_dir=data_dir,
            **{"encryption.previous_key_files": [str(key_file)]},
        )
        rotating = open_storage(settings, serving=True)
        assert isinstance(rotating, EncryptedStorage)

        report = rotate_storage(rotating)

        assert report.counts[Outcome.FAILED] == 0
        assert report.counts[Outcome.REWRAPPED] + report.counts[Outcome.SEALED] == 1
        sealed = (data_dir / STORAGE_FOLDER / KEY).read_bytes()
        assert header_key_ids(sealed) == [key_arn]
        assert local_id not in header_key_ids(sealed)
        with open_sealed(io.BytesIO(sealed), kms_provider(moto_server, key_arn), KEY) as reader:
            assert reader.read() == PLAINTEXT


class TestKeySetup:
    def test_missing_key(self, moto_server: MotoServer) -> None:
        with pytest.raises(KeySetupError) as raised:
            kms_provider(moto_server, "alias/no-such-key")

        assert str(raised.value) == (
            f"KMS key alias/no-such-key (encryption.kms_key_id) not found in region {REGION} "
            f"at {moto_server.endpoint_url}; correct the key id, alias name or ARN, or the "
            "region (encryption.kms_region)"
        )

    def test_disabled_key(self, moto_server: MotoServer, key_arn: str) -> None:
        moto_server.disable_kms_key(key_arn)

        with pytest.raises(KeySetupError) as raised:
            kms_provider(moto_server, key_arn)

        assert str(raised.value) == (
            f"KMS key {key_arn} (encryption.kms_key_id) is disabled, so it cannot wrap or "
            f"unwrap data keys; enable it ('aws kms enable-key --key-id {key_arn}'), or "
            "remove it from encryption.kms_key_id if no stored file needs it"
        )

    def test_disabled_previous_key(self, moto_server: MotoServer, key_arn: str) -> None:
        old_arn = moto_server.new_kms_key()
        moto_server.disable_kms_key(old_arn)

        with pytest.raises(KeySetupError) as raised:
            kms_provider(moto_server, key_arn, old_arn)

        assert str(raised.value).startswith(
            f"KMS key {old_arn} (encryption.kms_previous_key_ids) is disabled"
        )

    def test_key_pending_deletion(self, moto_server: MotoServer, key_arn: str) -> None:
        moto_server.schedule_kms_key_deletion(key_arn)

        with pytest.raises(KeySetupError) as raised:
            kms_provider(moto_server, key_arn)

        assert str(raised.value) == (
            f"KMS key {key_arn} (encryption.kms_key_id) is scheduled for deletion; cancel "
            f"the deletion ('aws kms cancel-key-deletion --key-id {key_arn}') and enable it, "
            "because files under it can never be read once it is deleted"
        )

    def test_hmac_key_rejected(self, moto_server: MotoServer) -> None:
        metadata = moto_server.kms_client().create_key(
            KeyUsage="GENERATE_VERIFY_MAC", KeySpec="HMAC_256"
        )["KeyMetadata"]

        with pytest.raises(KeySetupError) as raised:
            kms_provider(moto_server, metadata["Arn"])

        assert str(raised.value) == (
            f"KMS key {metadata['Arn']} (encryption.kms_key_id) has key usage "
            "GENERATE_VERIFY_MAC and key spec HMAC_256; a master key must be a symmetric "
            "encryption key (ENCRYPT_DECRYPT, SYMMETRIC_DEFAULT)"
        )

    def test_unreachable_endpoint(self, key_arn: str) -> None:
        endpoint = f"http://{LOOPBACK}:{free_port()}"
        settings = load_settings(
            environ={},
            overrides={
                "encryption.enabled": True,
                "encryption.provider": "aws-kms",
                "encryption.kms_key_id": key_arn,
                "encryption.kms_endpoint_url": endpoint,
                "encryption.kms_max_attempts": 1,
            },
        )

        with pytest.raises(KeySetupError) as raised:
            load_kms_provider(settings.encryption)

        message = str(raised.value)
        assert message.startswith(
            f"Cannot reach KMS at {endpoint} to check KMS key {key_arn} (encryption.kms_key_id): "
        )
        assert message.endswith(
            "; check encryption.kms_endpoint_url, encryption.kms_region and the network"
        )

    def test_no_credentials(
        self, moto_server: MotoServer, key_arn: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

        with pytest.raises(KeySetupError) as raised:
            kms_provider(moto_server, key_arn)

        assert str(raised.value) == (
            f"No AWS credentials found to use KMS key {key_arn} (encryption.kms_key_id); set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile with AWS_PROFILE, "
            "or run with an instance or container role"
        )


def install_throttling(provider: KmsKeyProvider, times: int) -> list[int]:
    """Fail the first ``times`` Encrypt requests with ThrottlingException; return the attempts."""
    attempts: list[int] = []

    def send(request: Any, **_: Any) -> AWSResponse | None:
        attempts.append(len(attempts) + 1)
        if len(attempts) > times:
            return None
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
        headers = {"Content-Type": "application/x-amz-json-1.1"}
        return AWSResponse(request.url, 400, headers, _Raw(body.encode()))

    provider.client.meta.events.register("before-send.kms.Encrypt", send)
    return attempts


class _Raw:
    """The raw body of a canned response."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


class TestThrottling:
    def test_throttled_request_retried(self, provider: KmsKeyProvider, key_arn: str) -> None:
        attempts = install_throttling(provider, times=1)

        wrapped = provider.wrap(DATA_KEY)

        assert attempts == [1, 2]
        assert provider.unwrap(key_arn, wrapped) == DATA_KEY

    def test_throttled_on_every_attempt(self, provider: KmsKeyProvider, key_arn: str) -> None:
        attempts = install_throttling(provider, times=2)

        with pytest.raises(KeyServiceError) as raised:
            provider.wrap(DATA_KEY)

        assert attempts == [1, 2]
        assert str(raised.value) == (
            f"KMS Encrypt with key {key_arn} failed: KMS throttled the request on all 2 "
            "attempts; raise the account's KMS request quota, or encryption.kms_max_attempts"
        )

    def test_store_fails_as_storage_error(
        self, moto_server: MotoServer, key_arn: str, tmp_path: Path
    ) -> None:
        storage = open_storage(kms_settings(moto_server, key_arn, data_dir=tmp_path))
        assert isinstance(storage, EncryptedStorage)
        assert isinstance(storage.provider, KmsKeyProvider)
        install_throttling(storage.provider, times=2)

        with pytest.raises(OSError, match=f"Cannot write {KEY} in .*: KMS Encrypt with key"):
            storage.put(KEY, [PLAINTEXT])

        assert not storage.exists(KEY)


class TestOpenStorage:
    def test_record_lists_arn(self, moto_server: MotoServer, key_arn: str, tmp_path: Path) -> None:
        storage = open_storage(kms_settings(moto_server, key_arn, data_dir=tmp_path), serving=True)
        assert isinstance(storage, EncryptedStorage)

        storage.put(KEY, [PLAINTEXT])

        record = KeyRecord.load(tmp_path / STORAGE_FOLDER)
        assert record is not None
        assert list(record.key_checks) == [key_arn]
        assert record.current_key_id == key_arn
        with storage.open(KEY) as stream:
            assert stream.read() == PLAINTEXT

    def test_other_key_stops(self, moto_server: MotoServer, key_arn: str, tmp_path: Path) -> None:
        first = open_storage(kms_settings(moto_server, key_arn, data_dir=tmp_path))
        first.put(KEY, [PLAINTEXT])
        other_arn = moto_server.new_kms_key()

        with pytest.raises(StorageSetupError) as raised:
            open_storage(kms_settings(moto_server, other_arn, data_dir=tmp_path))

        assert str(raised.value) == (
            f"The stored files in {tmp_path / STORAGE_FOLDER} need master key {key_arn}, and "
            f"the configured keys are {other_arn}. Set encryption.kms_key_id to the archive's "
            "key; while keys are being rotated, list the earlier key in "
            "encryption.kms_previous_key_ids"
        )

    def test_disabled_key_stops(
        self, moto_server: MotoServer, key_arn: str, tmp_path: Path
    ) -> None:
        first = open_storage(kms_settings(moto_server, key_arn, data_dir=tmp_path))
        first.put(KEY, [PLAINTEXT])
        moto_server.disable_kms_key(key_arn)

        with pytest.raises(StorageSetupError, match=f"KMS key {key_arn} .* is disabled"):
            open_storage(kms_settings(moto_server, key_arn, data_dir=tmp_path))
