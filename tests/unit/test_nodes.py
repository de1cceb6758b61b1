"""Remote nodes: validation, the configuration file tables and the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from dicomvault.index.database import MIGRATIONS_DIR, migrate
from dicomvault.index.nodes import NodeExistsError, NodeNotFoundError, NodeRegistry
from dicomvault.nodes import RemoteNode, make_node, nodes_from_config
from dicomvault.permissions import ALL_PERMISSIONS, Permission


class TestMakeNode:
    def test_valid_node(self) -> None:
        node = make_node(" STORESCP ", "127.0.0.1", "11113", "peer", True)

        assert node == RemoteNode("STORESCP", "127.0.0.1", 11113, "peer", True)

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            (
                ("", "h", 1),
                "an AE title must be 1 to 16 printable ASCII characters without backslash, got ''",
            ),
            (
                ("A" * 17, "h", 1),
                "an AE title must be 1 to 16 printable ASCII characters "
                f"without backslash, got '{'A' * 17}'",
            ),
            (("AE", "bad host", 1), "'host' must be a host name or IP address, got 'bad host'"),
            (("AE", "h", "abc"), "'port' must be an integer from 1 to 65535, got 'abc'"),
            (("AE", "h", 0), "'port' must be an integer from 1 to 65535, got 0"),
            (("AE", "h", True), "'port' must be an integer from 1 to 65535, got True"),
        ],
        ids=["empty-ae", "long-ae", "host-with-space", "port-text", "port-zero", "port-bool"],
    )
    def test_invalid_field(self, fields: tuple[object, ...], message: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            make_node(*fields)  # type: ignore[arg-type]
        assert str(excinfo.value) == message


class TestNodeTLSFiles:
    def test_files_made_absolute(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        node = make_node("PACS", "h", 104, "", True, "ca.pem", "c.pem", "k.pem")

        assert node.tls_ca_file == str(tmp_path / "ca.pem")
        assert node.tls_cert_file == str(tmp_path / "c.pem")
        assert node.tls_key_file == str(tmp_path / "k.pem")

    def test_files_need_tls(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            make_node("PACS", "h", 104, "", False, "/ca.pem")
        assert str(excinfo.value) == "'tls_ca_file' needs 'tls' set to true"

    def test_certificate_needs_key(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            make_node("PACS", "h", 104, "", True, "", "/c.pem")
        assert str(excinfo.value) == (
            "'tls_cert_file' and 'tls_key_file' go together: give the client certificate "
            "with its private key, or neither"
        )

    def test_path_must_be_text(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            make_node("PACS", "h", 104, "", True, 5)
        assert str(excinfo.value) == "'tls_ca_file' must be a path as a string, got 5"

    def test_read_from_config_table(self) -> None:
        (node,) = nodes_from_config(
            {"PACS": {"host": "h", "port": 104, "tls": True, "tls_ca_file": "/etc/ca.pem"}}
        )

        assert node.tls_ca_file == "/etc/ca.pem"
        assert node.describe_tls() == ", TLS"

    def test_describe_client_certificate(self) -> None:
        node = make_node("PACS", "h", 104, "", True, "", "/c.pem", "/k.pem")

        assert node.describe_tls() == ", TLS with client certificate"


class TestNodeAccess:
    def test_default_allows_everything(self) -> None:
        node = make_node("CT01", "10.0.0.5", 104)

        assert node.permissions == ALL_PERMISSIONS
        assert node.source_addresses == ()
        assert node.tls_client_subject == ""
        assert not node.is_restricted

    def test_fields_parsed(self) -> None:
        node = make_node(
            "CT01",
            "10.0.0.5",
            104,
            permissions="query,store",
            source_addresses="10.0.0.5, 10.0.1.7/24",
            tls_client_subject="cn=ct01, O=Hospital",
        )

        assert node.permissions == frozenset({Permission.STORE, Permission.QUERY})
        assert node.source_addresses == ("10.0.0.5", "10.0.1.0/24")
        assert node.tls_client_subject == "CN=ct01,O=Hospital"
        assert node.is_restricted
        assert node.describe_access() == (
            "permissions: store,query; source addresses: 10.0.0.5, 10.0.1.0/24; "
            "TLS client subject: CN=ct01,O=Hospital"
        )

    def test_no_permission(self) -> None:
        node = make_node("CT01", "10.0.0.5", 104, permissions=[])

        assert node.permissions == frozenset()
        assert node.describe_access() == "permissions: none"

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            (
                {"permissions": "store,echo"},
                "'permissions' must contain only store, query, retrieve, got 'echo'; "
                "C-ECHO is always allowed",
            ),
            (
                {"permissions": ""},
                "'permissions' must be 'all', 'none' or permissions separated by commas "
                "(store, query, retrieve), got ''",
            ),
            (
                {"source_addresses": ["ct01.example.org"]},
                "'source_addresses' must contain IP addresses or networks such as 10.0.0.5 "
                "or 10.0.0.0/24, got 'ct01.example.org'",
            ),
            (
                {"tls_client_subject": "ct01"},
                "'tls_client_subject' must be a distinguished name in RFC 4514 form such as "
                "'CN=ct01.example.org,O=Hospital', got 'ct01'",
            ),
        ],
        ids=["echo-permission", "empty-permissions", "host-name-address", "subject-without-type"],
    )
    def test_invalid_field(self, fields: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            make_node("CT01", "10.0.0.5", 104, **fields)  # type: ignore[arg-type]
        assert str(excinfo.value) == message


class TestNodesFromConfig:
    def test_tables_become_nodes(self) -> None:
        nodes = nodes_from_config(
            {
                "PACS2": {"host": "pacs2.example.org", "port": 104, "description": "backup"},
                "VIEWER": {"host": "127.0.0.1", "port": 11113, "tls": True},
            }
        )

        assert nodes == (
            RemoteNode("PACS2", "pacs2.example.org", 104, "backup", False),
            RemoteNode("VIEWER", "127.0.0.1", 11113, "", True),
        )

    def test_missing_port(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            nodes_from_config({"PACS2": {"host": "h"}})
        assert str(excinfo.value) == "[nodes.PACS2] needs both 'host' and 'port'"

    def test_unknown_key(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            nodes_from_config({"PACS2": {"host": "h", "port": 1, "aet": "X"}})
        assert str(excinfo.value) == (
            "[nodes.PACS2] has unknown keys aet; known keys: description, host, permissions, "
            "port, source_addresses, tls, tls_ca_file, tls_cert_file, tls_client_subject, "
            "tls_key_file"
        )

    def test_invalid_port_named(self) -> None:
        with pytest.raises(ValueError) as excinfo:
            nodes_from_config({"PACS2": {"host": "h", "port": 99999}})
        assert str(excinfo.value) == (
            "[nodes.PACS2]: 'port' must be an integer from 1 to 65535, got 99999"
        )


class TestNodeRegistry:
    def test_add_then_list(self, migrated_engine: Engine) -> None:
        registry = NodeRegistry(migrated_engine)
        registry.add(RemoteNode("B", "127.0.0.1", 2))
        registry.add(RemoteNode("A", "127.0.0.1", 1, "first", True))

        assert registry.list() == [
            RemoteNode("A", "127.0.0.1", 1, "first", True),
            RemoteNode("B", "127.0.0.1", 2),
        ]

    def test_duplicate_rejected(self, migrated_engine: Engine) -> None:
        registry = NodeRegistry(migrated_engine)
        registry.add(RemoteNode("A", "127.0.0.1", 1))

        with pytest.raises(NodeExistsError):
            registry.add(RemoteNode("A", "127.0.0.1", 2))
        assert registry.get("A") == RemoteNode("A", "127.0.0.1", 1)

    def test_replace_updates(self, migrated_engine: Engine) -> None:
        registry = NodeRegistry(migrated_engine)
        registry.add(RemoteNode("A", "127.0.0.1", 1))
        registry.add(RemoteNode("A", "10.0.0.5", 104, "moved"), replace=True)

        assert registry.get("A") == RemoteNode("A", "10.0.0.5", 104, "moved")

    def test_configured_nodes_seeded(self, migrated_engine: Engine) -> None:
        registry = NodeRegistry(migrated_engine)
        registry.add(RemoteNode("A", "127.0.0.1", 1))
        registry.add_all([RemoteNode("A", "127.0.0.1", 5), RemoteNode("C", "127.0.0.1", 3)])

        assert [node.port for node in registry.list()] == [5, 3]

    def test_tls_files_kept(self, migrated_engine: Engine) -> None:
        registry = NodeRegistry(migrated_engine)
        node = RemoteNode("A", "127.0.0.1", 1, "", True, "/ca.pem", "/c.pem", "/k.pem")
        registry.add(node)

        assert registry.get("A") == node

    def test_access_kept(self, migrated_engine: Engine) -> None:
        registry = NodeRegistry(migrated_engine)
        node = make_node(
            "CT01",
            "10.0.0.5",
            104,
            permissions="store",
            source_addresses="10.0.0.5,10.0.1.0/24",
            tls_client_subject="CN=ct01",
        )
        registry.add(node)

        assert registry.get("CT01") == node

    def test_no_permission_kept(self, migrated_engine: Engine) -> None:
        registry = NodeRegistry(migrated_engine)
        registry.add(RemoteNode("ECHOONLY", "127.0.0.1", 1, permissions=frozenset()))

        stored = registry.get("ECHOONLY")

        assert stored is not None
        assert stored.permissions == frozenset()

    def test_remove(self, migrated_engine: Engine) -> None:
        registry = NodeRegistry(migrated_engine)
        registry.add(RemoteNode("A", "127.0.0.1", 1))
        registry.remove("A")

        assert registry.get("A") is None
        with pytest.raises(NodeNotFoundError):
            registry.remove("A")


class TestUpgrade:
    def test_existing_node_keeps_every_permission(self, index_engine: Engine) -> None:
        # A node registered before revision 0008 may go on using every service.
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with index_engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0007")
            connection.execute(
                text(
                    "INSERT INTO nodes (ae_title, host, port, description, tls, updated_at) "
                    "VALUES ('OLD', '10.0.0.5', 104, '', false, CURRENT_TIMESTAMP)"
                )
            )

        migrate(index_engine)

        assert NodeRegistry(index_engine).get("OLD") == RemoteNode("OLD", "10.0.0.5", 104)
