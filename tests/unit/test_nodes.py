"""Remote nodes: validation, the configuration file tables and the registry."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from dicomvault.index.nodes import NodeExistsError, NodeNotFoundError, NodeRegistry
from dicomvault.nodes import RemoteNode, make_node, nodes_from_config


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
            "[nodes.PACS2] has unknown keys aet; known keys: description, host, port, tls"
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

    def test_remove(self, migrated_engine: Engine) -> None:
        registry = NodeRegistry(migrated_engine)
        registry.add(RemoteNode("A", "127.0.0.1", 1))
        registry.remove("A")

        assert registry.get("A") is None
        with pytest.raises(NodeNotFoundError):
            registry.remove("A")
