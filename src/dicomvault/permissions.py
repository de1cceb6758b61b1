"""Permissions of calling nodes, and the addresses and certificate subjects that pin them.

These parsers turn the values of the configuration file, the HTTP API, the
console and the command line into one canonical form, and the matchers
compare them with what a caller presents at association time. Nothing here
does I/O.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from typing import Any

from cryptography import x509


class Permission(enum.StrEnum):
    """A DIMSE service a calling node may use; C-ECHO needs none."""

    STORE = "store"  # C-STORE
    QUERY = "query"  # C-FIND
    RETRIEVE = "retrieve"  # C-MOVE and C-GET

    @property
    def operations(self) -> str:
        """The DIMSE operations this permission allows, for messages."""
        return _OPERATIONS[self]


_OPERATIONS = {
    Permission.STORE: "C-STORE",
    Permission.QUERY: "C-FIND",
    Permission.RETRIEVE: "C-MOVE and C-GET",
}

ALL_PERMISSIONS = frozenset(Permission)
NO_PERMISSIONS: frozenset[Permission] = frozenset()
PERMISSION_NAMES = ", ".join(permission.value for permission in Permission)

# Values of dimse.unknown_callers besides a list of permissions.
UNKNOWN_CALLERS_ACCEPT = "accept"  # every permission
UNKNOWN_CALLERS_REJECT = "reject"  # A-ASSOCIATE-RJ
UNKNOWN_CALLERS_ECHO = "echo"  # association accepted, C-ECHO only


def parse_permissions(value: Any) -> frozenset[Permission]:
    """Parse a set of permissions: "all", "none", "store,query" or a list of names.

    An empty list means no permission (C-ECHO only); an empty string is an
    error, because it is more likely a mistake than a choice.

    Raises
    ------
    ValueError
        If the value has another type or names an unknown permission; the
        message starts with "must" so that callers can put the key before it.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return ALL_PERMISSIONS
        if text == "none":
            return NO_PERMISSIONS
        names = [item.strip() for item in text.split(",")]
        if not text or not all(names):
            raise ValueError(
                f"must be 'all', 'none' or permissions separated by commas "
                f"({PERMISSION_NAMES}), got {value!r}"
            )
    elif isinstance(value, (list, tuple, set, frozenset)):
        if not all(isinstance(item, str) for item in value):
            raise ValueError(f"must be a list of permissions ({PERMISSION_NAMES}), got {value!r}")
        names = [item.strip().lower() for item in value]
    else:
        raise ValueError(
            f"must be 'all', 'none' or a list of permissions ({PERMISSION_NAMES}), got {value!r}"
        )
    permissions = set()
    for name in names:
        try:
            permissions.add(Permission(name))
        except ValueError:
            hint = "; C-ECHO is always allowed" if name == "echo" else ""
            raise ValueError(f"must contain only {PERMISSION_NAMES}, got {name!r}{hint}") from None
    return frozenset(permissions)


def format_permissions(permissions: Iterable[Permission]) -> str:
    """Return the permissions as "store,query" in the order of :class:`Permission`, or "none"."""
    granted = set(permissions)
    names = [permission.value for permission in Permission if permission in granted]
    return ",".join(names) or "none"


def parse_unknown_callers(value: Any) -> str:
    """Parse ``dimse.unknown_callers`` into its canonical text.

    The result is "accept", "reject", "echo", or the permissions granted
    to unknown callers as :func:`format_permissions` writes them. A list of
    every permission becomes "accept".

    Raises
    ------
    ValueError
        If the value is none of these; the message starts with "must".
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in (UNKNOWN_CALLERS_ACCEPT, UNKNOWN_CALLERS_REJECT, UNKNOWN_CALLERS_ECHO):
            return text
        if text in ("all", "none"):
            # Both words read ambiguously here: "none" could mean "let none in".
            raise ValueError(
                f"must be accept, reject, echo or permissions ({PERMISSION_NAMES}), got "
                f"{value!r}; write accept for every permission or echo for C-ECHO only"
            )
    try:
        permissions = parse_permissions(value)
    except ValueError:
        raise ValueError(
            f"must be accept, reject, echo or permissions separated by commas "
            f"({PERMISSION_NAMES}), got {value!r}"
        ) from None
    if permissions == ALL_PERMISSIONS:
        return UNKNOWN_CALLERS_ACCEPT
    if not permissions:
        return UNKNOWN_CALLERS_ECHO
    return format_permissions(permissions)


def unknown_caller_permissions(policy: str) -> frozenset[Permission] | None:
    """Return what unknown callers may do under a parsed ``dimse.unknown_callers``.

    None means their associations are rejected.
    """
    if policy == UNKNOWN_CALLERS_REJECT:
        return None
    if policy == UNKNOWN_CALLERS_ACCEPT:
        return ALL_PERMISSIONS
    if policy == UNKNOWN_CALLERS_ECHO:
        return NO_PERMISSIONS
    return parse_permissions(policy)


def parse_source_addresses(value: Any) -> tuple[str, ...]:
    """Parse IP addresses and networks in CIDR form, from a list or a comma-separated string.

    Addresses are returned as written in canonical form ("10.0.0.5"),
    networks with their host bits cleared ("10.0.0.7/24" becomes
    "10.0.0.0/24"), without repeats and in the given order. Host names are
    not accepted: resolving them at each association would be slow, and
    forged DNS answers would pass the check.

    Raises
    ------
    ValueError
        If an item is not an IP address or network; the message starts with "must".
    """
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = [str(item).strip() for item in value]
    else:
        raise ValueError(
            f"must be a list of IP addresses or networks such as 10.0.0.5 or 10.0.0.0/24, "
            f"got {value!r}"
        )
    result: list[str] = []
    for item in items:
        try:
            if "/" in item:
                text = str(ipaddress.ip_network(item, strict=False))
            else:
                text = str(ipaddress.ip_address(item))
        except ValueError:
            raise ValueError(
                f"must contain IP addresses or networks such as 10.0.0.5 or 10.0.0.0/24, "
                f"got {item!r}"
            ) from None
        if text not in result:
            result.append(text)
    return tuple(result)


def address_allowed(address: str, source_addresses: Iterable[str]) -> bool:
    """Return whether ``address`` is one of the addresses or in one of the networks.

    An IPv4 address that arrives as an IPv4-mapped IPv6 address
    (::ffff:10.0.0.5, as on a dual-stack listener) is compared as IPv4. An
    invalid ``address`` matches nothing.
    """
    try:
        peer = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    for item in source_addresses:
        network = ipaddress.ip_network(item, strict=False)
        if network.version == peer.version and peer in network:
            return True
    return False


def parse_certificate_subject(value: Any) -> str:
    """Parse a distinguished name in RFC 4514 form, such as "CN=ct01.example.org,O=Hospital".

    Returns the name as ``cryptography`` writes it back, or "" for an
    empty value. Attribute types are the short names of RFC 4514 (CN, O,
    OU, C, L, ST, DC, UID) or dotted OIDs.

    Raises
    ------
    ValueError
        If the value is not text or not a valid distinguished name; the
        message starts with "must".
    """
    if not isinstance(value, str):
        raise ValueError(f"must be a distinguished name such as 'CN=ct01', got {value!r}")
    text = value.strip()
    if not text:
        return ""
    try:
        name = x509.Name.from_rfc4514_string(_tidy_distinguished_name(text))
    except ValueError:
        raise ValueError(
            f"must be a distinguished name in RFC 4514 form such as "
            f"'CN=ct01.example.org,O=Hospital', got {value!r}"
        ) from None
    if not list(name):
        raise ValueError(f"must name at least one attribute such as 'CN=ct01', got {value!r}")
    return name.rfc4514_string()


def _tidy_distinguished_name(text: str) -> str:
    """Remove spaces around separators and upper-case attribute types, as people write DNs.

    ``cryptography`` 50 rejects "CN=ct01, O=Hospital" and "cn=ct01", which
    RFC 4514 readers commonly accept.
    """
    relative_names = []
    for relative_name in _split_unescaped(text, ","):
        attributes = []
        for attribute in _split_unescaped(relative_name, "+"):
            attribute_type, separator, attribute_value = attribute.partition("=")
            attribute_type = attribute_type.strip()
            if not attribute_type[:1].isdigit():
                attribute_type = attribute_type.upper()
            stripped = attribute_value.strip()
            trailing_backslashes = len(stripped) - len(stripped.rstrip("\\"))
            if trailing_backslashes % 2:  # the last one escaped a trailing space
                stripped += " "
            attributes.append(f"{attribute_type}{separator}{stripped}")
        relative_names.append("+".join(attributes))
    return ",".join(relative_names)


def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split ``text`` at each ``separator`` that no backslash escapes."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for character in text:
        if escaped:
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == separator:
            parts.append("".join(current))
            current = []
            continue
        current.append(character)
    parts.append("".join(current))
    return parts


def subject_matches(required: str, subject: x509.Name) -> bool:
    """Return whether a certificate ``subject`` has every attribute of ``required``.

    ``required`` is a name from :func:`parse_certificate_subject`. Each of
    its attributes must appear in ``subject`` with an equal value. Order,
    letter case and runs of spaces do not count, so "CN=ct01" matches the
    subject "O=Hospital,CN=CT01". Attributes of ``subject`` that
    ``required`` does not name are ignored.
    """
    present = {(attribute.oid.dotted_string, _comparable(attribute.value)) for attribute in subject}
    wanted = x509.Name.from_rfc4514_string(required)
    return all(
        (attribute.oid.dotted_string, _comparable(attribute.value)) in present
        for attribute in wanted
    )


def _comparable(value: str | bytes) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return " ".join(text.split()).casefold()
