"""Settings: defaults, a TOML file, DICOMVAULT_* environment variables and options.

Every setting is defined once in ``SETTINGS`` with its type, default and
meaning. Sources are applied in this order, later ones winning: defaults, the
TOML file, environment variables, command line options. An invalid value raises
:class:`ConfigError` naming the setting and the accepted form.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dicomvault.nodes import NODE_TLS_FILE_KEYS, RemoteNode, nodes_from_config
from dicomvault.permissions import UNKNOWN_CALLERS_ACCEPT, parse_unknown_callers

ENV_PREFIX = "DICOMVAULT_"
# The source shown for a value saved through the HTTP API (the console).
SAVED_SOURCE = "index database"
CONFIG_ENV_VAR = "DICOMVAULT_CONFIG"

_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class ConfigError(ValueError):
    """A setting has an invalid value, or the configuration file is unreadable."""


def _parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _parse_int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"must be an integer from {low} to {high}, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be an integer from {low} to {high}, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be an integer from {low} to {high}, got {number}")
        return number

    return parse


def _parse_float_range(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"must be a number from {low} to {high}, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number from {low} to {high}, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"must be a number from {low} to {high}, got {number}")
        return number

    return parse


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def _parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


def _parse_ae_title(value: Any) -> str:
    text = str(value).strip()
    if not _AE_TITLE_RE.match(text):
        raise ValueError(
            f"must be 1 to 16 printable ASCII characters without backslash, got {value!r}"
        )
    return text


def _parse_ae_title_list(value: Any) -> list[str]:
    if isinstance(value, str):
        # AE titles may contain inner spaces, so only commas separate them.
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list):
        items = [str(item) for item in value]
    else:
        raise ValueError(f"must be a list of AE titles, got {value!r}")
    return [_parse_ae_title(item) for item in items]


def _parse_host(value: Any) -> str:
    text = str(value).strip()
    if text == "localhost":
        return text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"must be an IP address such as 127.0.0.1, got {value!r}") from None
    return text


def _parse_path(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must be a non-empty path")
    return text


def _parse_optional_path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a path as a string, or empty, got {value!r}")
    return value.strip()


def _parse_network_list(value: Any) -> list[str]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list):
        items = [str(item).strip() for item in value]
    else:
        raise ValueError(
            f"must be a list of IP addresses or networks such as 10.0.0.5 or 10.0.0.0/24, "
            f"got {value!r}"
        )
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(
                f"must contain IP addresses or networks such as 10.0.0.5 or 10.0.0.0/24, "
                f"got {item!r}"
            ) from None
    return items


def _parse_path_list(value: Any) -> list[str]:
    if isinstance(value, str):
        # Environment variables separate paths with ':', as PATH does.
        items = [item.strip() for item in value.split(os.pathsep) if item.strip()]
    elif isinstance(value, list):
        items = [str(item).strip() for item in value]
    else:
        raise ValueError(f"must be a list of paths, got {value!r}")
    for item in items:
        if not item:
            raise ValueError("must not contain an empty path")
    return items


def _parse_bucket_list(value: Any) -> list[str]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list):
        items = [str(item).strip() for item in value]
    else:
        raise ValueError(f"must be a list of s3://bucket/prefix URLs, got {value!r}")
    for item in items:
        bucket = item.removeprefix("s3://").partition("/")[0]
        if not item.startswith("s3://") or not bucket:
            raise ValueError(f"must hold s3://bucket/prefix URLs, got {item!r}")
    return items


# An origin is scheme://host[:port] (RFC 6454), with an IPv6 host in brackets.
_ORIGIN_RE = re.compile(
    r"^https?://[A-Za-z0-9.\-]+(:\d{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?$"
)


def _parse_origin_list(value: Any) -> list[str]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list):
        items = [str(item).strip() for item in value]
    else:
        raise ValueError(
            f"must be a list of origins such as https://viewer.example.org, got {value!r}"
        )
    for item in items:
        if item != "*" and not _ORIGIN_RE.match(item):
            raise ValueError(
                f"must contain '*' or origins of the form scheme://host[:port] without a "
                f"path, such as https://viewer.example.org, got {item!r}"
            )
    return items


def _parse_base_url(value: Any) -> str:
    text = str(value).strip().rstrip("/")
    if text and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", text):
        raise ValueError(
            f"must be empty or an http or https URL such as https://pacs.example.org/archive, "
            f"got {value!r}"
        )
    return text


def _parse_secret(value: Any) -> str:
    # The value is a key: messages must never quote it.
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value.strip()


def _parse_secret_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise ValueError("must be a comma-separated list of keys")


# An S3 bucket name (AWS rules, also accepted by S3-compatible servers): 3 to 63
# lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SERVER_SIDE_ENCRYPTION_CHOICES = ("", "AES256", "aws:kms", "aws:kms:dsse")
# Values of encryption.provider: where the master keys of encryption at rest are.
KEY_PROVIDERS = ("local", "aws-kms")
_S3_PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*/?$")


def _parse_bucket(value: Any) -> str:
    text = str(value).strip()
    if text and not _BUCKET_RE.match(text):
        raise ValueError(
            "must be empty or an S3 bucket name of 3 to 63 lowercase letters, digits, dots "
            f"and hyphens, such as dicomvault-archive, got {value!r}"
        )
    return text


def _parse_s3_prefix(value: Any) -> str:
    """Return the prefix with one trailing '/', or empty."""
    text = str(value).strip()
    if not text:
        return ""
    parts = text.rstrip("/").split("/")
    if not _S3_PREFIX_RE.match(text) or any(part in (".", "..") for part in parts):
        raise ValueError(
            "must be empty or a relative path of letters, digits and !_.*'()- separated "
            f"by '/', such as archive/dicom, got {value!r}"
        )
    return text.rstrip("/") + "/"


def _parse_endpoint_url(value: Any) -> str:
    text = str(value).strip().rstrip("/")
    if not text:
        return ""
    if "@" in text:
        # Not quoted: the part before '@' may be a secret.
        raise ValueError(
            "must not contain a user name or password; the AWS credentials come from the "
            "AWS environment variables, profiles or instance role"
        )
    parts = urllib.parse.urlsplit(text)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or any(character.isspace() for character in text)
    ):
        raise ValueError(
            "must be empty (AWS) or an http or https URL such as http://127.0.0.1:9000, "
            f"got {value!r}"
        )
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
    except ValueError:
        raise ValueError(f"must have a port from 1 to 65535, got {value!r}") from None
    if parts.port == 0:
        raise ValueError(f"must have a port from 1 to 65535, got {value!r}")
    return text


def _parse_region(value: Any) -> str:
    text = str(value).strip()
    if text and not re.match(r"^[a-z0-9-]{1,64}$", text):
        raise ValueError(f"must be empty or a region name such as eu-central-1, got {value!r}")
    return text


def _parse_server_side_encryption(value: Any) -> str:
    """Return the value S3 expects (AES256, aws:kms or aws:kms:dsse), or empty."""
    text = str(value).strip()
    for choice in SERVER_SIDE_ENCRYPTION_CHOICES:
        if text.lower() == choice.lower():
            return choice
    raise ValueError(
        f"must be empty or one of {', '.join(SERVER_SIDE_ENCRYPTION_CHOICES[1:])}, got {value!r}"
    )


def _parse_kms_key_id(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a KMS key id, alias or ARN as a string, got {value!r}")
    return value.strip()


# A KMS key id (a UUID, or mrk- and 32 hexadecimal digits for a multi-Region key),
# an alias name (alias/NAME), or the ARN of either.
_KMS_KEY_RE = re.compile(
    r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key/[A-Za-z0-9-]+|alias/[A-Za-z0-9/_-]+)"
    r"|alias/[A-Za-z0-9/_-]+|[A-Za-z0-9-]+)$"
)


def _parse_kms_master_key(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a KMS key id, alias name or ARN as a string, got {value!r}")
    text = value.strip()
    if text and (len(text) > 2048 or not _KMS_KEY_RE.match(text)):
        raise ValueError(
            "must be empty or a KMS key id, alias name or ARN, such as "
            "1234abcd-12ab-34cd-56ef-1234567890ab, alias/dicomvault or "
            f"arn:aws:kms:eu-central-1:111122223333:key/1234abcd-..., got {value!r}"
        )
    return text


def _parse_kms_master_key_list(value: Any) -> list[str]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list):
        items = [item.strip() if isinstance(item, str) else item for item in value]
    else:
        raise ValueError(f"must be a list of KMS key ids, alias names or ARNs, got {value!r}")
    for item in items:
        if not item:
            raise ValueError("must not contain an empty KMS key id")
    return [_parse_kms_master_key(item) for item in items]


def _parse_issuer(value: Any) -> str:
    text = str(value).strip().rstrip("/")
    if text and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", text):
        raise ValueError(
            f"must be empty or the issuer URL of an OpenID Connect provider, such as "
            f"https://login.example.org/realms/pacs, got {value!r}"
        )
    return text


def _parse_word_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise ValueError(f"must be a comma-separated list or a list of strings, got {value!r}")


def _parse_log_level(value: Any) -> str:
    text = str(value).strip().upper()
    if text not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"must be one of DEBUG, INFO, WARNING, ERROR, got {value!r}")
    return text


@dataclasses.dataclass(frozen=True)
class SettingDefinition:
    """One setting: where it lives in the TOML file, its parser and default."""

    section: str
    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False
    # Only an environment variable may set it: configuration files are often
    # readable by more users than the key should be.
    env_only: bool = False

    @property
    def name(self) -> str:
        """The dotted name used in messages and in ``dicomvault config``."""
        return f"{self.section}.{self.key}"

    @property
    def env_var(self) -> str:
        """The environment variable that overrides this setting."""
        return f"{ENV_PREFIX}{self.section.upper()}_{self.key.upper()}"


SETTINGS: tuple[SettingDefinition, ...] = (
    SettingDefinition(
        "dimse", "ae_title", _parse_ae_title, "DICOMVAULT", "AE title of the archive's SCP"
    ),
    SettingDefinition(
        "dimse", "host", _parse_host, "127.0.0.1", "IP address the DIMSE service listens on"
    ),
    SettingDefinition(
        "dimse",
        "port",
        _parse_int_range(0, 65535),
        11112,
        "TCP port of the DIMSE service without TLS; 0 opens no such port, for an archive "
        "reached only over dimse.tls_port",
    ),
    SettingDefinition(
        "dimse",
        "tls_port",
        _parse_int_range(0, 65535),
        0,
        "TCP port of the DIMSE service over TLS (2762 is the port IANA registered for "
        "DICOM over TLS); 0 turns DIMSE over TLS off",
    ),
    SettingDefinition(
        "dimse",
        "tls_cert_file",
        _parse_optional_path,
        "",
        "PEM file of the archive's TLS server certificate, followed by any intermediate "
        "CA certificates; required with dimse.tls_port",
    ),
    SettingDefinition(
        "dimse",
        "tls_key_file",
        _parse_optional_path,
        "",
        "PEM file of the unencrypted private key of dimse.tls_cert_file; keep it mode 0600",
    ),
    SettingDefinition(
        "dimse",
        "tls_ca_file",
        _parse_optional_path,
        "",
        "PEM file of the CA certificates that TLS client certificates must chain to; "
        "empty: clients are not asked for a certificate",
    ),
    SettingDefinition(
        "dimse",
        "tls_require_client_cert",
        _parse_bool,
        False,
        "reject TLS clients without a certificate signed by a CA of dimse.tls_ca_file "
        "(mutual TLS); when false, a certificate a client sends must still verify",
    ),
    SettingDefinition(
        "dimse",
        "allowed_calling_ae_titles",
        _parse_ae_title_list,
        [],
        "calling AE titles allowed to associate; empty allows any",
    ),
    SettingDefinition(
        "dimse",
        "unknown_callers",
        parse_unknown_callers,
        UNKNOWN_CALLERS_ACCEPT,
        "what a calling AE title that is not a registered node may do: accept (store, query and "
        "retrieve), reject (A-ASSOCIATE-RJ), echo (C-ECHO only), or permissions separated by "
        "commas, such as store or store,query",
    ),
    SettingDefinition(
        "dimse",
        "max_associations",
        _parse_int_range(1, 1000),
        32,
        "maximum number of concurrent associations; one more is rejected with "
        "A-ASSOCIATE-RJ (rejected-transient, local-limit-exceeded)",
    ),
    SettingDefinition(
        "dimse",
        "max_associations_per_ae",
        _parse_int_range(0, 1000),
        0,
        "maximum number of concurrent associations of one calling AE title, rejected like "
        "dimse.max_associations; 0 sets no limit of its own",
    ),
    SettingDefinition(
        "dimse",
        "max_pdu_size",
        _parse_int_range(0, 2**32 - 1),
        262144,
        "maximum PDU size in bytes the archive receives; a peer that sends a longer "
        "P-DATA-TF PDU is aborted; 0 means no limit",
    ),
    SettingDefinition(
        "dimse",
        "max_dataset_size",
        _parse_int_range(1, 2**63 - 1),
        1024**3,
        "maximum size in bytes of a data set received with C-STORE; a larger one is "
        "discarded and answered with 0xA700 Out of Resources; the archive holds one "
        "data set per association in memory",
    ),
    SettingDefinition(
        "dimse",
        "acse_timeout",
        _parse_float_range(1, 3600),
        30.0,
        "seconds to wait for association messages, and for the A-ASSOCIATE-RQ of a new connection",
    ),
    SettingDefinition(
        "dimse",
        "dimse_timeout",
        _parse_float_range(1, 3600),
        60.0,
        "seconds to wait for DIMSE messages",
    ),
    SettingDefinition(
        "dimse",
        "network_timeout",
        _parse_float_range(1, 3600),
        60.0,
        "seconds an idle association is kept open, and that the rest of a PDU may take to arrive",
    ),
    SettingDefinition(
        "dimse",
        "shutdown_timeout",
        _parse_float_range(0, 3600),
        30.0,
        "seconds that associations on the old address get to finish when dimse.host or "
        "dimse.port changes while the server runs; a stop uses server.drain_seconds",
    ),
    SettingDefinition(
        "storage",
        "data_dir",
        _parse_path,
        "./data",
        "directory of the embedded index and stored files",
    ),
    SettingDefinition(
        "storage",
        "duplicate_policy",
        _parse_choice("replace", "reject"),
        "replace",
        "what a C-STORE of an existing SOP Instance UID does: replace or reject",
    ),
    SettingDefinition(
        "storage",
        "backend",
        _parse_choice("filesystem", "s3"),
        "filesystem",
        "where stored files go: filesystem (DATA_DIR/storage) or s3 (the bucket of "
        "storage.s3_bucket); credentials come from the AWS environment variables, "
        "profiles or instance role, never from this file",
    ),
    SettingDefinition(
        "storage",
        "s3_bucket",
        _parse_bucket,
        "",
        "name of the S3 bucket of stored files; required with storage.backend = s3",
    ),
    SettingDefinition(
        "storage",
        "s3_prefix",
        _parse_s3_prefix,
        "",
        "folder in the bucket under which objects are stored, such as archive/; "
        "empty stores at the top of the bucket",
    ),
    SettingDefinition(
        "storage",
        "s3_endpoint_url",
        _parse_endpoint_url,
        "",
        "URL of an S3-compatible server, such as http://127.0.0.1:9000; empty uses "
        "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL if set, else AWS",
    ),
    SettingDefinition(
        "storage",
        "s3_region",
        _parse_region,
        "",
        "region of the bucket, such as eu-central-1; empty uses AWS_REGION, "
        "AWS_DEFAULT_REGION or the profile's region",
    ),
    SettingDefinition(
        "storage",
        "s3_addressing_style",
        _parse_choice("auto", "path", "virtual"),
        "auto",
        "how requests name the bucket: auto (path style with storage.s3_endpoint_url, "
        "virtual-hosted on AWS), path (https://host/bucket/key) or virtual "
        "(https://bucket.host/key)",
    ),
    SettingDefinition(
        "storage",
        "s3_server_side_encryption",
        _parse_server_side_encryption,
        "",
        "server-side encryption requested for each object: AES256, aws:kms or "
        "aws:kms:dsse; empty leaves it to the bucket's default",
    ),
    SettingDefinition(
        "storage",
        "s3_kms_key_id",
        _parse_kms_key_id,
        "",
        "KMS key id, alias or ARN for storage.s3_server_side_encryption = aws:kms or "
        "aws:kms:dsse; empty uses the account's AWS managed key",
    ),
    SettingDefinition(
        "storage",
        "s3_part_size",
        _parse_int_range(5 * 1024**2, 5 * 1024**3),
        16 * 1024**2,
        "bytes per part of a multipart upload; files larger than this are uploaded in "
        "parts, and each upload holds one part in memory",
    ),
    SettingDefinition(
        "storage",
        "s3_max_attempts",
        _parse_int_range(1, 20),
        5,
        "attempts of one S3 request, the first included, before it fails; throttling, "
        "server errors and connection errors are retried with exponential backoff",
    ),
    SettingDefinition(
        "storage",
        "s3_retry_mode",
        _parse_choice("standard", "adaptive"),
        "standard",
        "retry mode of the AWS SDK: standard, or adaptive, which also slows down the "
        "request rate while S3 throttles",
    ),
    SettingDefinition(
        "index",
        "url",
        _parse_str,
        "",
        "SQLAlchemy database URL; empty uses SQLite at DATA_DIR/index.sqlite",
    ),
    SettingDefinition(
        "query",
        "max_matches",
        _parse_int_range(1, 10_000_000),
        10000,
        "maximum number of C-FIND matches returned for one request",
    ),
    SettingDefinition(
        "query",
        "person_name_case_insensitive",
        _parse_bool,
        True,
        "match Person Name (PN) values without regard to case",
    ),
    SettingDefinition(
        "ingest",
        "import_roots",
        _parse_path_list,
        [],
        "folders under which 'dicomvault index' and the HTTP API may index files; "
        "empty allows none",
    ),
    SettingDefinition(
        "ingest",
        "import_buckets",
        _parse_bucket_list,
        [],
        "bucket prefixes (s3://bucket/prefix) under which 'dicomvault index' and the HTTP API "
        "may index objects; empty allows none",
    ),
    SettingDefinition(
        "ingest",
        "watch_folders",
        _parse_path_list,
        [],
        "folders that 'dicomvault serve' watches and indexes in place as files arrive",
    ),
    SettingDefinition(
        "ingest",
        "workers",
        _parse_int_range(0, 256),
        0,
        "header parsing processes of an indexing task; 0 uses one per CPU core",
    ),
    SettingDefinition(
        "ingest",
        "batch_size",
        _parse_int_range(1, 100_000),
        500,
        "maximum number of files indexed in one database transaction",
    ),
    SettingDefinition(
        "ingest",
        "settle_seconds",
        _parse_float_range(0, 3600),
        2.0,
        "seconds a file's size and modification time must stay unchanged before it is read",
    ),
    SettingDefinition(
        "ingest",
        "watch_interval",
        _parse_float_range(0.1, 3600),
        2.0,
        "seconds between two scans of a watched folder",
    ),
    SettingDefinition(
        "http",
        "host",
        _parse_host,
        "127.0.0.1",
        "IP address the HTTP API listens on",
    ),
    SettingDefinition(
        "http",
        "port",
        _parse_int_range(0, 65535),
        8080,
        "TCP port of the HTTP API; 0 turns the HTTP API off",
    ),
    SettingDefinition(
        "http",
        "tls_cert_file",
        _parse_optional_path,
        "",
        "PEM file of the HTTPS server certificate, followed by any intermediate CA "
        "certificates; empty serves plain HTTP",
    ),
    SettingDefinition(
        "http",
        "tls_key_file",
        _parse_optional_path,
        "",
        "PEM file of the unencrypted private key of http.tls_cert_file; keep it mode 0600",
    ),
    SettingDefinition(
        "http",
        "trusted_proxies",
        _parse_network_list,
        [],
        "IP addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto headers are used; empty trusts no forwarded headers",
    ),
    SettingDefinition(
        "http",
        "stow_max_instance_size",
        _parse_int_range(1, 2**63 - 1),
        1024**3,
        "maximum size in bytes of one instance sent to STOW-RS; "
        "the archive holds one instance in memory while it stores it",
    ),
    SettingDefinition(
        "http",
        "stow_max_request_size",
        _parse_int_range(1, 2**63 - 1),
        16 * 1024**3,
        "maximum size in bytes of one STOW-RS request body, which is spooled to a "
        "temporary file before any instance is stored",
    ),
    SettingDefinition(
        "http",
        "stow_max_parts",
        _parse_int_range(1, 10_000_000),
        10000,
        "maximum number of parts (instances) in one STOW-RS request body",
    ),
    SettingDefinition(
        "http",
        "max_request_size",
        _parse_int_range(1, 2**63 - 1),
        16 * 1024**2,
        "maximum size in bytes of a request body to any endpoint but STOW-RS, which "
        "http.stow_max_request_size limits; a larger one is answered with 413",
    ),
    SettingDefinition(
        "http",
        "max_concurrent_requests",
        _parse_int_range(1, 100_000),
        256,
        "maximum number of requests served at once; more are answered with 503 and "
        "Retry-After; /health and /ready are not counted",
    ),
    SettingDefinition(
        "http",
        "read_timeout",
        _parse_float_range(1, 3600),
        60.0,
        "seconds a client may take to send a request's line and headers, and between two "
        "parts of its body; a stalled body is answered with 408, and the connection closed",
    ),
    SettingDefinition(
        "http",
        "keep_alive_timeout",
        _parse_int_range(1, 3600),
        5,
        "seconds an idle keep-alive connection is kept open between requests",
    ),
    SettingDefinition(
        "http",
        "cors_allow_origins",
        _parse_origin_list,
        [],
        "origins of browser applications allowed to call the DICOMweb and HTTP APIs "
        "(CORS), or '*' for any; empty turns CORS off",
    ),
    SettingDefinition(
        "http",
        "public_url",
        _parse_base_url,
        "",
        "URL at which clients reach the HTTP server, used in URLs the responses contain "
        "(set it behind a reverse proxy); empty takes scheme and host from each request",
    ),
    SettingDefinition(
        "http",
        "dicomweb_access",
        _parse_choice("open", "users"),
        "open",
        "who may use DICOMweb and WADO-URI: open (anyone who can connect; only allowed while "
        "http.host is a loopback address) or users (an API token or a console login)",
    ),
    SettingDefinition(
        "http",
        "metrics_access",
        _parse_choice("users", "open"),
        "users",
        "who may read the Prometheus metrics at /metrics: users (an API token or a console "
        "login of any role) or open (anyone who can connect; only allowed while http.host is "
        "a loopback address)",
    ),
    SettingDefinition(
        "server",
        "drain_delay",
        _parse_float_range(0, 3600),
        0.0,
        "seconds between a stop signal and closing the DIMSE and HTTP listeners; meanwhile "
        "/ready answers 503 and everything else is served as before, so that load "
        "balancers stop sending work here before connections are refused",
    ),
    SettingDefinition(
        "server",
        "drain_seconds",
        _parse_float_range(0, 3600),
        30.0,
        "seconds that associations and HTTP requests in flight get to finish after a stop "
        "closed the listeners; the rest are then aborted",
    ),
    SettingDefinition(
        "server",
        "lease_seconds",
        _parse_float_range(1, 3600),
        30.0,
        "seconds a server process holds a task, a chunk of a bucket task or a watched folder "
        "without renewing it; another process sharing the index takes the work over once "
        "they have passed since the holder stopped",
    ),
    SettingDefinition(
        "server",
        "maintenance_interval",
        _parse_float_range(1, 86400),
        600.0,
        "seconds between two runs of the periodic clean-up (expired sessions, multipart "
        "uploads left in the bucket), which one server process of those sharing the index runs",
    ),
    SettingDefinition(
        "server",
        "settings_poll_interval",
        _parse_float_range(0, 3600),
        10.0,
        "seconds between two reads of the DIMSE settings saved through the HTTP API of any "
        "server sharing the index, applied when they changed; 0 reads them only at start",
    ),
    SettingDefinition(
        "server",
        "readiness_timeout",
        _parse_float_range(0.1, 60),
        2.0,
        "seconds /ready waits for its index database and storage checks before it reports "
        "a check as timed out",
    ),
    SettingDefinition(
        "encryption",
        "enabled",
        _parse_bool,
        False,
        "encrypt stored files with AES-256-GCM under a master key from encryption.key_file "
        "or DICOMVAULT_ENCRYPTION_KEY; files indexed in place are never encrypted",
    ),
    SettingDefinition(
        "encryption",
        "key_file",
        _parse_optional_path,
        "",
        "file with the current 256-bit master key as 64 hexadecimal digits or base64, "
        "readable by the archive's user only (mode 0600 or 0400); "
        "'dicomvault keys generate FILE' writes one",
    ),
    SettingDefinition(
        "encryption",
        "key",
        _parse_secret,
        "",
        "the current master key as 64 hexadecimal digits or base64, in place of "
        "encryption.key_file; only from the environment variable DICOMVAULT_ENCRYPTION_KEY",
        secret=True,
        env_only=True,
    ),
    SettingDefinition(
        "encryption",
        "previous_key_files",
        _parse_path_list,
        [],
        "key files of earlier master keys, needed to read files whose data keys "
        "'dicomvault keys rotate' has not yet wrapped under the current key",
    ),
    SettingDefinition(
        "encryption",
        "previous_keys",
        _parse_secret_list,
        [],
        "earlier master keys, comma-separated, in place of encryption.previous_key_files; "
        "only from the environment variable DICOMVAULT_ENCRYPTION_PREVIOUS_KEYS",
        secret=True,
        env_only=True,
    ),
    SettingDefinition(
        "encryption",
        "provider",
        _parse_choice(*KEY_PROVIDERS),
        "local",
        "where the master keys are: local (encryption.key_file or DICOMVAULT_ENCRYPTION_KEY) "
        "or aws-kms (the AWS KMS key encryption.kms_key_id wraps the data keys)",
    ),
    SettingDefinition(
        "encryption",
        "kms_key_id",
        _parse_kms_master_key,
        "",
        "KMS key id, alias name or ARN of the current master key, a symmetric encryption "
        "key; required with encryption.provider = aws-kms",
    ),
    SettingDefinition(
        "encryption",
        "kms_previous_key_ids",
        _parse_kms_master_key_list,
        [],
        "KMS key ids, alias names or ARNs of earlier master keys, comma-separated in the "
        "environment, needed to read files whose data keys 'dicomvault keys rotate' has "
        "not yet wrapped under the current key",
    ),
    SettingDefinition(
        "encryption",
        "kms_endpoint_url",
        _parse_endpoint_url,
        "",
        "URL of a KMS-compatible server, such as http://127.0.0.1:4566; empty uses "
        "AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL if set, else AWS",
    ),
    SettingDefinition(
        "encryption",
        "kms_region",
        _parse_region,
        "",
        "region of the KMS keys, such as eu-central-1; empty uses AWS_REGION, "
        "AWS_DEFAULT_REGION or the profile's region",
    ),
    SettingDefinition(
        "encryption",
        "kms_max_attempts",
        _parse_int_range(1, 20),
        5,
        "attempts of one KMS request, the first included, before it fails; throttling, "
        "server errors and connection errors are retried with exponential backoff",
    ),
    SettingDefinition(
        "encryption",
        "kms_retry_mode",
        _parse_choice("standard", "adaptive"),
        "standard",
        "retry mode of the AWS SDK for KMS requests: standard, or adaptive, which also "
        "slows down the request rate while KMS throttles",
    ),
    SettingDefinition(
        "auth",
        "local_login",
        _parse_bool,
        True,
        "whether users of the archive may log in with a name and password (console and "
        "POST /api/login); false leaves only OpenID Connect logins and API tokens",
    ),
    SettingDefinition(
        "auth",
        "oidc_issuer",
        _parse_issuer,
        "",
        "issuer URL of the OpenID Connect provider for console single sign-on; the discovery "
        "document is read from ISSUER/.well-known/openid-configuration; empty turns it off",
    ),
    SettingDefinition(
        "auth",
        "oidc_client_id",
        _parse_str,
        "",
        "client id of the archive as registered at the OpenID Connect provider",
    ),
    SettingDefinition(
        "auth",
        "oidc_client_secret",
        _parse_secret,
        "",
        "client secret of the archive at the OpenID Connect provider; only from the "
        "environment variable DICOMVAULT_AUTH_OIDC_CLIENT_SECRET",
        secret=True,
        env_only=True,
    ),
    SettingDefinition(
        "auth",
        "oidc_client_secret_file",
        _parse_optional_path,
        "",
        "file with the client secret, in place of DICOMVAULT_AUTH_OIDC_CLIENT_SECRET; "
        "readable by the archive's user only",
    ),
    SettingDefinition(
        "auth",
        "oidc_display_name",
        _parse_str,
        "OpenID Connect",
        "name of the provider on the console's sign-in button",
    ),
    SettingDefinition(
        "auth",
        "oidc_scopes",
        _parse_str,
        "openid profile email",
        "scopes requested from the provider, separated by spaces; must contain openid",
    ),
    SettingDefinition(
        "auth",
        "oidc_name_claim",
        _parse_str,
        "preferred_username",
        "ID token claim whose value becomes the user name in the archive",
    ),
    SettingDefinition(
        "auth",
        "oidc_role_claim",
        _parse_str,
        "groups",
        "ID token claim (a string or a list of strings) mapped to a role through "
        "auth.oidc_admin_values and auth.oidc_user_values",
    ),
    SettingDefinition(
        "auth",
        "oidc_admin_values",
        _parse_word_list,
        [],
        "values of auth.oidc_role_claim that give the admin role",
    ),
    SettingDefinition(
        "auth",
        "oidc_user_values",
        _parse_word_list,
        [],
        "values of auth.oidc_role_claim that give the user role; a login whose claim "
        "matches neither list is rejected",
    ),
    SettingDefinition(
        "logging", "level", _parse_log_level, "INFO", "log level: DEBUG, INFO, WARNING or ERROR"
    ),
    SettingDefinition(
        "logging", "format", _parse_choice("text", "json"), "text", "log line format: text or json"
    ),
    SettingDefinition(
        "logging",
        "recent_events",
        _parse_int_range(0, 100_000),
        500,
        "log records that serve keeps in memory for GET /api/logs; 0 keeps none",
    ),
)

_BY_NAME = {definition.name: definition for definition in SETTINGS}
# Settings that choose the storage, which is opened before saved settings are read.
STORAGE_OPENING_SETTINGS = frozenset(
    definition.name
    for definition in SETTINGS
    if definition.name == "storage.backend" or definition.name.startswith("storage.s3_")
)
# Settings naming files; a relative path in the configuration file is relative to the file.
TLS_FILE_SETTINGS = (
    "dimse.tls_cert_file",
    "dimse.tls_key_file",
    "dimse.tls_ca_file",
    "http.tls_cert_file",
    "http.tls_key_file",
)


@dataclasses.dataclass(frozen=True)
class DimseSettings:
    """Settings of the DIMSE service."""

    ae_title: str
    host: str
    port: int
    allowed_calling_ae_titles: list[str]
    unknown_callers: str
    max_associations: int
    max_associations_per_ae: int
    max_pdu_size: int
    max_dataset_size: int
    tls_port: int
    tls_cert_file: str
    tls_key_file: str
    tls_ca_file: str
    tls_require_client_cert: bool
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    shutdown_timeout: float


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    """Settings of the storage of files: the data directory, and the S3 bucket if used."""

    data_dir: str
    duplicate_policy: str
    backend: str
    s3_bucket: str
    s3_prefix: str
    s3_endpoint_url: str
    s3_region: str
    s3_addressing_style: str
    s3_server_side_encryption: str
    s3_kms_key_id: str
    s3_part_size: int
    s3_max_attempts: int
    s3_retry_mode: str


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """Settings of the SQL index."""

    url: str


@dataclasses.dataclass(frozen=True)
class QuerySettings:
    """Settings of C-FIND matching."""

    max_matches: int
    person_name_case_insensitive: bool


@dataclasses.dataclass(frozen=True)
class IngestSettings:
    """Settings of bulk indexing and watched folders."""

    import_roots: list[str]
    import_buckets: list[str]
    watch_folders: list[str]
    workers: int
    batch_size: int
    settle_seconds: float
    watch_interval: float


@dataclasses.dataclass(frozen=True)
class HttpSettings:
    """Settings of the HTTP API."""

    host: str
    port: int
    stow_max_instance_size: int
    stow_max_request_size: int
    stow_max_parts: int
    max_request_size: int
    max_concurrent_requests: int
    read_timeout: float
    keep_alive_timeout: int
    cors_allow_origins: list[str]
    public_url: str
    dicomweb_access: str
    tls_cert_file: str
    tls_key_file: str
    trusted_proxies: list[str]
    metrics_access: str


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Settings of the server process as a whole: draining at a stop, readiness checks."""

    drain_delay: float
    drain_seconds: float
    lease_seconds: float
    maintenance_interval: float
    settings_poll_interval: float
    readiness_timeout: float


@dataclasses.dataclass(frozen=True)
class EncryptionSettings:
    """Settings of encryption at rest; the keys themselves are left out of the repr."""

    enabled: bool
    key_file: str
    key: str = dataclasses.field(repr=False)
    previous_key_files: list[str] = dataclasses.field(default_factory=list)
    previous_keys: list[str] = dataclasses.field(default_factory=list, repr=False)
    provider: str = "local"
    kms_key_id: str = ""
    kms_previous_key_ids: list[str] = dataclasses.field(default_factory=list)
    kms_endpoint_url: str = ""
    kms_region: str = ""
    kms_max_attempts: int = 5
    kms_retry_mode: str = "standard"


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    """Settings of console logins: local passwords and OpenID Connect single sign-on."""

    local_login: bool = True
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = dataclasses.field(default="", repr=False)
    oidc_client_secret_file: str = ""
    oidc_display_name: str = "OpenID Connect"
    oidc_scopes: str = "openid profile email"
    oidc_name_claim: str = "preferred_username"
    oidc_role_claim: str = "groups"
    oidc_admin_values: list[str] = dataclasses.field(default_factory=list)
    oidc_user_values: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    """Settings of log output."""

    level: str
    format: str
    recent_events: int


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective settings, and where each value came from."""

    dimse: DimseSettings
    storage: StorageSettings
    index: IndexSettings
    query: QuerySettings
    ingest: IngestSettings
    http: HttpSettings
    server: ServerSettings
    logging: LoggingSettings
    encryption: EncryptionSettings
    sources: Mapping[str, str]
    nodes: tuple[RemoteNode, ...] = ()
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)

    @property
    def data_dir(self) -> Path:
        """The data directory as an absolute path."""
        return Path(self.storage.data_dir).expanduser().resolve()

    @property
    def index_url(self) -> str:
        """The database URL, with the embedded SQLite default filled in."""
        if self.index.url:
            return self.index.url
        return f"sqlite:///{self.data_dir / 'index.sqlite'}"

    @property
    def import_roots(self) -> list[Path]:
        """The import roots as absolute paths with symbolic links resolved."""
        return [Path(root).expanduser().resolve() for root in self.ingest.import_roots]


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the effective settings from defaults, file, environment and options.

    Parameters
    ----------
    config_file : str or Path, optional
        TOML file to read. When None, the path in ``DICOMVAULT_CONFIG`` is used
        if that variable is set.
    environ : Mapping, optional
        Environment variables; ``os.environ`` when None.
    overrides : Mapping, optional
        Values from command line options by dotted name (``"dimse.port"``);
        None values are ignored.

    Returns
    -------
    Settings

    Raises
    ------
    ConfigError
        If the file cannot be read or a value is invalid. The message names
        the setting and where its value came from.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {d.name: d.default for d in SETTINGS}
    sources: dict[str, str] = {d.name: "default" for d in SETTINGS}

    nodes: tuple[RemoteNode, ...] = ()
    if config_file is None and env.get(CONFIG_ENV_VAR):
        config_file = env[CONFIG_ENV_VAR]
    if config_file is not None:
        file_values, node_tables = _read_config_file(Path(config_file))
        _resolve_relative_paths(file_values, Path(config_file).parent)
        _resolve_node_paths(node_tables, Path(config_file).parent)
        _apply(values, sources, file_values, f"file {config_file}")
        try:
            nodes = nodes_from_config(node_tables)
        except ValueError as exc:
            raise ConfigError(f"Invalid node in file {config_file}: {exc}") from None

    _reject_unknown_variables(env)
    env_values = {d.name: env[d.env_var] for d in SETTINGS if d.env_var in env}
    _apply(values, sources, env_values, "environment", via_env=True)

    option_values = {k: v for k, v in (overrides or {}).items() if v is not None}
    _apply(values, sources, option_values, "command line")

    _check_combinations(values, sources)

    def section(name: str, cls: type[Any]) -> Any:
        fields = {f.name: values[f"{name}.{f.name}"] for f in dataclasses.fields(cls)}
        return cls(**fields)

    return Settings(
        dimse=section("dimse", DimseSettings),
        storage=section("storage", StorageSettings),
        index=section("index", IndexSettings),
        query=section("query", QuerySettings),
        ingest=section("ingest", IngestSettings),
        http=section("http", HttpSettings),
        server=section("server", ServerSettings),
        logging=section("logging", LoggingSettings),
        encryption=section("encryption", EncryptionSettings),
        auth=section("auth", AuthSettings),
        sources=sources,
        nodes=nodes,
    )


def parse_setting(name: str, value: Any) -> Any:
    """Parse ``value`` for the setting with the dotted ``name``.

    Raises
    ------
    ValueError
        If the name is unknown or the value invalid; the message names the
        setting and the accepted form.
    """
    definition = _BY_NAME.get(name)
    if definition is None:
        raise ValueError(f"Unknown setting '{name}'")
    try:
        return definition.parse(value)
    except ValueError as exc:
        raise ValueError(f"'{name}' {exc}") from None


def apply_saved_settings(settings: Settings, saved: Mapping[str, Any]) -> Settings:
    """Return ``settings`` with the values saved through the HTTP API taking precedence.

    Saved values win over the file, the environment and command line
    options, because they are the newest decision of an administrator.
    Their source becomes :data:`SAVED_SOURCE`.

    Raises
    ------
    ConfigError
        If a saved name is unknown or its value invalid.
    """
    sources = dict(settings.sources)
    sections: dict[str, dict[str, Any]] = {}
    for name, raw in saved.items():
        try:
            value = parse_setting(name, raw)
        except ValueError as exc:
            raise ConfigError(f"Invalid setting saved in the {SAVED_SOURCE}: {exc}") from None
        section, key = name.split(".", 1)
        if section in ("encryption", "auth") or name in STORAGE_OPENING_SETTINGS:
            # Storage is opened, with the configured keys, before saved settings are read.
            raise ConfigError(
                f"Invalid setting saved in the {SAVED_SOURCE}: '{name}' can only be set in "
                "the configuration file or the environment"
            )
        sections.setdefault(section, {})[key] = value
        sources[name] = SAVED_SOURCE
    changed = {
        section: dataclasses.replace(getattr(settings, section), **values)
        for section, values in sections.items()
    }
    updated = dataclasses.replace(settings, sources=sources, **changed)
    # A saved port may contradict the configured TLS port.
    combined = {
        definition.name: getattr(getattr(updated, definition.section), definition.key)
        for definition in SETTINGS
        if definition.section in ("dimse", "http")
    }
    _check_combinations(combined, sources)
    return updated


def _check_combinations(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Reject settings that are valid alone but contradict each other."""

    def where(name: str) -> str:
        return f"'{name}' ({sources[name]})"

    port, tls_port = values["dimse.port"], values["dimse.tls_port"]
    if port == 0 and tls_port == 0:
        raise ConfigError(
            f"Invalid settings: {where('dimse.port')} and {where('dimse.tls_port')} are both 0, "
            "so no DIMSE port would be open; set at least one of them"
        )
    if port == tls_port:
        raise ConfigError(
            f"Invalid settings: {where('dimse.port')} and {where('dimse.tls_port')} are both "
            f"{port}; DIMSE with and without TLS need different ports"
        )
    tls_files = ("dimse.tls_cert_file", "dimse.tls_key_file", "dimse.tls_ca_file")
    if tls_port:
        for name in tls_files[:2]:
            if not values[name]:
                raise ConfigError(
                    f"Invalid settings: {where('dimse.tls_port')} is {tls_port}, so "
                    f"'{name}' is required; 'dicomvault certs dev' creates test certificates"
                )
    else:
        for name in (*tls_files, "dimse.tls_require_client_cert"):
            if values[name]:
                raise ConfigError(
                    f"Invalid settings: {where(name)} is set but 'dimse.tls_port' is 0; "
                    "set dimse.tls_port to serve DIMSE over TLS, or remove the setting"
                )
    if values["dimse.tls_require_client_cert"] and not values["dimse.tls_ca_file"]:
        raise ConfigError(
            f"Invalid settings: {where('dimse.tls_require_client_cert')} is true, so "
            "'dimse.tls_ca_file' is required to verify client certificates"
        )
    if (
        values["http.port"]
        and values["http.dicomweb_access"] == "open"
        and not _is_loopback(values["http.host"])
    ):
        raise ConfigError(
            f"Invalid settings: {where('http.host')} is {values['http.host']}, not a loopback "
            f"address, and {where('http.dicomweb_access')} is open, so anyone on the network "
            'could read and store images; set http.dicomweb_access = "users"'
        )
    if (
        values["http.port"]
        and values["http.metrics_access"] == "open"
        and not _is_loopback(values["http.host"])
    ):
        raise ConfigError(
            f"Invalid settings: {where('http.host')} is {values['http.host']}, not a loopback "
            f"address, and {where('http.metrics_access')} is open, so anyone on the network "
            'could read the metrics; set http.metrics_access = "users" and give the scraper '
            "an API token"
        )
    _check_encryption(values, where)
    _check_storage(values, where)
    _check_auth(values, where)
    if bool(values["http.tls_cert_file"]) != bool(values["http.tls_key_file"]):
        raise ConfigError(
            "Invalid settings: HTTPS needs both 'http.tls_cert_file' and 'http.tls_key_file', "
            "but only one of them is set"
        )


def _is_loopback(host: str) -> bool:
    # _parse_host accepts "localhost" beside IP addresses.
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def _check_encryption(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    if "encryption.enabled" not in values:
        return  # saved settings, which never contain encryption settings
    if not values["encryption.enabled"]:
        for definition in SETTINGS:
            name = definition.name
            if definition.section == "encryption" and values[name] != definition.default:
                raise ConfigError(
                    f"Invalid settings: {where(name)} is set but 'encryption.enabled' is "
                    "false, so stored files would not be encrypted; set encryption.enabled = "
                    "true, or remove the setting"
                )
        return
    if values["encryption.provider"] == "aws-kms":
        _check_kms_encryption(values, where)
        return

    key_file, key = values["encryption.key_file"], values["encryption.key"]
    if not key_file and not key:
        raise ConfigError(
            f"Invalid settings: {where('encryption.enabled')} is true, so a master key is "
            "required in 'encryption.key_file' or DICOMVAULT_ENCRYPTION_KEY; "
            "'dicomvault keys generate FILE' writes a key file"
        )
    if key_file and key:
        raise ConfigError(
            f"Invalid settings: both {where('encryption.key_file')} and "
            "DICOMVAULT_ENCRYPTION_KEY name a current master key; set only one of them"
        )
    for definition in SETTINGS:
        name = definition.name
        if name.startswith("encryption.kms_") and values[name] != definition.default:
            raise ConfigError(
                f"Invalid settings: {where(name)} is set but 'encryption.provider' is local, "
                'so no KMS key would be used; set encryption.provider = "aws-kms", or '
                "remove the setting"
            )


def _check_kms_encryption(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    """Check the settings of encryption at rest with encryption.provider = aws-kms."""
    if not values["encryption.kms_key_id"]:
        raise ConfigError(
            f"Invalid settings: {where('encryption.provider')} is aws-kms, so "
            "'encryption.kms_key_id' is required; set it to the id, alias name or ARN of a "
            "symmetric KMS key"
        )
    # Earlier local keys stay allowed, so that an archive can move from a local
    # key to a KMS key by rotation.
    for name in ("encryption.key_file", "encryption.key"):
        if values[name]:
            raise ConfigError(
                f"Invalid settings: {where(name)} is set but {where('encryption.provider')} "
                "is aws-kms, whose current master key is encryption.kms_key_id; remove the "
                "setting, or list a local key that stored files still need in "
                "encryption.previous_key_files"
            )


def _check_auth(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    if "auth.oidc_issuer" not in values:
        return  # saved settings, which never contain auth settings
    issuer = values["auth.oidc_issuer"]
    if not issuer:
        if not values["auth.local_login"]:
            raise ConfigError(
                f"Invalid settings: {where('auth.local_login')} is false and "
                "'auth.oidc_issuer' is empty, so nobody could log in to the console; "
                "set auth.oidc_issuer or leave auth.local_login true"
            )
        return
    if not values["auth.oidc_client_id"]:
        raise ConfigError(
            f"Invalid settings: {where('auth.oidc_issuer')} is set, so 'auth.oidc_client_id' "
            "is required; use the client id registered at the provider"
        )
    if bool(values["auth.oidc_client_secret"]) == bool(values["auth.oidc_client_secret_file"]):
        raise ConfigError(
            f"Invalid settings: {where('auth.oidc_issuer')} is set, so exactly one of "
            "DICOMVAULT_AUTH_OIDC_CLIENT_SECRET and 'auth.oidc_client_secret_file' is required"
        )
    if "openid" not in values["auth.oidc_scopes"].split():
        raise ConfigError(
            f"Invalid setting {where('auth.oidc_scopes')}: must contain the scope openid"
        )
    if not values["auth.oidc_admin_values"] and not values["auth.oidc_user_values"]:
        raise ConfigError(
            f"Invalid settings: {where('auth.oidc_issuer')} is set, but "
            "'auth.oidc_admin_values' and 'auth.oidc_user_values' are both empty, so every "
            "single sign-on login would be rejected; list the claim values of each role"
        )


def _check_storage(values: Mapping[str, Any], where: Callable[[str], str]) -> None:
    if "storage.backend" not in values:
        return  # saved settings, which never contain storage back-end settings
    if values["storage.backend"] == "s3":
        if not values["storage.s3_bucket"]:
            raise ConfigError(
                f"Invalid settings: {where('storage.backend')} is s3, so 'storage.s3_bucket' "
                "is required; set it to the name of an existing bucket"
            )
    else:
        # The endpoint, region and retry settings also reach the buckets that are indexed.
        reaching_sources = (
            {
                "storage.s3_endpoint_url",
                "storage.s3_region",
                "storage.s3_addressing_style",
                "storage.s3_max_attempts",
                "storage.s3_retry_mode",
            }
            if values.get("ingest.import_buckets")
            else set()
        )
        for definition in SETTINGS:
            name = definition.name
            if (
                name.startswith("storage.s3_")
                and name not in reaching_sources
                and values[name] != definition.default
            ):
                raise ConfigError(
                    f"Invalid settings: {where(name)} is set but 'storage.backend' is "
                    f"{values['storage.backend']}, so files would not go to S3; set "
                    'storage.backend = "s3", or remove the setting'
                )
    kms_key_id = values["storage.s3_kms_key_id"]
    if kms_key_id and not values["storage.s3_server_side_encryption"].startswith("aws:kms"):
        raise ConfigError(
            f"Invalid settings: {where('storage.s3_kms_key_id')} is set, so "
            "'storage.s3_server_side_encryption' must be aws:kms or aws:kms:dsse"
        )


def _reject_unknown_variables(env: Mapping[str, str]) -> None:
    """Stop on a misspelled DICOMVAULT_* variable, as an unknown key in the file does."""
    known = {d.env_var for d in SETTINGS} | {CONFIG_ENV_VAR}
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX) and name not in known)
    if unknown:
        raise ConfigError(
            f"Unknown environment variable {unknown[0]}; known variables: "
            f"{', '.join(sorted(known))}"
        )


def _resolve_relative_paths(file_values: dict[str, Any], base: Path) -> None:
    # A relative path in the file is relative to the file, not to the
    # working directory of whatever starts the server.
    data_dir = file_values.get("storage.data_dir")
    if isinstance(data_dir, str) and data_dir and not Path(data_dir).expanduser().is_absolute():
        file_values["storage.data_dir"] = str(base.resolve() / data_dir)
    for name in (*TLS_FILE_SETTINGS, "encryption.key_file", "auth.oidc_client_secret_file"):
        path = file_values.get(name)
        if isinstance(path, str) and path.strip():
            file_values[name] = _relative_to(base, path)
    for name in ("ingest.import_roots", "ingest.watch_folders", "encryption.previous_key_files"):
        paths = file_values.get(name)
        if isinstance(paths, list):
            file_values[name] = [
                str(base.resolve() / item)
                if isinstance(item, str) and item and not Path(item).expanduser().is_absolute()
                else item
                for item in paths
            ]


def _resolve_node_paths(node_tables: dict[str, Any], base: Path) -> None:
    for fields in node_tables.values():
        if not isinstance(fields, dict):
            continue  # nodes_from_config reports it
        for key in NODE_TLS_FILE_KEYS:
            path = fields.get(key)
            if isinstance(path, str) and path.strip():
                fields[key] = _relative_to(base, path)


def _relative_to(base: Path, path: str) -> str:
    """Return ``path`` made absolute against ``base``; an absolute path stays as it is."""
    return str(base.resolve() / Path(path.strip()).expanduser())


def _read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a TOML file into a flat mapping of dotted setting names, and the [nodes] tables."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"Configuration file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"Cannot read configuration file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Configuration file {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Configuration file {path} is not UTF-8 text: invalid byte at offset {exc.start}"
        ) from exc

    flat: dict[str, Any] = {}
    nodes = document.pop("nodes", {})
    if not isinstance(nodes, dict):
        raise ConfigError(
            f"Configuration file {path}: 'nodes' must contain tables such as [nodes.STORESCP]"
        )
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(
                f"Configuration file {path}: '{section}' must be a table such as "
                f"[{section}], got a value"
            )
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    return flat, nodes


def _apply(
    values: dict[str, Any],
    sources: dict[str, str],
    new_values: Mapping[str, Any],
    source: str,
    via_env: bool = False,
) -> None:
    for name, raw in new_values.items():
        definition = _BY_NAME.get(name)
        if definition is None:
            known = ", ".join(sorted(_BY_NAME))
            raise ConfigError(f"Unknown setting '{name}' in {source}; known settings: {known}")
        if definition.env_only and not via_env:
            raise ConfigError(
                f"Setting '{name}' cannot be set in {source}, which other users may be able "
                f"to read; set the environment variable {definition.env_var} instead, or "
                "use a key file"
            )
        try:
            values[name] = definition.parse(raw)
        except ValueError as exc:
            where = f"{definition.env_var}" if via_env else f"'{name}' ({source})"
            raise ConfigError(f"Invalid setting {where}: {exc}") from None
        sources[name] = definition.env_var if via_env else source


def describe_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """List (name, value, source) for every setting, with secrets masked."""
    rows = []
    for definition in SETTINGS:
        section = getattr(settings, definition.section)
        value = getattr(section, definition.key)
        shown = "********" if definition.secret and value else _format_value(value)
        if definition.name == "index.url":
            shown = f'"{mask_url_password(settings.index_url)}"'
        rows.append((definition.name, shown, settings.sources[definition.name]))
    for node in settings.nodes:
        shown = f"{node.host}:{node.port}{node.describe_tls()}"
        if node.is_restricted:
            shown += f"; {node.describe_access()}"
        rows.append((f"nodes.{node.ae_title}", shown, "file"))
    return rows


def mask_url_password(url: str) -> str:
    """Replace the password in a database URL with asterisks, also in a malformed URL."""
    return re.sub(r"(?<=:)[^:@/]*(?=@)", "********", url)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
