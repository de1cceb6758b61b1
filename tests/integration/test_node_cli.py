"""`dicomvault node`: register, list, remove and echo remote nodes; seeding from the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.network import LOOPBACK, free_port
from tests.support.server import ServerFactory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def index_backend() -> str:
    """The node registry runs on both back-ends in tests/unit/test_nodes.py; the command
    line is the same on each.
    """
    return "sqlite"


def node_args(data_dir: Path, index_url: str) -> list[str]:
    args = ["--data-dir", str(data_dir)]
    return args + (["--index-url", index_url] if index_url else [])


def test_add_list_remove(tmp_path: Path, index_url: str) -> None:
    where = node_args(tmp_path / "data", index_url)

    added = run_cli(
        [
            "node",
            "add",
            "STORESCP",
            "--host",
            LOOPBACK,
            "--port",
            "11113",
            "--description",
            "test peer",
            *where,
        ],
        tmp_path,
    )
    listed = run_cli(["node", "list", *where], tmp_path)
    removed = run_cli(["node", "remove", "STORESCP", *where], tmp_path)
    listed_after = run_cli(["node", "list", *where], tmp_path)

    assert added.returncode == 0, added.describe()
    assert added.output.strip() == "Registered STORESCP @ 127.0.0.1:11113"
    assert "STORESCP  127.0.0.1  11113  no   store,query,retrieve  test peer" in listed.output, (
        listed.describe()
    )
    assert removed.returncode == 0, removed.describe()
    assert listed_after.output.startswith("No nodes registered"), listed_after.describe()


def test_access_listed_and_changed(tmp_path: Path) -> None:
    where = ["--data-dir", str(tmp_path / "data")]
    added = run_cli(
        [
            "node",
            "add",
            "CT01",
            "--host",
            "10.0.0.5",
            "--port",
            "104",
            "--allow",
            "store",
            "--source-address",
            "10.0.0.5",
            "--source-address",
            "10.0.1.0/24",
            "--tls-client-subject",
            "CN=ct01.example.org",
            *where,
        ],
        tmp_path,
    )
    allowed = run_cli(["node", "allow", "CT01", "store,query", *where], tmp_path)
    listed = run_cli(["node", "list", *where], tmp_path)
    missing = run_cli(["node", "allow", "NOBODY", "all", *where], tmp_path)

    assert added.returncode == 0, added.describe()
    assert added.output.strip() == (
        "Registered CT01 @ 10.0.0.5:104; permissions: store; source addresses: "
        "10.0.0.5, 10.0.1.0/24; TLS client subject: CN=ct01.example.org"
    )
    assert allowed.output.strip() == "CT01 may use: store,query (and C-ECHO)", allowed.describe()
    assert listed.output.splitlines()[1:] == [
        "CT01      10.0.0.5  104   no   store,query",
        "  pinned to source addresses 10.0.0.5, 10.0.1.0/24; TLS client subject "
        "CN=ct01.example.org",
    ], listed.describe()
    assert missing.returncode == 2
    assert missing.output.strip() == (
        "Error: No node with AE title 'NOBODY'; 'dicomvault node list' shows them"
    )


def test_duplicate_add_rejected(tmp_path: Path, index_url: str) -> None:
    where = node_args(tmp_path / "data", index_url)
    run_cli(["node", "add", "PEER", "--host", LOOPBACK, "--port", "1", *where], tmp_path)

    again = run_cli(["node", "add", "PEER", "--host", LOOPBACK, "--port", "2", *where], tmp_path)

    assert again.returncode == 2
    assert again.output.strip() == (
        "Error: A node with AE title 'PEER' is already registered; use --replace to update it"
    )


def test_invalid_port_rejected(tmp_path: Path) -> None:
    run = run_cli(
        [
            "node",
            "add",
            "PEER",
            "--host",
            LOOPBACK,
            "--port",
            "70000",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        tmp_path,
    )

    assert run.returncode == 2
    assert run.output.strip() == (
        "Error: Invalid node 'PEER': 'port' must be an integer from 1 to 65535, got 70000"
    )
    assert "Traceback" not in run.output


def test_echo_reaches_archive(tmp_path: Path, start_server: ServerFactory) -> None:
    peer = start_server(ae_title="PEERVAULT")
    where = ["--data-dir", str(tmp_path / "data")]
    run_cli(
        ["node", "add", "PEERVAULT", "--host", LOOPBACK, "--port", str(peer.port), *where], tmp_path
    )

    run = run_cli(["node", "echo", "PEERVAULT", *where], tmp_path)

    assert run.returncode == 0, run.describe()
    assert run.output.startswith(f"C-ECHO to PEERVAULT @ 127.0.0.1:{peer.port} succeeded in ")


def test_echo_refused_port(tmp_path: Path) -> None:
    where = ["--data-dir", str(tmp_path / "data")]
    port = free_port()
    run_cli(["node", "add", "NOBODY", "--host", LOOPBACK, "--port", str(port), *where], tmp_path)

    run = run_cli(["node", "echo", "NOBODY", "--timeout", "5", *where], tmp_path)

    assert run.returncode == 1
    assert f"C-ECHO to NOBODY @ 127.0.0.1:{port} failed after" in run.output, run.describe()
    assert "no association: the connection was refused, timed out or aborted" in run.output


def test_serve_seeds_configured_nodes(tmp_path: Path, start_server: ServerFactory) -> None:
    server = start_server(
        config='[nodes.PACS2]\nhost = "127.0.0.1"\nport = 4242\ndescription = "from the file"\n'
    )
    server.stop()

    args = ["node", "list", "--data-dir", str(server.data_dir)]
    if server.index_url:
        args += ["--index-url", server.index_url]
    listed = run_cli(args, tmp_path)

    assert "PACS2     127.0.0.1  4242  no   store,query,retrieve  from the file" in listed.output, (
        listed.describe()
    )
