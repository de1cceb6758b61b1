"""Unit tests for S3 storage against moto's S3-compatible server on loopback."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from dicomvault.encryption.key_record import RECORD_NAME
from dicomvault.encryption.keys import generate_key_file
from dicomvault.encryption.object_format import is_sealed
from dicomvault.storage.base import StorageError, StorageFullError
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.in_place import in_place_key
from dicomvault.storage.s3 import S3Storage
from dicomvault.storage.s3_reader import READ_BLOCK_MAX, READ_BLOCK_MIN
from dicomvault.storage.setup import StorageSetupError, open_storage
from tests.support.moto import PART_SIZE, PREFIX, MotoServer, RangeRecorder, s3_settings
from tests.support.network import LOOPBACK, free_port

KEY = "ab/cd/abcdef.dcm"


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


@pytest.fixture
def storage(moto_server: MotoServer, bucket: str, tmp_path: Path) -> S3Storage:
    return S3Storage(s3_settings(moto_server, bucket, tmp_path).storage)


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


class TestPut:
    def test_small_object_one_put(
        self, storage: S3Storage, moto_server: MotoServer, bucket: str
    ) -> None:
        size = storage.put(KEY, [b"DICM", b"", b"data"])

        assert size == 8
        assert moto_server.object_names(bucket) == [PREFIX + KEY]
        body = moto_server.client().get_object(Bucket=bucket, Key=PREFIX + KEY)["Body"].read()
        assert body == b"DICMdata"

    def test_large_object_multipart(
        self, storage: S3Storage, moto_server: MotoServer, bucket: str
    ) -> None:
        data = random_bytes(2 * PART_SIZE + 1000)

        size = storage.put(KEY, [data[:10], data[10:]])

        assert size == len(data)
        head = moto_server.client().head_object(Bucket=bucket, Key=PREFIX + KEY)
        assert head["ETag"].endswith('-3"')  # the ETag of a multipart object counts its parts
        assert head["ContentLength"] == len(data)
        with storage.open(KEY) as file:
            assert file.read() == data
        assert moto_server.multipart_uploads(bucket) == []

    def test_failed_chunks_leave_no_object(
        self, storage: S3Storage, moto_server: MotoServer, bucket: str
    ) -> None:
        def chunks(count: int) -> Iterator[bytes]:
            for _ in range(count):
                yield random_bytes(1024 * 1024)
            raise OSError("source failed")

        with pytest.raises(OSError, match="source failed"):
            storage.put(KEY, chunks(2))
        with pytest.raises(OSError, match="source failed"):
            storage.put(KEY, chunks(PART_SIZE // (1024 * 1024) + 2))

        assert moto_server.object_names(bucket) == []
        assert moto_server.multipart_uploads(bucket) == []

    def test_failed_part_aborts_upload(
        self,
        storage: S3Storage,
        moto_server: MotoServer,
        bucket: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        upload_part = storage.client.upload_part
        calls = []

        def failing_upload_part(**kwargs: Any) -> Any:
            calls.append(kwargs["PartNumber"])
            if kwargs["PartNumber"] == 2:
                raise ClientError(
                    {"Error": {"Code": "InternalError", "Message": "disk failed"}}, "UploadPart"
                )
            return upload_part(**kwargs)

        monkeypatch.setattr(storage.client, "upload_part", failing_upload_part)

        with pytest.raises(StorageError) as excinfo:
            storage.put(KEY, [random_bytes(3 * PART_SIZE)])

        assert calls == [1, 2]
        assert str(excinfo.value) == (
            f"Cannot write {KEY} to s3://{bucket}/{PREFIX}{KEY}: An error occurred "
            "(InternalError) when calling the UploadPart operation: disk failed"
        )
        assert moto_server.object_names(bucket) == []
        assert moto_server.multipart_uploads(bucket) == []

    def test_quota_error_is_storage_full(
        self, storage: S3Storage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def full(**kwargs: Any) -> Any:
            raise ClientError({"Error": {"Code": "QuotaExceeded", "Message": "full"}}, "PutObject")

        monkeypatch.setattr(storage.client, "put_object", full)

        with pytest.raises(StorageFullError, match=f"No space left to store {KEY} at s3://"):
            storage.put(KEY, [b"data"])

    def test_in_place_key_rejected(self, storage: S3Storage, tmp_path: Path) -> None:
        key = in_place_key(tmp_path / "file.dcm")

        with pytest.raises(ValueError, match="in-place files are never modified"):
            storage.put(key, [b"data"])

    @pytest.mark.parametrize("key", ["../x.dcm", ".encryption.json", "ab/.tmp/x", "a b.dcm"])
    def test_invalid_key_rejected(self, storage: S3Storage, key: str) -> None:
        with pytest.raises(ValueError, match="Invalid storage key"):
            storage.put(key, [b"data"])

    @pytest.mark.parametrize("size", [100, PART_SIZE + 1], ids=["one-put", "multipart"])
    def test_server_side_encryption_requested(
        self, moto_server: MotoServer, bucket: str, tmp_path: Path, size: int
    ) -> None:
        settings = s3_settings(
            moto_server,
            bucket,
            tmp_path,
            **{
                "storage.s3_server_side_encryption": "aws:kms",
                "storage.s3_kms_key_id": "alias/dicomvault-test",
            },
        )
        storage = S3Storage(settings.storage)

        storage.put(KEY, [random_bytes(size)])

        head = moto_server.client().head_object(Bucket=bucket, Key=PREFIX + KEY)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"].endswith("alias/dicomvault-test")
        assert "server-side encryption aws:kms" in storage.describe()


class TestExpectContinue:
    """A PUT sends its body at once; multipart parts still wait for "100 Continue"."""

    def test_put_object_without_expect(self, storage: S3Storage) -> None:
        sent = record_expect_headers(storage)

        storage.put(KEY, [b"DICM", b"data"])

        assert sent == [("PutObject", None)]

    def test_upload_parts_keep_expect(self, storage: S3Storage) -> None:
        sent = record_expect_headers(storage)

        storage.put(KEY, [random_bytes(PART_SIZE + 1000)])

        parts = [expect for operation, expect in sent if operation == "UploadPart"]
        assert parts == ["100-continue", "100-continue"]
        assert ("PutObject", None) not in sent


def record_expect_headers(storage: S3Storage) -> list[tuple[str, str | None]]:
    """Record the operation and Expect header of every request that ``storage`` sends."""
    sent: list[tuple[str, str | None]] = []

    def record(request: Any, event_name: str, **_: Any) -> None:
        value = request.headers.get("Expect")
        if isinstance(value, bytes):
            value = value.decode("ascii")
        sent.append((event_name.rsplit(".", 1)[-1], value))

    # Registered after the storage's own handlers, so it sees the headers as sent.
    storage.client.meta.events.register("before-send.s3", record)
    return sent


class TestOpen:
    def test_ranged_reads_and_seeks(self, storage: S3Storage) -> None:
        data = random_bytes(3 * READ_BLOCK_MIN + 123)
        storage.put(KEY, [data])

        with storage.open(KEY) as file:
            assert file.seekable()
            assert file.seek(0, io.SEEK_END) == len(data)
            for position, count in [
                (0, 10),
                (READ_BLOCK_MIN - 5, 10),
                (2 * READ_BLOCK_MIN + 7, READ_BLOCK_MIN),
                (len(data) - 3, 10),
                (len(data) + 5, 10),
                (17, 3),
            ]:
                file.seek(position)
                assert file.read(count) == data[position : position + count], position
                assert file.tell() == min(position + count, max(position, len(data)))

    def test_frame_read_fetches_its_range_only(self, storage: S3Storage) -> None:
        data = random_bytes(12 * 1024 * 1024)
        storage.put(KEY, [data])
        counter = RangeRecorder(storage)

        with storage.open(KEY) as file:
            file.seek(10 * 1024 * 1024)
            frame = file.read(5000)

        assert frame == data[10 * 1024 * 1024 : 10 * 1024 * 1024 + 5000]
        assert len(counter.ranges) == 2
        assert counter.bytes_requested == 2 * READ_BLOCK_MIN

    def test_sequential_read_grows_blocks(self, storage: S3Storage) -> None:
        data = random_bytes(24 * 1024 * 1024)
        storage.put(KEY, [data])
        counter = RangeRecorder(storage)

        received = bytearray()
        with storage.open(KEY) as file:
            while chunk := file.read(256 * 1024):
                received += chunk

        assert received == data
        sizes = [
            int(end) - int(start) + 1
            for start, end in (r.removeprefix("bytes=").split("-") for r in counter.ranges)
        ]
        assert sizes[:4] == [READ_BLOCK_MIN, 2 * READ_BLOCK_MIN, 4 * READ_BLOCK_MIN, READ_BLOCK_MAX]
        assert max(sizes) == READ_BLOCK_MAX

    def test_missing_object(self, storage: S3Storage, bucket: str) -> None:
        with pytest.raises(FileNotFoundError) as excinfo:
            storage.open(KEY)

        assert excinfo.value.strerror == f"No stored object {KEY} at s3://{bucket}/{PREFIX}{KEY}"

    def test_empty_object(self, storage: S3Storage) -> None:
        storage.put(KEY, [])

        with storage.open(KEY) as file:
            assert file.read() == b""
            assert file.seek(0, io.SEEK_END) == 0

    def test_object_replaced_while_open(
        self, storage: S3Storage, moto_server: MotoServer, bucket: str
    ) -> None:
        storage.put(KEY, [random_bytes(2 * READ_BLOCK_MIN)])

        with storage.open(KEY) as file:
            moto_server.client().put_object(Bucket=bucket, Key=PREFIX + KEY, Body=b"other")
            file.seek(READ_BLOCK_MIN + 10)
            with pytest.raises(StorageError, match=f"Stored object {KEY} at .* changed while"):
                file.read(10)

    def test_in_place_file_read_locally(self, storage: S3Storage, tmp_path: Path) -> None:
        path = tmp_path / "in-place.dcm"
        path.write_bytes(b"local bytes")
        key = in_place_key(path)

        with storage.open(key) as file:
            assert file.read() == b"local bytes"
        assert storage.plain_path(key) == path
        assert storage.exists(key)
        storage.delete(key)
        assert path.exists()

    def test_stored_object_has_no_plain_path(self, storage: S3Storage) -> None:
        storage.put(KEY, [b"data"])

        assert storage.plain_path(KEY) is None


class TestDeleteAndList:
    def test_delete(self, storage: S3Storage, moto_server: MotoServer, bucket: str) -> None:
        storage.put(KEY, [b"data"])

        storage.delete(KEY)
        storage.delete(KEY)  # a missing object is not an error

        assert moto_server.object_names(bucket) == []

    def test_exists(self, storage: S3Storage) -> None:
        storage.put(KEY, [b"data"])

        assert storage.exists(KEY)
        assert not storage.exists("ab/cd/other.dcm")

    def test_iter_keys_skips_reserved_and_other_prefixes(
        self, storage: S3Storage, moto_server: MotoServer, bucket: str
    ) -> None:
        storage.put(KEY, [b"data"])
        storage.put("ef/01/ef01.dcm", [b"data"])
        storage.write_reserved(RECORD_NAME, b"{}")
        moto_server.client().put_object(Bucket=bucket, Key="elsewhere/x.dcm", Body=b"data")

        assert list(storage.iter_keys()) == [KEY, "ef/01/ef01.dcm"]

    def test_free_bytes_unknown(self, storage: S3Storage) -> None:
        assert storage.free_bytes() is None


class TestClientSettings:
    def test_retry_settings(self, moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
        settings = s3_settings(
            moto_server,
            bucket,
            tmp_path,
            **{"storage.s3_retry_mode": "adaptive", "storage.s3_max_attempts": 7},
        )

        config = S3Storage(settings.storage).client.meta.config

        assert config.retries == {"mode": "adaptive", "total_max_attempts": 7}
        assert config.s3 == {"addressing_style": "auto"}

    def test_throttled_request_retried(
        self, moto_server: MotoServer, bucket: str, tmp_path: Path
    ) -> None:
        storage = S3Storage(s3_settings(moto_server, bucket, tmp_path).storage)
        throttled = install_throttling(storage, times=1)

        storage.put(KEY, [b"data"])

        assert throttled == [1, 2]
        assert moto_server.object_names(bucket) == [PREFIX + KEY]

    def test_throttling_beyond_max_attempts_fails(
        self, moto_server: MotoServer, bucket: str, tmp_path: Path
    ) -> None:
        settings = s3_settings(moto_server, bucket, tmp_path, **{"storage.s3_max_attempts": 1})
        storage = S3Storage(settings.storage)
        install_throttling(storage, times=1)

        with pytest.raises(StorageError, match=r"\(SlowDown\) when calling the PutObject"):
            storage.put(KEY, [b"data"])

    def test_describe_has_no_credentials(self, storage: S3Storage, bucket: str) -> None:
        text = storage.describe()

        assert text == (
            f"S3 s3://{bucket}/{PREFIX} at {storage.endpoint_url}, "
            "server-side encryption bucket default"
        )
        assert "testing" not in text


def install_throttling(storage: S3Storage, times: int) -> list[int]:
    """Fail the first ``times`` PutObject requests with 503 SlowDown; return the attempt numbers."""
    attempts: list[int] = []

    def send(request: Any, **_: Any) -> AWSResponse | None:
        attempts.append(len(attempts) + 1)
        if len(attempts) > times:
            return None
        body = (
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
            b"<Message>Please reduce your request rate.</Message></Error>"
        )
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Raw(body))

    storage.client.meta.events.register("before-send.s3.PutObject", send)
    return attempts


class _Raw:
    """The raw body of a canned response."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


class TestCheckBucket:
    def test_existing_bucket(self, storage: S3Storage) -> None:
        storage.check_bucket()

    def test_missing_bucket(self, moto_server: MotoServer, tmp_path: Path) -> None:
        storage = S3Storage(s3_settings(moto_server, "no-such-bucket", tmp_path).storage)

        with pytest.raises(StorageError) as excinfo:
            storage.check_bucket()

        assert str(excinfo.value) == (
            f"Cannot use S3 bucket no-such-bucket at {moto_server.endpoint_url}: the bucket "
            "does not exist; create it or correct storage.s3_bucket"
        )

    def test_unreachable_endpoint(self, moto_server: MotoServer, tmp_path: Path) -> None:
        endpoint = f"http://{LOOPBACK}:{free_port()}"
        settings = s3_settings(
            moto_server,
            "some-bucket",
            tmp_path,
            **{"storage.s3_endpoint_url": endpoint, "storage.s3_max_attempts": 1},
        )

        with pytest.raises(StorageError) as excinfo:
            S3Storage(settings.storage).check_bucket()

        message = str(excinfo.value)
        assert message.startswith(f"Cannot use S3 bucket some-bucket at {endpoint}: ")
        assert message.endswith("; check storage.s3_endpoint_url and the network")

    def test_no_credentials(
        self, moto_server: MotoServer, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        storage = S3Storage(s3_settings(moto_server, bucket, tmp_path).storage)

        with pytest.raises(StorageError, match="no AWS credentials found; set AWS_ACCESS_KEY_ID"):
            storage.check_bucket()


class TestOpenStorage:
    def test_s3_backend(self, moto_server: MotoServer, bucket: str, tmp_path: Path) -> None:
        storage = open_storage(s3_settings(moto_server, bucket, tmp_path / "data"), serving=True)

        assert isinstance(storage, S3Storage)
        assert not (tmp_path / "data" / "storage").exists()

    def test_missing_bucket_stops(self, moto_server: MotoServer, tmp_path: Path) -> None:
        with pytest.raises(StorageSetupError, match="the bucket does not exist"):
            open_storage(s3_settings(moto_server, "no-such-bucket", tmp_path))

    def test_encryption_keeps_record_in_bucket(
        self, moto_server: MotoServer, bucket: str, tmp_path: Path
    ) -> None:
        key_file = tmp_path / "current.key"
        key_id = generate_key_file(key_file)
        encrypted = s3_settings(
            moto_server,
            bucket,
            tmp_path,
            **{"encryption.enabled": True, "encryption.key_file": str(key_file)},
        )
        plaintext = b"\0" * 128 + b"DICM" + b"DOE^JANE " * 1000

        storage = open_storage(encrypted, serving=True)
        assert isinstance(storage, EncryptedStorage)
        storage.put(KEY, [plaintext])

        names = moto_server.object_names(bucket)
        assert names == [PREFIX + RECORD_NAME, PREFIX + KEY]
        stored = moto_server.client().get_object(Bucket=bucket, Key=PREFIX + KEY)["Body"].read()
        assert is_sealed(stored)
        assert b"DOE^JANE" not in stored
        with storage.open(KEY) as file:
            assert file.read() == plaintext
        assert key_id in storage.describe()

        with pytest.raises(StorageSetupError) as excinfo:
            open_storage(s3_settings(moto_server, bucket, tmp_path))
        assert str(excinfo.value).startswith(
            f"Encryption is off (encryption.enabled is false), but the stored files in "
            f"s3://{bucket}/{PREFIX} are encrypted (the key record "
            f"s3://{bucket}/{PREFIX}{RECORD_NAME} lists their master keys)."
        )
