"""Permissions, source addresses and certificate subjects: parsing and matching."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from dicomvault.permissions import (
    ALL_PERMISSIONS,
    Permission,
    address_allowed,
    format_permissions,
    parse_certificate_subject,
    parse_permissions,
    parse_source_addresses,
    parse_unknown_callers,
    subject_matches,
    unknown_caller_permissions,
)

STORE_QUERY = frozenset({Permission.STORE, Permission.QUERY})


def name(**attributes: str) -> x509.Name:
    oids = {
        "CN": NameOID.COMMON_NAME,
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    }
    return x509.Name([x509.NameAttribute(oids[key], value) for key, value in attributes.items()])


class TestParsePermissions:
    @pytest.mark.parametrize(
        ("value", "parsed"),
        [
            pytest.param("all", ALL_PERMISSIONS, id="all"),
            pytest.param(" NONE ", frozenset(), id="none"),
            pytest.param("store,query", STORE_QUERY, id="text"),
            pytest.param(" Query , store ", STORE_QUERY, id="text-spaces-case"),
            pytest.param(["store", "query", "store"], STORE_QUERY, id="list-repeat"),
            pytest.param([], frozenset(), id="empty-list"),
            pytest.param("retrieve", frozenset({Permission.RETRIEVE}), id="retrieve"),
        ],
    )
    def test_valid(self, value: object, parsed: frozenset[Permission]) -> None:
        assert parse_permissions(value) == parsed

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            pytest.param(
                "",
                "must be 'all', 'none' or permissions separated by commas "
                "(store, query, retrieve), got ''",
                id="empty-text",
            ),
            pytest.param(
                "store,,query",
                "must be 'all', 'none' or permissions separated by commas "
                "(store, query, retrieve), got 'store,,query'",
                id="empty-item",
            ),
            pytest.param(
                "find",
                "must contain only store, query, retrieve, got 'find'",
                id="unknown",
            ),
            pytest.param(
                ["echo"],
                "must contain only store, query, retrieve, got 'echo'; C-ECHO is always allowed",
                id="echo",
            ),
            pytest.param(
                [1], "must be a list of permissions (store, query, retrieve), got [1]", id="number"
            ),
            pytest.param(
                True,
                "must be 'all', 'none' or a list of permissions (store, query, retrieve), got True",
                id="bool",
            ),
        ],
    )
    def test_invalid(self, value: object, message: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            parse_permissions(value)
        assert str(excinfo.value) == message

    def test_format_in_fixed_order(self) -> None:
        assert format_permissions({Permission.RETRIEVE, Permission.STORE}) == "store,retrieve"
        assert format_permissions(()) == "none"


class TestUnknownCallers:
    @pytest.mark.parametrize(
        ("policy", "permissions"),
        [
            pytest.param("accept", ALL_PERMISSIONS, id="accept"),
            pytest.param("reject", None, id="reject"),
            pytest.param("echo", frozenset(), id="echo"),
            pytest.param("store,query", STORE_QUERY, id="list"),
        ],
    )
    def test_permissions(self, policy: str, permissions: frozenset[Permission] | None) -> None:
        assert unknown_caller_permissions(parse_unknown_callers(policy)) == permissions

    def test_all_permissions_is_accept(self) -> None:
        assert parse_unknown_callers("retrieve,query,store") == "accept"

    def test_all_is_ambiguous(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            parse_unknown_callers("all")
        assert str(excinfo.value).endswith(
            "got 'all'; write accept for every permission or echo for C-ECHO only"
        )


class TestSourceAddresses:
    def test_parsed_and_normalized(self) -> None:
        parsed = parse_source_addresses(" 10.0.0.5, 10.0.1.7/24 ,10.0.0.5,::1 ")

        assert parsed == ("10.0.0.5", "10.0.1.0/24", "::1")

    def test_list(self) -> None:
        assert parse_source_addresses(["192.168.1.0/24"]) == ("192.168.1.0/24",)

    def test_host_name_rejected(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            parse_source_addresses("ct01.example.org")
        assert str(excinfo.value) == (
            "must contain IP addresses or networks such as 10.0.0.5 or 10.0.0.0/24, "
            "got 'ct01.example.org'"
        )

    @pytest.mark.parametrize(
        ("address", "allowed"),
        [
            pytest.param("10.0.0.5", True, id="exact"),
            pytest.param("10.0.1.200", True, id="in-network"),
            pytest.param("10.0.2.1", False, id="outside"),
            pytest.param("::ffff:10.0.0.5", True, id="ipv4-mapped"),
            pytest.param("::1", False, id="other-version"),
            pytest.param("not an address", False, id="invalid"),
        ],
    )
    def test_address_allowed(self, address: str, allowed: bool) -> None:
        assert address_allowed(address, ("10.0.0.5", "10.0.1.0/24")) is allowed


class TestCertificateSubject:
    @pytest.mark.parametrize(
        ("value", "parsed"),
        [
            pytest.param("CN=ct01,O=Hospital", "CN=ct01,O=Hospital", id="canonical"),
            pytest.param(" cn = ct01 , o=Hospital ", "CN=ct01,O=Hospital", id="spaces-case"),
            pytest.param("2.5.4.3=ct01", "CN=ct01", id="oid"),
            pytest.param("CN=a\\, b", "CN=a\\, b", id="escaped-comma"),
            pytest.param("", "", id="empty"),
        ],
    )
    def test_parsed(self, value: str, parsed: str) -> None:
        assert parse_certificate_subject(value) == parsed

    @pytest.mark.parametrize("value", ["ct01", "CN=", "XX=ct01", "CN=a,,O=b"])
    def test_invalid(self, value: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            parse_certificate_subject(value)
        assert str(excinfo.value) == (
            "must be a distinguished name in RFC 4514 form such as "
            f"'CN=ct01.example.org,O=Hospital', got {value!r}"
        )

    @pytest.mark.parametrize(
        ("required", "matches"),
        [
            pytest.param("CN=ct01.example.org", True, id="common-name"),
            pytest.param("O=Hospital,CN=CT01.Example.org", True, id="order-and-case"),
            pytest.param("CN=ct01.example.org,OU=Radiology", False, id="attribute-missing"),
            pytest.param("CN=ct02.example.org", False, id="other-name"),
            pytest.param("O=Hospital", True, id="organization-only"),
        ],
    )
    def test_matches(self, required: str, matches: bool) -> None:
        subject = name(CN="ct01.example.org", O="Hospital")

        assert subject_matches(parse_certificate_subject(required), subject) is matches
