"""The ``dicomvault`` command line: serve, config, node."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from dicomvault import __version__
from dicomvault.archive import Archive
from dicomvault.config import ConfigError, Settings, describe_settings, load_settings
from dicomvault.dimse.echo_scu import echo
from dicomvault.dimse.server import DimseServer
from dicomvault.events import log_store_events
from dicomvault.index.database import DatabaseError, open_index_engine
from dicomvault.index.nodes import NodeExistsError, NodeNotFoundError, NodeRegistry
from dicomvault.logging_setup import configure_logging
from dicomvault.nodes import make_node
from dicomvault.storage.filesystem import FilesystemStorage
from dicomvault.storage.lock import DataDirInUseError, lock_data_dir

LOGGER = logging.getLogger(__name__)

app = typer.Typer(
    name="dicomvault",
    help="dicomvault: a DICOM archive with DIMSE services and an SQL index.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: rich markup would swallow the [section.key] setting names.
    rich_markup_mode=None,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML configuration file (default: $DICOMVAULT_CONFIG)."),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def _settings(config: Path | None, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _common_overrides(
    data_dir: str | None,
    ae_title: str | None,
    port: str | None,
    host: str | None,
    index_url: str | None,
) -> dict[str, Any]:
    """Map the options that serve and config share to their settings."""
    return {
        "storage.data_dir": data_dir,
        "dimse.ae_title": ae_title,
        "dimse.port": port,
        "dimse.host": host,
        "index.url": index_url,
    }


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"dicomvault {__version__}")
        raise typer.Exit(0)


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: Annotated[
        str | None,
        typer.Option(
            "--data-dir",
            help="Directory of the embedded index and stored files [storage.data_dir].",
        ),
    ] = None,
    ae_title: Annotated[
        str | None, typer.Option("--ae-title", help="AE title of the archive [dimse.ae_title].")
    ] = None,
    port: Annotated[
        str | None, typer.Option("--port", help="TCP port of the DIMSE service [dimse.port].")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="IP address to listen on [dimse.host].")
    ] = None,
    index_url: Annotated[
        str | None,
        typer.Option(
            "--index-url", help="Database URL, e.g. postgresql://user:pw@host/db [index.url]."
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Log at DEBUG level [logging.level].")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="Log line format: text or json [logging.format]."),
    ] = None,
) -> None:
    """Start the archive: DIMSE C-ECHO, C-STORE and C-FIND SCPs.

    Runs until SIGTERM or Ctrl-C, then finishes the associations in flight.
    """
    settings = _settings(
        config,
        {
            **_common_overrides(data_dir, ae_title, port, host, index_url),
            "logging.level": "DEBUG" if verbose else None,
            "logging.format": log_format,
        },
    )
    configure_logging(settings.logging.level, settings.logging.format)
    raise typer.Exit(run_server(settings))


def run_server(settings: Settings) -> int:
    """Open storage and index, serve until a stop signal, and return the exit code."""
    # Handlers go in first, so a stop signal during start-up also ends cleanly.
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        LOGGER.info("Received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_data_dir(data_dir)
        storage = FilesystemStorage(data_dir / "storage")
    except DataDirInUseError as exc:
        LOGGER.error("%s", exc)
        return 1
    except OSError as exc:
        LOGGER.error("Cannot use data directory %s: %s", data_dir, exc.strerror or exc)
        return 1
    # Safe only because the lock guarantees no other process writes here.
    storage.remove_temporary_files()

    try:
        engine = open_index_engine(settings.index_url)
    except DatabaseError as exc:
        LOGGER.error("%s", exc)
        return 1

    try:
        NodeRegistry(engine).add_all(settings.nodes)
    except DatabaseError as exc:
        LOGGER.error("Cannot register the configured nodes: %s", exc)
        engine.dispose()
        return 1

    archive = Archive(settings, engine, storage)
    log_store_events(archive.events)
    server = DimseServer(archive)
    try:
        server.start()
    except OSError as exc:
        LOGGER.error(
            "Cannot listen on %s:%d: %s; choose another port with --port",
            settings.dimse.host,
            settings.dimse.port,
            exc.strerror or exc,
        )
        engine.dispose()
        return 1
    LOGGER.info(
        "dicomvault %s serving; data in %s, index %s, storage %s",
        __version__,
        data_dir,
        engine.url.render_as_string(hide_password=True),
        storage.describe(),
    )

    while not stop.wait(1.0):
        pass
    server.stop()
    engine.dispose()
    lock.close()
    return 0


@app.command("config")
def show_config(
    config: ConfigOption = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="As for serve.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="As for serve.")] = None,
    port: Annotated[str | None, typer.Option("--port", help="As for serve.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="As for serve.")] = None,
    index_url: Annotated[str | None, typer.Option("--index-url", help="As for serve.")] = None,
) -> None:
    """Print the effective settings and where each value comes from (secrets masked).

    Takes the options of serve, to show what serve would use with them.
    """
    settings = _settings(config, _common_overrides(data_dir, ae_title, port, host, index_url))
    rows = describe_settings(settings)
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        typer.echo(f"{name.ljust(width)} = {value}    # {source}")


node_app = typer.Typer(
    help="Manage remote DICOM nodes (C-MOVE destinations) kept in the index database.",
    no_args_is_help=True,
)
app.add_typer(node_app, name="node")

DataDirOption = Annotated[
    str | None, typer.Option("--data-dir", help="Data directory [storage.data_dir].")
]
IndexUrlOption = Annotated[
    str | None, typer.Option("--index-url", help="Database URL [index.url].")
]


def _node_registry(
    config: Path | None, data_dir: str | None, index_url: str | None
) -> tuple[Settings, NodeRegistry]:
    settings = _settings(config, {"storage.data_dir": data_dir, "index.url": index_url})
    # The command prints its own result; only warnings go to the log, and
    # pynetdicom's connection errors repeat what the command prints.
    configure_logging("WARNING", settings.logging.format)
    logging.getLogger("pynetdicom").setLevel("CRITICAL")
    try:
        engine = open_index_engine(settings.index_url)
    except DatabaseError as exc:
        raise _fail(str(exc), code=1) from None
    return settings, NodeRegistry(engine)


@node_app.command("add")
def node_add(
    ae_title: Annotated[str, typer.Argument(help="AE title of the remote node.")],
    host: Annotated[str, typer.Option("--host", help="Host name or IP address of the node.")],
    port: Annotated[str, typer.Option("--port", help="TCP port of the node's DIMSE service.")],
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    tls: Annotated[bool, typer.Option("--tls", help="The node requires DICOM over TLS.")] = False,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Update the node if the AE title is already registered."),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Register a remote node by AE title, host and port."""
    try:
        node = make_node(ae_title, host, port, description, tls)
    except ValueError as exc:
        raise _fail(f"Invalid node {ae_title!r}: {exc}") from None
    _, registry = _node_registry(config, data_dir, index_url)
    try:
        registry.add(node, replace=replace)
    except NodeExistsError:
        raise _fail(
            f"A node with AE title {node.ae_title!r} is already registered; "
            "use --replace to update it"
        ) from None
    typer.echo(f"Registered {node.describe()}")


@node_app.command("list")
def node_list(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """List the registered nodes."""
    _, registry = _node_registry(config, data_dir, index_url)
    nodes = registry.list()
    if not nodes:
        typer.echo("No nodes registered; add one with 'dicomvault node add AE --host H --port P'")
        return
    rows = [("AE title", "host", "port", "TLS", "description")] + [
        (n.ae_title, n.host, str(n.port), "yes" if n.tls else "no", n.description) for n in nodes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
        typer.echo("  ".join(cells).rstrip())


@node_app.command("remove")
def node_remove(
    ae_title: Annotated[str, typer.Argument(help="AE title of the node to remove.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Remove a registered node."""
    _, registry = _node_registry(config, data_dir, index_url)
    try:
        registry.remove(ae_title)
    except NodeNotFoundError:
        raise _fail(
            f"No node with AE title {ae_title!r}; 'dicomvault node list' shows them"
        ) from None
    typer.echo(f"Removed {ae_title}")


@node_app.command("echo")
def node_echo(
    ae_title: Annotated[str, typer.Argument(help="AE title of a registered node.")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 10.0,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Send a C-ECHO to a registered node and print the result and round-trip time."""
    settings, registry = _node_registry(config, data_dir, index_url)
    node = registry.get(ae_title)
    if node is None:
        raise _fail(f"No node with AE title {ae_title!r}; 'dicomvault node list' shows them")
    result = echo(node, settings.dimse.ae_title, timeout)
    if not result.success:
        raise _fail(
            f"C-ECHO to {node.describe()} failed after {result.seconds * 1000:.0f} ms: "
            f"{result.message}",
            code=1,
        )
    typer.echo(f"C-ECHO to {node.describe()} succeeded in {result.seconds * 1000:.1f} ms")


def main() -> None:
    """Run the command line."""
    app()
