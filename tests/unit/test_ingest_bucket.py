"""Unit tests for bucket URLs, listing and reading objects, against moto's S3 server on loopback."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from dicomvault.ingest.bucket import (
    BucketError,
    BucketLocation,
    ObjectChangedError,
    ObjectEntry,
    ObjectNotFoundError,
    is_bucket_url,
    list_objects,
    object_url,
    parse_bucket_url,
    read_object,
    source_client,
    split_object_url,
)
from dicomvault.storage.s3 import new_s3_client
from tests.support.moto import MotoServer, source_settings
from tests.support.network import LOOPBACK, free_port


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:
    return moto_server.new_bucket()


def put(moto_server: MotoServer, bucket: str, key: str, body: bytes = b"data") -> str:
    """Upload ``body`` as ``key``; return its ETag without quotes."""
    response = moto_server.client().put_object(Bucket=bucket, Key=key, Body=body)
    etag: str = response["ETag"].strip('"')
    return etag


def keys_of(pages: list[list[ObjectEntry]]) -> list[list[str]]:
    return [[entry.key for entry in page] for page in pages]


class TestParseBucketUrl:
    @pytest.mark.parametrize(
        ("text", "bucket", "prefix"),
        [
            pytest.param("s3://scans", "scans", "", id="bucket-only"),
            pytest.param("s3://scans/", "scans", "", id="bucket-slash"),
            pytest.param("s3://scans/2024/ct", "scans", "2024/ct", id="prefix"),
            pytest.param("s3://scans/2024/ct/", "scans", "2024/ct/", id="prefix-slash"),
            pytest.param("s3://my.bucket-1/a b/c?d", "my.bucket-1", "a b/c?d", id="any-key-text"),
            pytest.param("s3://abc//x", "abc", "/x", id="prefix-leading-slash-kept"),
            pytest.param("s3://" + "a" * 63, "a" * 63, "", id="63-characters"),
        ],
    )
    def test_valid(self, text: str, bucket: str, prefix: str) -> None:
        location = parse_bucket_url(text)

        assert location == BucketLocation(bucket, prefix)

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            pytest.param("", "expected s3://BUCKET or s3://BUCKET/PREFIX", id="empty"),
            pytest.param(
                "/srv/scans", "expected s3://BUCKET or s3://BUCKET/PREFIX", id="local-path"
            ),
            pytest.param(
                "https://scans.s3.amazonaws.com/x",
                "expected s3://BUCKET or s3://BUCKET/PREFIX",
                id="https",
            ),
            pytest.param(
                "S3://scans", "expected s3://BUCKET or s3://BUCKET/PREFIX", id="upper-scheme"
            ),
            pytest.param("s3://", "no bucket name follows 's3://'", id="no-bucket"),
            pytest.param("s3:///prefix", "no bucket name follows 's3://'", id="empty-bucket"),
            pytest.param(
                "s3://ab",
                "the bucket name 'ab' has 2 characters, and S3 allows 3 to 63",
                id="short",
            ),
            pytest.param(
                "s3://" + "a" * 64,
                f"the bucket name {'a' * 64!r} has 64 characters, and S3 allows 3 to 63",
                id="long",
            ),
            pytest.param(
                "s3://Scans/x",
                "the bucket name 'Scans' contains characters other than lowercase letters, "
                "digits, '.' and '-'",
                id="upper-case",
            ),
            pytest.param(
                "s3://my_scans",
                "the bucket name 'my_scans' contains characters other than lowercase letters, "
                "digits, '.' and '-'",
                id="underscore",
            ),
            pytest.param(
                "s3://user:secret@scans",
                "the bucket name 'user:secret@scans' contains characters other than lowercase "
                "letters, digits, '.' and '-'",
                id="credentials",
            ),
            pytest.param(
                "s3://-scans",
                "the bucket name '-scans' must start and end with a letter or digit",
                id="leading-hyphen",
            ),
            pytest.param(
                "s3://scans.",
                "the bucket name 'scans.' must start and end with a letter or digit",
                id="trailing-period",
            ),
            pytest.param(
                "s3://my..scans",
                "the bucket name 'my..scans' contains two adjacent periods",
                id="adjacent-periods",
            ),
            pytest.param(
                "s3://192.168.5.4/x",
                "the bucket name '192.168.5.4' is formatted as an IP address",
                id="ip-address",
            ),
        ],
    )
    def test_invalid(self, text: str, reason: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            parse_bucket_url(text)

        assert str(excinfo.value) == f"Invalid bucket URL {text!r}: {reason}"

    def test_url_property(self) -> None:
        assert BucketLocation("scans", "2024/").url == "s3://scans/2024/"
        assert BucketLocation("scans", "").url == "s3://scans/"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("s3://scans", True), ("s3://", True), ("/srv/s3://x", False), ("S3://scans", False)],
    )
    def test_is_bucket_url(self, text: str, expected: bool) -> None:
        assert is_bucket_url(text) is expected


class TestObjectUrl:
    def test_round_trip(self) -> None:
        url = object_url("scans", "2024/ct/img 001.dcm")

        assert url == "s3://scans/2024/ct/img 001.dcm"
        assert split_object_url(url) == ("scans", "2024/ct/img 001.dcm")

    def test_empty_key_rejected(self) -> None:
        with pytest.raises(ValueError, match="needs a non-empty key"):
            object_url("scans", "")

    @pytest.mark.parametrize("url", ["s3://scans", "s3://scans/"])
    def test_split_without_key(self, url: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            split_object_url(url)

        assert str(excinfo.value) == f"Invalid object URL {url!r}: expected s3://BUCKET/KEY"

    def test_split_invalid_bucket(self) -> None:
        with pytest.raises(ValueError, match=r"^Invalid bucket URL 's3://A/b'"):
            split_object_url("s3://A/b")


class TestListObjects:
    def test_entries_in_key_order(self, moto_server: MotoServer, bucket: str) -> None:
        etags = {key: put(moto_server, bucket, key, key.encode()) for key in ["b/2", "a/1", "b/1"]}

        pages = list(list_objects(moto_server.client(), BucketLocation(bucket, "")))

        assert pages == [
            [
                ObjectEntry("a/1", 3, etags["a/1"]),
                ObjectEntry("b/1", 3, etags["b/1"]),
                ObjectEntry("b/2", 3, etags["b/2"]),
            ]
        ]
        assert all('"' not in entry.etag for entry in pages[0])

    def test_prefix(self, moto_server: MotoServer, bucket: str) -> None:
        for key in ["scans/2024/1", "scans/2024-old/1", "scans/2025/1", "other/1"]:
            put(moto_server, bucket, key)

        pages = list(list_objects(moto_server.client(), BucketLocation(bucket, "scans/2024")))

        assert keys_of(pages) == [["scans/2024-old/1", "scans/2024/1"]]

    def test_folder_markers_skipped(self, moto_server: MotoServer, bucket: str) -> None:
        for key in ["ct/", "ct/1.dcm", "ct/sub/", "ct/sub/2.dcm"]:
            put(moto_server, bucket, key, b"" if key.endswith("/") else b"data")

        pages = list(list_objects(moto_server.client(), BucketLocation(bucket, "ct/")))

        assert keys_of(pages) == [["ct/1.dcm", "ct/sub/2.dcm"]]

    def test_start_after(self, moto_server: MotoServer, bucket: str) -> None:
        for key in ["p/1", "p/2", "p/3", "p/4"]:
            put(moto_server, bucket, key)
        client = moto_server.client()

        pages = list(list_objects(client, BucketLocation(bucket, "p/"), start_after="p/2"))

        assert keys_of(pages) == [["p/3", "p/4"]]

    def test_start_after_before_prefix(self, moto_server: MotoServer, bucket: str) -> None:
        for key in ["a/1", "p/1", "p/2"]:
            put(moto_server, bucket, key)

        pages = list(list_objects(moto_server.client(), BucketLocation(bucket, "p/"), "a/9"))

        assert keys_of(pages) == [["p/1", "p/2"]]

    def test_pages(self, moto_server: MotoServer, bucket: str) -> None:
        keys = [f"p/{number:02d}" for number in range(7)]
        for key in keys:
            put(moto_server, bucket, key)

        pages = list(list_objects(moto_server.client(), BucketLocation(bucket, "p/"), page_size=3))

        assert keys_of(pages) == [keys[0:3], keys[3:6], keys[6:7]]

    def test_pages_after_start(self, moto_server: MotoServer, bucket: str) -> None:
        keys = [f"p/{number:02d}" for number in range(7)]
        for key in keys:
            put(moto_server, bucket, key)
        location = BucketLocation(bucket, "p/")

        pages = list(list_objects(moto_server.client(), location, "p/01", page_size=2))

        assert keys_of(pages) == [keys[2:4], keys[4:6], keys[6:7]]

    def test_page_of_only_markers_not_yielded(self, moto_server: MotoServer, bucket: str) -> None:
        for key in ["p/a/", "p/b/", "p/c.dcm"]:
            put(moto_server, bucket, key)

        pages = list(list_objects(moto_server.client(), BucketLocation(bucket, "p/"), page_size=2))

        assert keys_of(pages) == [["p/c.dcm"]]

    def test_empty_prefix(self, moto_server: MotoServer, bucket: str) -> None:
        put(moto_server, bucket, "other/1")

        pages = list(list_objects(moto_server.client(), BucketLocation(bucket, "none/")))

        assert pages == []

    @pytest.mark.parametrize("page_size", [0, 1001])
    def test_page_size_out_of_range(
        self, moto_server: MotoServer, bucket: str, page_size: int
    ) -> None:
        listing = list_objects(
            moto_server.client(), BucketLocation(bucket, ""), page_size=page_size
        )

        with pytest.raises(ValueError) as excinfo:
            next(listing)

        assert str(excinfo.value) == (
            f"'page_size' must be an integer from 1 to 1000, got {page_size}"
        )

    def test_missing_bucket(self, moto_server: MotoServer) -> None:
        location = BucketLocation("no-such-bucket", "scans/")

        with pytest.raises(BucketError) as excinfo:
            next(list_objects(moto_server.client(), location))

        assert str(excinfo.value) == (
            "Cannot list s3://no-such-bucket/scans/: bucket no-such-bucket does not exist at "
            f"{moto_server.endpoint_url}; check the bucket name, and storage.s3_endpoint_url "
            "if the bucket is on another server"
        )

    def test_access_denied(self, moto_server: MotoServer, bucket: str) -> None:
        client = moto_server.client()
        respond_with_error(client, "ListObjectsV2", 403, "AccessDenied")

        with pytest.raises(BucketError) as excinfo:
            next(list_objects(client, BucketLocation(bucket, "")))

        assert str(excinfo.value) == (
            f"Cannot list s3://{bucket}/: access to bucket {bucket} is denied; the AWS "
            "credentials need s3:ListBucket on the bucket and s3:GetObject on its objects"
        )

    def test_unreachable_endpoint(self, tmp_path: Path, moto_server: MotoServer) -> None:
        endpoint = f"http://{LOOPBACK}:{free_port()}"
        settings = dataclasses.replace(
            source_settings(moto_server, tmp_path), s3_endpoint_url=endpoint, s3_max_attempts=1
        )

        with pytest.raises(BucketError) as excinfo:
            next(list_objects(new_s3_client(settings), BucketLocation("scans", "")))

        message = str(excinfo.value)
        assert message.startswith("Cannot list s3://scans/: Could not connect to the endpoint URL")
        assert message.endswith(f"; check storage.s3_endpoint_url ({endpoint}) and the network")

    def test_no_credentials(
        self, tmp_path: Path, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        client = new_s3_client(source_settings(moto_server, tmp_path))

        with pytest.raises(BucketError) as excinfo:
            next(list_objects(client, BucketLocation("scans", "")))

        assert str(excinfo.value) == (
            "Cannot list s3://scans/: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, choose a profile with AWS_PROFILE, or run with an "
            "instance or container role"
        )


class TestReadObject:
    def test_whole_object(self, moto_server: MotoServer, bucket: str) -> None:
        etag = put(moto_server, bucket, "a.dcm", b"0123456789")

        data = read_object(moto_server.client(), bucket, "a.dcm", etag, 10)

        assert data == b"0123456789"

    def test_unchecked(self, moto_server: MotoServer, bucket: str) -> None:
        put(moto_server, bucket, "a.dcm", b"0123456789")

        assert read_object(moto_server.client(), bucket, "a.dcm") == b"0123456789"

    def test_etag_differs(self, moto_server: MotoServer, bucket: str) -> None:
        etag = put(moto_server, bucket, "a.dcm", b"first")
        put(moto_server, bucket, "a.dcm", b"again")

        with pytest.raises(ObjectChangedError) as excinfo:
            read_object(moto_server.client(), bucket, "a.dcm", etag, 5)

        assert str(excinfo.value) == f"s3://{bucket}/a.dcm changed after the bucket was listed"

    def test_etag_ignored_by_server(self, moto_server: MotoServer, bucket: str) -> None:
        etag = put(moto_server, bucket, "a.dcm", b"first")
        new_etag = put(moto_server, bucket, "a.dcm", b"again")
        client = moto_server.client()
        client.meta.events.register("before-call.s3.GetObject", drop_if_match)

        with pytest.raises(ObjectChangedError) as excinfo:
            read_object(client, bucket, "a.dcm", etag, 5)

        assert str(excinfo.value) == (
            f"s3://{bucket}/a.dcm changed after the bucket was listed: its ETag is "
            f"{new_etag}, not {etag}"
        )

    def test_size_differs(self, moto_server: MotoServer, bucket: str) -> None:
        put(moto_server, bucket, "a.dcm", b"0123456789")

        with pytest.raises(ObjectChangedError) as excinfo:
            read_object(moto_server.client(), bucket, "a.dcm", size=8)

        assert str(excinfo.value) == (
            f"s3://{bucket}/a.dcm changed after the bucket was listed: it has 10 bytes, not 8"
        )

    def test_missing_object(self, moto_server: MotoServer, bucket: str) -> None:
        with pytest.raises(ObjectNotFoundError) as excinfo:
            read_object(moto_server.client(), bucket, "gone.dcm", "0" * 32, 10)

        assert str(excinfo.value) == f"s3://{bucket}/gone.dcm does not exist"

    def test_missing_bucket(self, moto_server: MotoServer) -> None:
        with pytest.raises(BucketError) as excinfo:
            read_object(moto_server.client(), "no-such-bucket", "a.dcm")

        assert not isinstance(excinfo.value, ObjectNotFoundError)
        assert str(excinfo.value).startswith(
            "Cannot read s3://no-such-bucket/a.dcm: bucket no-such-bucket does not exist"
        )

    def test_server_error(self, moto_server: MotoServer, bucket: str) -> None:
        client = moto_server.client()
        respond_with_error(client, "GetObject", 500, "InternalError")

        with pytest.raises(BucketError) as excinfo:
            read_object(client, bucket, "a.dcm")

        assert str(excinfo.value) == (
            f"Cannot read s3://{bucket}/a.dcm: An error occurred (InternalError) when calling "
            "the GetObject operation (reached max retries: 0): We are sorry; try again later"
        )


class TestSourceClient:
    def test_cached(self, moto_server: MotoServer, tmp_path: Path) -> None:
        settings = source_settings(moto_server, tmp_path)

        assert source_client(settings) is source_client(settings)

    def test_settings_of_archive(self, moto_server: MotoServer, tmp_path: Path) -> None:
        settings = source_settings(moto_server, tmp_path, s3_max_attempts=4)

        client = source_client(settings)

        assert client.meta.endpoint_url == moto_server.endpoint_url
        assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
        assert source_client(dataclasses.replace(settings, s3_max_attempts=5)) is not client


def respond_with_error(client: Any, operation: str, status: int, code: str) -> None:
    """Make every ``operation`` request of ``client`` receive an S3 error response."""

    def send(request: Any, **_: Any) -> AWSResponse:
        body = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            "<Message>We are sorry</Message></Error>"
        ).encode()
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))

    client.meta.events.register(f"before-send.s3.{operation}", send)


def drop_if_match(params: dict[str, Any], **_: Any) -> None:
    """Remove the If-Match header, as an S3-compatible server that ignores it would."""
    params["headers"].pop("If-Match", None)


class _Raw:
    """The raw body of a canned response."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body
