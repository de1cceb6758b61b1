"""Access decisions: registered nodes, pins, and the unknown callers policy."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from dicomvault.access import Grant, Rejection, decide
from dicomvault.nodes import make_node
from dicomvault.permissions import ALL_PERMISSIONS, Permission

ADDRESS = "10.0.0.5"
CERTIFICATE = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hospital"),
        x509.NameAttribute(NameOID.COMMON_NAME, "ct01.example.org"),
    ]
)


class TestRegisteredNode:
    def test_own_permissions(self) -> None:
        node = make_node("CT01", ADDRESS, 104, permissions="store")

        decision = decide("CT01", ADDRESS, node, "reject")

        assert decision == Grant("CT01", frozenset({Permission.STORE}), registered=True)
        assert decision.allows(Permission.STORE)
        assert not decision.allows(Permission.QUERY)

    def test_unknown_callers_policy_ignored(self) -> None:
        node = make_node("CT01", ADDRESS, 104, permissions="none")

        decision = decide("CT01", ADDRESS, node, "accept")

        assert decision == Grant("CT01", frozenset(), registered=True)

    def test_source_address_matched(self) -> None:
        node = make_node("CT01", ADDRESS, 104, source_addresses="10.0.0.0/24")

        assert isinstance(decide("CT01", "10.0.0.77", node, "accept"), Grant)

    def test_other_source_address_rejected(self) -> None:
        node = make_node("CT01", ADDRESS, 104, source_addresses="10.0.0.5,10.0.9.0/24")

        decision = decide("CT01", "192.168.1.9", node, "accept")

        assert decision == Rejection(
            "CT01",
            "CT01 called from 192.168.1.9, which is not among the node's source addresses "
            "(10.0.0.5, 10.0.9.0/24)",
        )

    def test_certificate_subject_matched(self) -> None:
        node = make_node("CT01", ADDRESS, 104, tls_client_subject="CN=ct01.example.org")

        decision = decide("CT01", ADDRESS, node, "reject", CERTIFICATE)

        assert decision == Grant("CT01", ALL_PERMISSIONS, registered=True)

    def test_other_certificate_subject_rejected(self) -> None:
        node = make_node("CT01", ADDRESS, 104, tls_client_subject="CN=mr01.example.org")

        decision = decide("CT01", ADDRESS, node, "accept", CERTIFICATE)

        assert decision == Rejection(
            "CT01",
            "CT01 presented a TLS client certificate with subject "
            "CN=ct01.example.org,O=Hospital, which does not contain the node's subject "
            "CN=mr01.example.org",
        )

    def test_missing_certificate_rejected(self) -> None:
        node = make_node("CT01", ADDRESS, 104, tls_client_subject="CN=ct01.example.org")

        decision = decide("CT01", ADDRESS, node, "accept", None)

        assert decision == Rejection(
            "CT01",
            "CT01 must present a TLS client certificate with subject CN=ct01.example.org, "
            "but the association has no client certificate",
        )


class TestUnknownCaller:
    @pytest.mark.parametrize(
        ("policy", "permissions"),
        [
            pytest.param("accept", ALL_PERMISSIONS, id="accept"),
            pytest.param("echo", frozenset(), id="echo"),
            pytest.param("store", frozenset({Permission.STORE}), id="store"),
        ],
    )
    def test_admitted(self, policy: str, permissions: frozenset[Permission]) -> None:
        decision = decide("STORESCU", ADDRESS, None, policy)

        assert decision == Grant("STORESCU", permissions, registered=False)

    def test_rejected(self) -> None:
        decision = decide("STORESCU", ADDRESS, None, "reject")

        assert decision == Rejection(
            "STORESCU",
            "calling AE title STORESCU is not a registered node, "
            "and dimse.unknown_callers is reject",
        )

    def test_described_for_logs(self) -> None:
        decision = decide("STORESCU", ADDRESS, None, "store,query")

        assert isinstance(decision, Grant)
        assert decision.describe() == "unknown caller, permissions: store,query"
