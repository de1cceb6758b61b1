"""moto's AWS server, run as a separate process on a loopback port for the tests.

moto (``moto[server]``) implements the S3 and KMS APIs over HTTP and keeps
the objects and keys in memory. It is the stand-in for a real bucket and for
AWS KMS: the tests never reach AWS or any address other than loopback.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from dicomvault.config import Settings, StorageSettings, load_settings
from dicomvault.storage.s3 import S3Storage
from tests.support.network import LOOPBACK, free_port, wait_until

PREFIX = "archive/"
PART_SIZE = 5 * 1024 * 1024  # the smallest part S3 accepts
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0
REGION = "us-east-1"


def aws_test_environment(config_dir: Path) -> dict[str, str]:
    """Return AWS variables with fake credentials and no shared files, profile or endpoint.

    The credentials are moto's well-known fake values. The shared config and
    credentials files point into ``config_dir``, where none exist, so no
    profile of the machine applies. The instance metadata service is turned
    off, so boto3 never looks for a role outside loopback.
    """
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(config_dir / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(config_dir / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# Variables of the runner's environment that could point boto3 elsewhere.
AWS_VARIABLES_REMOVED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@contextmanager
def patched_environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` and remove AWS_VARIABLES_REMOVED in os.environ; restore both on exit."""
    saved = {name: os.environ.get(name) for name in (*values, *AWS_VARIABLES_REMOVED)}
    for name in AWS_VARIABLES_REMOVED:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class MotoServer:
    """One ``moto_server`` process on a free loopback port.

    Parameters
    ----------
    log_path : Path
        File that receives the server's output.
    """

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Start the server and wait until it responds to HTTP requests.

        Raises
        ------
        RuntimeError
            If the process exits first or does not respond within ``timeout`` seconds.
        """
        executable = shutil.which("moto_server", path=str(Path(sys.executable).parent))
        command = [executable] if executable else [sys.executable, "-m", "moto.server"]
        command += ["-H", LOOPBACK, "-p", str(self.port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        process = self.process
        ready = wait_until(lambda: process.poll() is not None or self._responds(), timeout)
        if process.poll() is not None or not ready:
            self.stop()
            log_text = self.log_path.read_text(encoding="utf-8", errors="replace")
            raise RuntimeError(
                f"moto_server did not respond on {self.endpoint_url} within {timeout:.0f} s "
                f"(exit code {process.returncode}).\nCommand: {' '.join(command)}\n{log_text}"
            )

    def _responds(self) -> bool:
        try:
            response = httpx.get(f"{self.endpoint_url}/moto-api/data.json", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after STOP_TIMEOUT_SECONDS."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def client(self) -> Any:
        """Return a boto3 S3 client of this server, with one attempt per request."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )

    def kms_client(self) -> Any:
        """Return a boto3 KMS client of this server, with one attempt per request."""
        return boto3.client(
            "kms",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )

    def new_kms_key(self, alias: str = "") -> str:
        """Create a symmetric encryption key, and the alias ``alias`` if given; return its ARN."""
        client = self.kms_client()
        metadata = client.create_key(Description="dicomvault test master key")["KeyMetadata"]
        if alias:
            client.create_alias(AliasName=alias, TargetKeyId=metadata["KeyId"])
        arn: str = metadata["Arn"]
        return arn

    def disable_kms_key(self, arn: str) -> None:
        """Disable the KMS key ``arn``."""
        # moto 5.2 finds keys to disable by key id only, not by ARN.
        self.kms_client().disable_key(KeyId=arn.rsplit("/", 1)[-1])

    def schedule_kms_key_deletion(self, arn: str) -> None:
        """Schedule the deletion of the KMS key ``arn`` in 7 days, the shortest wait."""
        self.kms_client().schedule_key_deletion(KeyId=arn.rsplit("/", 1)[-1], PendingWindowInDays=7)

    def new_bucket(self) -> str:
        """Create a bucket with a new random name and return the name."""
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def object_names(self, bucket: str) -> list[str]:
        """Return the names of every object in ``bucket``, in name order."""
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in paginator.paginate(Bucket=bucket)
            for item in page.get("Contents", [])
        ]

    def multipart_uploads(self, bucket: str) -> list[str]:
        """Return the object names of the multipart uploads in progress in ``bucket``."""
        response = self.client().list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in response.get("Uploads", [])]


def s3_settings(moto_server: MotoServer, bucket: str, data_dir: Path, **extra: Any) -> Settings:
    """Return settings that store in ``bucket`` of ``moto_server`` under PREFIX.

    ``extra`` maps more dotted setting names to values.
    """
    overrides = {
        "storage.data_dir": str(data_dir),
        "storage.backend": "s3",
        "storage.s3_bucket": bucket,
        "storage.s3_prefix": PREFIX,
        "storage.s3_endpoint_url": moto_server.endpoint_url,
        "storage.s3_part_size": PART_SIZE,
        **extra,
    }
    return load_settings(environ={}, overrides=overrides)


def source_settings(moto_server: MotoServer, data_dir: Path, **extra: Any) -> StorageSettings:
    """Return storage settings of a folder in ``data_dir`` that reach buckets of ``moto_server``.

    The configuration file rejects S3 settings for filesystem storage, so
    the endpoint is set on the loaded settings. ``extra`` maps more fields
    of StorageSettings to values.
    """
    settings = load_settings(environ={}, overrides={"storage.data_dir": str(data_dir)})
    return dataclasses.replace(settings.storage, s3_endpoint_url=moto_server.endpoint_url, **extra)


def kms_encryption_config(moto_server: MotoServer, key_id: str, *previous: str) -> str:
    """Return the TOML that turns encryption at rest on with the KMS key ``key_id`` of moto."""
    listed = ", ".join(f'"{item}"' for item in previous)
    return (
        "[encryption]\n"
        "enabled = true\n"
        'provider = "aws-kms"\n'
        f'kms_key_id = "{key_id}"\n'
        f"kms_previous_key_ids = [{listed}]\n"
        f'kms_endpoint_url = "{moto_server.endpoint_url}"\n'
        "kms_max_attempts = 2\n"
    )


class RangeRecorder:
    """Records the Range header of every GetObject request that a storage's client sends."""

    def __init__(self, storage: S3Storage) -> None:
        self.ranges: list[str] = []
        storage.client.meta.events.register("before-call.s3.GetObject", self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self.ranges.append(params["headers"].get("Range", ""))

    @property
    def bytes_requested(self) -> int:
        """The bytes that all recorded ranges cover, together."""
        total = 0
        for value in self.ranges:
            start, end = value.removeprefix("bytes=").split("-")
            total += int(end) - int(start) + 1
        return total
