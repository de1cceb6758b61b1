"""Remote DICOM nodes registered with the archive: AE title, address, options and access."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dicomvault.permissions import (
    ALL_PERMISSIONS,
    Permission,
    format_permissions,
    parse_certificate_subject,
    parse_permissions,
    parse_source_addresses,
)

_AE_TITLE_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
_HOST_RE = re.compile(r"[A-Za-z0-9.:_-]{1,253}")
# Keys of a [nodes.<AE title>] table that name PEM files.
NODE_TLS_FILE_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")
# Keys of a [nodes.<AE title>] table that control what the node may do when it calls.
NODE_ACCESS_KEYS = ("permissions", "source_addresses", "tls_client_subject")
_NODE_KEYS = frozenset(
    {"host", "port", "description", "tls", *NODE_TLS_FILE_KEYS, *NODE_ACCESS_KEYS}
)


@dataclasses.dataclass(frozen=True)
class RemoteNode:
    """A remote DICOM node: a C-MOVE destination, a peer for C-ECHO, and a known caller.

    Associations with a node marked ``tls`` use DICOM over TLS. Its
    certificate must chain to a CA of ``tls_ca_file`` (the system's trusted
    CAs when empty) and name ``host``. The archive sends the client
    certificate ``tls_cert_file`` with its key ``tls_key_file`` when both
    are set. The file fields are absolute paths or empty.

    When the node calls the archive with its AE title, it may use the
    services of ``permissions`` (C-ECHO is always allowed). A non-empty
    ``source_addresses`` (IP addresses and networks) and a non-empty
    ``tls_client_subject`` (an RFC 4514 distinguished name the TLS client
    certificate's subject must contain) pin the node: an association that
    does not meet them is rejected.
    """

    ae_title: str
    host: str
    port: int
    description: str = ""
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    permissions: frozenset[Permission] = ALL_PERMISSIONS
    source_addresses: tuple[str, ...] = ()
    tls_client_subject: str = ""

    def describe(self) -> str:
        """Return 'AE @ host:port' for messages and logs."""
        return f"{self.ae_title} @ {self.host}:{self.port}"

    def describe_tls(self) -> str:
        """Return ", TLS" or ", TLS with client certificate" for a TLS node, else ""."""
        if not self.tls:
            return ""
        return ", TLS with client certificate" if self.tls_cert_file else ", TLS"

    @property
    def is_restricted(self) -> bool:
        """True when the node lacks a permission or is pinned to addresses or a subject."""
        return (
            self.permissions != ALL_PERMISSIONS
            or bool(self.source_addresses)
            or bool(self.tls_client_subject)
        )

    def describe_access(self) -> str:
        """Return the permissions and pins as "permissions: store; source addresses: ..."."""
        parts = [f"permissions: {format_permissions(self.permissions)}"]
        if self.source_addresses:
            parts.append(f"source addresses: {', '.join(self.source_addresses)}")
        if self.tls_client_subject:
            parts.append(f"TLS client subject: {self.tls_client_subject}")
        return "; ".join(parts)


def validate_ae_title(value: str) -> str:
    """Return the AE title without padding spaces.

    Raises
    ------
    ValueError
        If it is empty, longer than 16 characters, or has a backslash or
        control character.
    """
    text = value.strip()
    if not _AE_TITLE_RE.fullmatch(text):
        raise ValueError(
            "an AE title must be 1 to 16 printable ASCII characters without backslash, "
            f"got {value!r}"
        )
    return text


def make_node(
    ae_title: str,
    host: str,
    port: Any,
    description: str = "",
    tls: Any = False,
    tls_ca_file: Any = "",
    tls_cert_file: Any = "",
    tls_key_file: Any = "",
    permissions: Any = "all",
    source_addresses: Any = (),
    tls_client_subject: Any = "",
) -> RemoteNode:
    """Validate the fields of a node and build it.

    Relative TLS file paths are made absolute against the working directory;
    the files are not read here. ``permissions`` takes what
    :func:`~dicomvault.permissions.parse_permissions` takes, so a node
    registered without it may use every service.

    Raises
    ------
    ValueError
        If a field is invalid; the message names the field and the accepted form.
    """
    title = validate_ae_title(ae_title)
    host_text = str(host).strip()
    if not _HOST_RE.fullmatch(host_text):
        raise ValueError(f"'host' must be a host name or IP address, got {host!r}")
    if isinstance(port, bool) or not str(port).strip().isdigit():
        raise ValueError(f"'port' must be an integer from 1 to 65535, got {port!r}")
    port_number = int(port)
    if not 1 <= port_number <= 65535:
        raise ValueError(f"'port' must be an integer from 1 to 65535, got {port_number}")
    if not isinstance(tls, bool):
        raise ValueError(f"'tls' must be true or false, got {tls!r}")
    files: dict[str, Any] = {}
    for key, value in zip(
        NODE_TLS_FILE_KEYS, (tls_ca_file, tls_cert_file, tls_key_file), strict=True
    ):
        if not isinstance(value, str):
            raise ValueError(f"'{key}' must be a path as a string, got {value!r}")
        files[key] = str(Path(value.strip()).expanduser().absolute()) if value.strip() else ""
    if not tls and any(files.values()):
        named = ", ".join(f"'{key}'" for key, value in files.items() if value)
        raise ValueError(f"{named} needs 'tls' set to true")
    if bool(files["tls_cert_file"]) != bool(files["tls_key_file"]):
        raise ValueError(
            "'tls_cert_file' and 'tls_key_file' go together: give the client certificate "
            "with its private key, or neither"
        )
    access = _access_fields(permissions, source_addresses, tls_client_subject)
    return RemoteNode(title, host_text, port_number, str(description), tls, **files, **access)


def _access_fields(
    permissions: Any, source_addresses: Any, tls_client_subject: Any
) -> dict[str, Any]:
    """Parse the access fields of a node into keyword arguments of :class:`RemoteNode`."""
    parsers: dict[str, tuple[Callable[[Any], Any], Any]] = {
        "permissions": (parse_permissions, permissions),
        "source_addresses": (parse_source_addresses, source_addresses),
        "tls_client_subject": (parse_certificate_subject, tls_client_subject),
    }
    fields: dict[str, Any] = {}
    for key, (parse, value) in parsers.items():
        try:
            fields[key] = parse(value)
        except ValueError as exc:
            raise ValueError(f"'{key}' {exc}") from None
    return fields


def nodes_from_config(table: Mapping[str, Any]) -> tuple[RemoteNode, ...]:
    """Build nodes from the ``[nodes.<AE title>]`` tables of the configuration file.

    Raises
    ------
    ValueError
        If a node is invalid; the message names the node and the field.
    """
    nodes = []
    for ae_title, fields in table.items():
        if not isinstance(fields, Mapping):
            raise ValueError(f"[nodes.{ae_title}] must be a table with host and port")
        unknown = set(fields) - _NODE_KEYS
        if unknown:
            raise ValueError(
                f"[nodes.{ae_title}] has unknown keys {', '.join(sorted(unknown))}; "
                f"known keys: {', '.join(sorted(_NODE_KEYS))}"
            )
        if "host" not in fields or "port" not in fields:
            raise ValueError(f"[nodes.{ae_title}] needs both 'host' and 'port'")
        try:
            nodes.append(
                make_node(
                    ae_title,
                    fields["host"],
                    fields["port"],
                    fields.get("description", ""),
                    fields.get("tls", False),
                    **{key: fields.get(key, "") for key in NODE_TLS_FILE_KEYS},
                    permissions=fields.get("permissions", "all"),
                    source_addresses=fields.get("source_addresses", ()),
                    tls_client_subject=fields.get("tls_client_subject", ""),
                )
            )
        except ValueError as exc:
            raise ValueError(f"[nodes.{ae_title}]: {exc}") from None
    return tuple(nodes)
