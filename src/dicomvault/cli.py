"""The ``dicomvault`` command line: serve, config, node, user, index, remove, tasks, keys."""

from __future__ import annotations

import dataclasses
import gc
import getpass
import logging
import signal
import ssl
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dicomvault import __version__
from dicomvault.audit import (
    ActorKind,
    AuditAction,
    AuditEvent,
    AuditEventType,
    AuditOutcome,
    AuditTrail,
)
from dicomvault.cluster.leases import LeaseStore
from dicomvault.config import (
    SAVED_SOURCE,
    ConfigError,
    Settings,
    apply_saved_settings,
    describe_settings,
    load_settings,
)
from dicomvault.events import log_store_events
from dicomvault.index.database import DatabaseError, open_index_engine
from dicomvault.index.nodes import NodeExistsError, NodeNotFoundError, NodeRegistry
from dicomvault.index.saved_settings import SavedSettings
from dicomvault.index.tasks import TaskNotFoundError, TaskStore
from dicomvault.index.users import UserExistsError, UserNotFoundError, UserStore
from dicomvault.ingest.bucket import is_bucket_url
from dicomvault.ingest.bucket_run import run_bucket_task
from dicomvault.ingest.indexer import IngestContext
from dicomvault.ingest.jobs import Mode
from dicomvault.ingest.manager import TaskManager
from dicomvault.ingest.pool import ReaderPool
from dicomvault.ingest.progress import ProgressBar, summarize
from dicomvault.ingest.roots import PathNotAllowedError, resolve_bucket, resolve_folder
from dicomvault.ingest.runner import run_index_task
from dicomvault.ingest.watch import FolderWatcher
from dicomvault.keys_cli import keys_app
from dicomvault.logging_setup import configure_logging
from dicomvault.nodes import RemoteNode, make_node
from dicomvault.permissions import format_permissions, parse_permissions
from dicomvault.recent_logs import install_recent_log_handler
from dicomvault.recovery import journal_directory, remove_unindexed_writes
from dicomvault.shutdown import Listener, StopSignals, drain
from dicomvault.storage.journal import WriteJournal
from dicomvault.storage.lock import DataDirInUseError, lock_data_dir
from dicomvault.storage.setup import StorageSetupError, open_storage
from dicomvault.users import InvalidUserError, check_user_name, parse_role

if TYPE_CHECKING:
    from dicomvault.archive import Archive
    from dicomvault.dev_certs import DevCertificates
    from dicomvault.dimse.server import DimseServer
    from dicomvault.metrics import ArchiveMetrics
    from dicomvault.storage.base import Storage

LOGGER = logging.getLogger(__name__)

# A stop waits this long for indexing tasks and watched folders to finish their batch.
INGEST_STOP_SECONDS = 15.0

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

app.add_typer(keys_app, name="keys")


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
    http_port: str | None = None,
    tls_port: str | None = None,
) -> dict[str, Any]:
    """Map the options that serve and config share to their settings."""
    return {
        "storage.data_dir": data_dir,
        "dimse.ae_title": ae_title,
        "dimse.port": port,
        "dimse.host": host,
        "index.url": index_url,
        "http.port": http_port,
        "dimse.tls_port": tls_port,
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
        str | None,
        typer.Option(
            "--port", help="TCP port of the DIMSE service without TLS; 0: none [dimse.port]."
        ),
    ] = None,
    tls_port: Annotated[
        str | None,
        typer.Option(
            "--tls-port",
            help="TCP port of the DIMSE service over TLS; 0: none [dimse.tls_port]. "
            "Needs dimse.tls_cert_file and dimse.tls_key_file.",
        ),
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
    http_port: Annotated[
        str | None,
        typer.Option("--http-port", help="TCP port of the HTTP API; 0 turns it off [http.port]."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Log at DEBUG level [logging.level].")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="Log line format: text or json [logging.format]."),
    ] = None,
) -> None:
    """Start the archive: the DIMSE services, the HTTP API and the watched folders.

    Runs until SIGTERM or Ctrl-C, then finishes the associations in flight.
    """
    settings = _settings(
        config,
        {
            **_common_overrides(data_dir, ae_title, port, host, index_url, http_port, tls_port),
            "logging.level": "DEBUG" if verbose else None,
            "logging.format": log_format,
        },
    )
    configure_logging(settings.logging.level, settings.logging.format)
    raise typer.Exit(run_server(settings))


def _with_saved_settings(configured: Settings, saved: SavedSettings) -> Settings | None:
    """Return the settings with the saved ones applied, or None after logging an error."""
    try:
        values = saved.load()
        settings = apply_saved_settings(configured, values)
    except (ConfigError, SQLAlchemyError) as exc:
        LOGGER.error("%s; remove the saved settings with 'dicomvault config --reset-saved'", exc)
        return None
    for name, value in sorted(values.items()):
        LOGGER.info(
            "Using %s = %r saved in the %s, over the value from %s",
            name,
            value,
            SAVED_SOURCE,
            configured.sources.get(name, "default"),
        )
    return settings


def run_server(configured: Settings) -> int:
    """Open storage and index, serve until a stop signal, and return the exit code.

    Settings saved through the HTTP API take precedence over ``configured``.
    """
    # Imported here: the servers' modules (pydicom, pynetdicom, FastAPI) take
    # about a second to import, which every other command would otherwise pay.
    from dicomvault.archive import Archive
    from dicomvault.dimse.server import DimseServer, ListenError
    from dicomvault.dimse.service import DimseService, SavedSettingsFollower
    from dicomvault.readiness import ReadinessChecker
    from dicomvault.tls import TLSFileError
    from dicomvault.web.app import create_app
    from dicomvault.web.server import HttpServer

    recent_logs = install_recent_log_handler(configured.logging.recent_events)

    # Handlers go in first, so a stop signal during start-up also ends cleanly.
    signals = StopSignals()
    signals.install()

    # Certificates and keys are checked before anything opens, so that a
    # wrong path stops start-up with one message. TLS settings cannot be
    # saved through the HTTP API, so the configured ones apply.
    try:
        dimse_tls, http_tls = _tls_contexts(configured)
    except TLSFileError as exc:
        LOGGER.error("%s", exc)
        return 1

    data_dir = configured.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_data_dir(data_dir)
    except DataDirInUseError as exc:
        LOGGER.error("%s", exc)
        return 1
    except OSError as exc:
        LOGGER.error("Cannot use data directory %s: %s", data_dir, exc.strerror or exc)
        return 1
    # Storage and encryption settings cannot be saved through the HTTP API,
    # so the configured bucket and keys apply, checked before any port opens.
    try:
        storage = open_storage(configured, serving=True)
    except StorageSetupError as exc:
        LOGGER.error("%s", exc)
        lock.close()
        return 1
    # Safe only because the lock guarantees no other process writes here. S3
    # storage, which other servers may share, aborts only day-old uploads.
    storage.remove_temporary_files()

    try:
        engine = open_index_engine(configured.index_url)
    except DatabaseError as exc:
        LOGGER.error("%s", exc)
        return 1

    saved = SavedSettings(engine)
    settings = _with_saved_settings(configured, saved)
    if settings is None:
        engine.dispose()
        return 1

    try:
        NodeRegistry(engine).add_all(settings.nodes)
    except DatabaseError as exc:
        LOGGER.error("Cannot register the configured nodes: %s", exc)
        engine.dispose()
        return 1

    try:
        watched = [
            resolve_folder(path, settings.import_roots) for path in settings.ingest.watch_folders
        ]
    except PathNotAllowedError as exc:
        LOGGER.error("Cannot watch a folder of [ingest] watch_folders: %s", exc)
        engine.dispose()
        return 1

    _recover_unindexed_writes(data_dir, storage, engine)
    journal = WriteJournal(journal_directory(data_dir))
    archive = Archive(settings, engine, storage, journal=journal)
    log_store_events(archive.events)
    audit = AuditTrail(engine)
    audit.subscribe(archive.events)
    audit.start()
    server = DimseServer(archive, dimse_tls)
    try:
        server.start()
    except ListenError as exc:
        if exc.port == settings.dimse.tls_port:
            way_out = "choose another port with --tls-port"
        elif settings.sources["dimse.port"] == SAVED_SOURCE:
            way_out = (
                "the port was saved through the HTTP API; "
                "remove it with 'dicomvault config --reset-saved'"
            )
        else:
            way_out = "choose another port with --port"
        LOGGER.error("%s; %s", exc, way_out)
        audit.stop()
        engine.dispose()
        return 1

    dimse_service = DimseService(archive, configured, saved, server)
    manager = TaskManager(
        IngestContext(settings, engine, storage, ReaderPool(settings.ingest.workers))
    )
    manager.start()
    http = None
    if settings.http.port:
        app = create_app(
            manager,
            archive,
            dimse_service=dimse_service,
            recent_logs=recent_logs,
            readiness=ReadinessChecker(
                engine,
                storage,
                settings.server.readiness_timeout,
                draining=signals.stop_requested,
            ),
            metrics=_server_metrics(archive, server, manager, audit, signals),
        )
        http = HttpServer(
            app,
            settings.http.host,
            settings.http.port,
            ssl_context=http_tls,
            trusted_proxies=settings.http.trusted_proxies,
            shutdown_timeout=settings.server.drain_seconds,
            keep_alive_timeout=settings.http.keep_alive_timeout,
            read_timeout=settings.http.read_timeout,
        )
        try:
            http.start()
        except OSError as exc:
            LOGGER.error(
                "Cannot listen on %s:%d for HTTP: %s; choose another port with --http-port",
                settings.http.host,
                settings.http.port,
                exc.strerror or exc,
            )
            manager.stop(INGEST_STOP_SECONDS)
            server.stop()
            audit.stop()
            engine.dispose()
            return 1
    manager.watch(watched)
    LOGGER.info(
        "dicomvault %s serving; data in %s, index %s, storage %s",
        __version__,
        data_dir,
        engine.url.render_as_string(hide_password=True),
        storage.describe(),
    )
    if engine.dialect.name != "sqlite" and settings.storage.backend == "filesystem":
        # NOTE: the server cannot tell whether other servers share this index.
        LOGGER.warning(
            "The index is a database server but files are stored in %s: every server that "
            "shares this index must see the same folder (a shared file system), or use "
            'storage.backend = "s3"; otherwise instances stored or imported through one '
            "server cannot be retrieved through another",
            storage.location,
        )

    follower = SavedSettingsFollower(dimse_service, settings.server.settings_poll_interval)
    while not signals.stop_requested.wait(1.0):
        follower.poll()
        archive.resolve_unknown_writes()
    listeners: list[Listener] = [server] if http is None else [server, http]
    drain(settings.server, signals, listeners, lambda: manager.stop(INGEST_STOP_SECONDS))
    journal.close()
    audit.stop()
    engine.dispose()
    lock.close()
    return 0


def _recover_unindexed_writes(data_dir: Path, storage: Storage, engine: Engine) -> None:
    """Remove what a killed server wrote but never indexed; on failure, log and go on.

    The journals stay in place when recovery fails, so the next start-up tries again.
    """
    try:
        remove_unindexed_writes(data_dir, storage, engine)
    except (SQLAlchemyError, OSError) as exc:
        LOGGER.error(
            "Cannot remove the objects written but never indexed before the last stop: %s; "
            "the next start tries again, and 'dicomvault fsck --repair' reports and repairs them",
            exc,
        )


def _server_metrics(
    archive: Archive,
    server: DimseServer,
    manager: TaskManager,
    audit: AuditTrail,
    signals: StopSignals,
) -> ArchiveMetrics:
    """Create the metrics of this process, fed by its events, queues and log records."""
    from dicomvault.metrics import ArchiveMetrics, LogCounter, subscribe_metrics

    metrics = ArchiveMetrics()
    subscribe_metrics(metrics, archive.events)
    metrics.watch_open_associations(server.open_associations)
    metrics.watch_ingest_queue(manager.queued_tasks)
    metrics.watch_audit_queue(lambda: audit.queued)
    metrics.watch_draining(signals.stop_requested.is_set)
    logging.getLogger().addHandler(LogCounter(metrics.log_messages))
    return metrics


def _tls_contexts(settings: Settings) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """Build the TLS contexts of DIMSE and HTTPS, and check the files of configured nodes.

    Raises
    ------
    TLSFileError
        If a certificate, key or CA file is missing, unreadable or invalid.
    """
    from dicomvault.dimse.tls import dimse_server_context, node_client_context
    from dicomvault.tls import PemFile, server_context

    dimse_tls = dimse_server_context(settings.dimse) if settings.dimse.tls_port else None
    http_tls: ssl.SSLContext | None = None
    if settings.http.port and settings.http.tls_cert_file:
        http_tls = server_context(
            PemFile(settings.http.tls_cert_file, "http.tls_cert_file"),
            PemFile(settings.http.tls_key_file, "http.tls_key_file"),
        )
    for node in settings.nodes:
        if node.tls:
            node_client_context(node)
    return dimse_tls, http_tls


@app.command("config")
def show_config(
    config: ConfigOption = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="As for serve.")] = None,
    ae_title: Annotated[str | None, typer.Option("--ae-title", help="As for serve.")] = None,
    port: Annotated[str | None, typer.Option("--port", help="As for serve.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="As for serve.")] = None,
    index_url: Annotated[str | None, typer.Option("--index-url", help="As for serve.")] = None,
    http_port: Annotated[str | None, typer.Option("--http-port", help="As for serve.")] = None,
    tls_port: Annotated[str | None, typer.Option("--tls-port", help="As for serve.")] = None,
    reset_saved: Annotated[
        bool,
        typer.Option(
            "--reset-saved",
            help="First remove the settings saved through the HTTP API from the index database.",
        ),
    ] = False,
) -> None:
    """Print the effective settings and where each value comes from (secrets masked).

    Takes the options of serve, to show what serve would use with them.
    Settings saved through the HTTP API (the console) are read from the
    index database and take precedence over every other source.
    """
    settings = _settings(
        config, _common_overrides(data_dir, ae_title, port, host, index_url, http_port, tls_port)
    )
    saved = _open_saved_settings(settings, create=reset_saved)
    if saved is not None:
        try:
            if reset_saved:
                removed = saved.clear()
                typer.echo(f"# Removed {removed} settings saved in the {SAVED_SOURCE}")
            settings = apply_saved_settings(settings, saved.load())
        except ConfigError as exc:
            raise _fail(f"{exc}; remove them with --reset-saved", code=1) from None
        finally:
            saved.engine.dispose()
    rows = describe_settings(settings)
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        typer.echo(f"{name.ljust(width)} = {value}    # {source}")


def _open_saved_settings(settings: Settings, create: bool) -> SavedSettings | None:
    """Open the saved settings of the index; None if the SQLite index does not exist yet.

    Unless ``create`` is True, a missing SQLite file is not created, so that
    printing the settings leaves no files behind, and an index that cannot
    be opened is reported on stderr instead of stopping the command.
    """
    sqlite_file = settings.data_dir / "index.sqlite"
    if not settings.index.url and not create and not sqlite_file.exists():
        return None
    try:
        return SavedSettings(open_index_engine(settings.index_url))
    except DatabaseError as exc:
        if create:
            raise _fail(str(exc), code=1) from None
        typer.echo(f"# Settings saved through the HTTP API are not shown: {exc}", err=True)
        return None


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


NODE_KEY_OPTIONS = {
    "tls": "--tls",
    "tls_ca_file": "--tls-ca",
    "tls_cert_file": "--tls-cert",
    "tls_key_file": "--tls-key",
    "permissions": "--allow",
    "source_addresses": "--source-address",
    "tls_client_subject": "--tls-client-subject",
}


@node_app.command("add")
def node_add(
    ae_title: Annotated[str, typer.Argument(help="AE title of the remote node.")],
    host: Annotated[str, typer.Option("--host", help="Host name or IP address of the node.")],
    port: Annotated[str, typer.Option("--port", help="TCP port of the node's DIMSE service.")],
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    tls: Annotated[bool, typer.Option("--tls", help="The node requires DICOM over TLS.")] = False,
    tls_ca: Annotated[
        str,
        typer.Option(
            "--tls-ca",
            help="PEM file of the CA certificates the node's certificate must chain to "
            "(default: the system's trusted CAs). Needs --tls.",
        ),
    ] = "",
    tls_cert: Annotated[
        str,
        typer.Option(
            "--tls-cert",
            help="PEM file of the client certificate sent to the node (mutual TLS). "
            "Needs --tls and --tls-key.",
        ),
    ] = "",
    tls_key: Annotated[
        str,
        typer.Option("--tls-key", help="PEM file of the unencrypted private key of --tls-cert."),
    ] = "",
    allow: Annotated[
        str,
        typer.Option(
            "--allow",
            help="Services the node may use when it calls the archive: 'all', 'none' "
            "(C-ECHO only) or a comma-separated list of store (C-STORE), query (C-FIND) "
            "and retrieve (C-MOVE, C-GET).",
        ),
    ] = "all",
    source_address: Annotated[
        list[str] | None,
        typer.Option(
            "--source-address",
            help="IP address or network (CIDR) the node must call from; repeat for several. "
            "Default: any address.",
        ),
    ] = None,
    tls_client_subject: Annotated[
        str,
        typer.Option(
            "--tls-client-subject",
            help="RFC 4514 name, such as CN=ct01.example.org, that the subject of the node's "
            "TLS client certificate must contain when it calls. Default: not checked.",
        ),
    ] = "",
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Update the node if the AE title is already registered; every field, "
            "the permissions too, is set from this command.",
        ),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Register a remote node by AE title, host and port; its TLS files and what it may do."""
    from dicomvault.dimse.tls import node_client_context
    from dicomvault.tls import TLSFileError

    try:
        node = make_node(
            ae_title,
            host,
            port,
            description,
            tls,
            tls_ca,
            tls_cert,
            tls_key,
            permissions=allow,
            source_addresses=source_address or [],
            tls_client_subject=tls_client_subject,
        )
    except ValueError as exc:
        raise _fail(f"Invalid node {ae_title!r}: {_option_names(str(exc))}") from None
    if node.tls:
        try:
            node_client_context(node)
        except TLSFileError as exc:
            raise _fail(str(exc)) from None
    _, registry = _node_registry(config, data_dir, index_url)
    try:
        registry.add(node, replace=replace)
    except NodeExistsError:
        raise _fail(
            f"A node with AE title {node.ae_title!r} is already registered; "
            "use --replace to update it"
        ) from None
    action = AuditAction.UPDATE if replace else AuditAction.CREATE
    _audit_cli_change(
        registry.engine, action, f"Added node {node.describe()}; {node.describe_access()}"
    )
    access = f"; {node.describe_access()}" if node.is_restricted else ""
    typer.echo(f"Registered {node.describe()}{node.describe_tls()}{access}")


def _option_names(message: str) -> str:
    """Replace the configuration keys that make_node names with the options of node add."""
    for key, option in NODE_KEY_OPTIONS.items():
        message = message.replace(f"'{key}'", option)
    return message


@node_app.command("allow")
def node_allow(
    ae_title: Annotated[str, typer.Argument(help="AE title of a registered node.")],
    permissions: Annotated[
        str,
        typer.Argument(
            help="'all', 'none' (C-ECHO only) or a comma-separated list of store, query "
            "and retrieve."
        ),
    ],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Set what a registered node may do when it calls; its other fields stay.

    A running server applies the change to the node's next association.
    """
    try:
        granted = parse_permissions(permissions)
    except ValueError as exc:
        raise _fail(f"Invalid permissions {permissions!r}: {exc}") from None
    _, registry = _node_registry(config, data_dir, index_url)
    node = registry.get(ae_title)
    if node is None:
        raise _fail(f"No node with AE title {ae_title!r}; 'dicomvault node list' shows them")
    changed = dataclasses.replace(node, permissions=granted)
    registry.add(changed, replace=True)
    _audit_cli_change(
        registry.engine,
        AuditAction.UPDATE,
        f"Changed node {changed.describe()}; {changed.describe_access()}",
    )
    typer.echo(f"{changed.ae_title} may use: {format_permissions(granted)} (and C-ECHO)")


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
    rows = [("AE title", "host", "port", "TLS", "permissions", "description")] + [
        (
            n.ae_title,
            n.host,
            str(n.port),
            "yes" if n.tls else "no",
            format_permissions(n.permissions),
            n.description,
        )
        for n in nodes
    ]
    columns = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(columns)]
    pins = {n.ae_title: _describe_pins(n) for n in nodes}
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(columns)] + [row[columns]]
        typer.echo("  ".join(cells).rstrip())
        if pins.get(row[0]):
            typer.echo(f"  pinned to {pins[row[0]]}")


def _describe_pins(node: RemoteNode) -> str:
    """Return "source addresses 10.0.0.5; TLS client subject CN=x", or "" for an unpinned node."""
    parts = []
    if node.source_addresses:
        parts.append(f"source addresses {', '.join(node.source_addresses)}")
    if node.tls_client_subject:
        parts.append(f"TLS client subject {node.tls_client_subject}")
    return "; ".join(parts)


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
    _audit_cli_change(registry.engine, AuditAction.DELETE, f"Removed node {ae_title}")
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
    from dicomvault.dimse.echo_scu import echo  # pynetdicom, only for this command

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


# --- users of the HTTP API ------------------------------------------------------------------

user_app = typer.Typer(
    help="Manage the users of the HTTP API, kept in the index database.",
    no_args_is_help=True,
)
app.add_typer(user_app, name="user")

PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of standard input (for scripts).",
    ),
]


def _user_store(config: Path | None, data_dir: str | None, index_url: str | None) -> UserStore:
    settings = _settings(config, {"storage.data_dir": data_dir, "index.url": index_url})
    configure_logging("WARNING", settings.logging.format)
    try:
        engine = open_index_engine(settings.index_url)
    except DatabaseError as exc:
        raise _fail(str(exc), code=1) from None
    return UserStore(engine)


def _audit_cli_change(engine: Engine, action: AuditAction, description: str) -> None:
    """Record a user or node change made on the command line, with the system user name."""
    try:
        operator = getpass.getuser()
    except (KeyError, OSError):  # no name for the process's user id
        operator = "unknown"
    AuditTrail(engine).record(
        AuditEvent(
            AuditEventType.SECURITY_ALERT,
            action,
            AuditOutcome.SUCCESS,
            actor=f"cli:{operator}",
            actor_kind=ActorKind.SYSTEM,
            description=description,
        )
    )


def _read_password(from_stdin: bool) -> str:
    """Return a new password from standard input or from a prompt typed twice."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise _fail("--password-stdin: standard input is empty; send the password on it")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise _fail("No terminal to ask for the password; use --password-stdin")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, '.', '_', '@', '-').")],
    role: Annotated[
        str, typer.Option("--role", help="admin: everything; user: search, view, download.")
    ] = "user",
    password_stdin: PasswordStdinOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Create a user; the password is asked for, or read with --password-stdin."""
    try:
        check_user_name(name)
        user_role = parse_role(role)
    except InvalidUserError as exc:
        raise _fail(str(exc)) from None
    store = _user_store(config, data_dir, index_url)
    if store.get(name) is not None:
        raise _fail(f"A user named {name!r} exists; 'dicomvault user passwd {name}' changes it")
    try:
        store.add(name, user_role, _read_password(password_stdin))
    except InvalidUserError as exc:
        raise _fail(str(exc)) from None
    except UserExistsError:
        raise _fail(f"A user named {name!r} exists") from None
    description = f"Added user {name} with role {user_role.value}"
    _audit_cli_change(store.engine, AuditAction.CREATE, description)
    typer.echo(f"Added user {name} with role {user_role.value}")


@user_app.command("passwd")
def user_passwd(
    name: Annotated[str, typer.Argument(help="User name.")],
    password_stdin: PasswordStdinOption = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Set a user's password; this ends the user's console sessions."""
    store = _user_store(config, data_dir, index_url)
    if store.get(name) is None:
        raise _fail(f"No user named {name!r}; 'dicomvault user list' shows them", 1)
    try:
        store.set_password(name, _read_password(password_stdin))
    except InvalidUserError as exc:
        raise _fail(str(exc)) from None
    except UserNotFoundError:
        raise _fail(f"No user named {name!r}", 1) from None
    _audit_cli_change(store.engine, AuditAction.UPDATE, f"Changed the password of user {name}")
    typer.echo(f"Password of {name} changed")


@user_app.command("remove")
def user_remove(
    name: Annotated[str, typer.Argument(help="User name.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Remove a user with their API tokens and sessions."""
    store = _user_store(config, data_dir, index_url)
    try:
        store.remove(name)
    except UserNotFoundError:
        raise _fail(f"No user named {name!r}; 'dicomvault user list' shows them", 1) from None
    _audit_cli_change(store.engine, AuditAction.DELETE, f"Removed user {name}")
    typer.echo(f"Removed user {name}")


@user_app.command("list")
def user_list(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """List the users and their roles."""
    users = _user_store(config, data_dir, index_url).list_users()
    if not users:
        typer.echo("No users; add an administrator with 'dicomvault user add NAME --role admin'")
        return
    width = max(len(user.name) for user in users)
    for user in users:
        typer.echo(f"{user.name.ljust(width)}  {user.role.value}")


# --- indexing files on disk ----------------------------------------------------------------

REPORT_LINES = 100  # files listed in the summary of `dicomvault index`


def _ingest_context(settings: Settings, start_workers: bool = False) -> IngestContext:
    """Open the index and storage for an indexing command, or exit with a message.

    The command does not take the data directory lock, so that it can run
    beside ``serve``. With ``start_workers``, the worker processes start in
    the background at once, while the index opens and the folder is scanned.
    """
    # NOTE: a serve starting during `dicomvault index --import` removes the
    # temporary files of copies in flight. Those files fail, and the next run
    # imports them.
    pool = ReaderPool(settings.ingest.workers)
    if start_workers:
        pool.start_in_background()
    try:
        engine = open_index_engine(settings.index_url)
    except DatabaseError as exc:
        pool.close()
        raise _fail(str(exc), code=1) from None
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        storage = open_storage(settings)
    except StorageSetupError as exc:
        engine.dispose()
        pool.close()
        raise _fail(str(exc), 1) from None
    except OSError as exc:
        engine.dispose()
        pool.close()
        raise _fail(
            f"Cannot use data directory {settings.data_dir}: {exc.strerror or exc}", 1
        ) from None
    # Copies that a killed import wrote but never indexed, as serve removes them at start-up.
    _recover_unindexed_writes(settings.data_dir, storage, engine)
    return IngestContext(settings, engine, storage, pool)


@app.command("index")
def index_command(
    path: Annotated[
        str,
        typer.Argument(
            help="Folder to index, under an import root; or s3://bucket/prefix, under "
            "ingest.import_buckets."
        ),
    ],
    import_files: Annotated[
        bool,
        typer.Option(
            "--import",
            help="Copy each file into the archive's storage instead of indexing it in place.",
        ),
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Remove index entries of in-place files or bucket objects that are gone.",
        ),
    ] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", help="Keep indexing files as they arrive, until Ctrl-C or SIGTERM."
        ),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log at DEBUG level.")] = False,
) -> None:
    """Index the DICOM files of a folder and its subfolders, or of a bucket prefix.

    Unchanged files indexed before are skipped. Files that cannot be indexed
    are listed with the reason; the task goes on without them. A bucket
    prefix is indexed by this command together with every server sharing
    the index.
    """
    settings = _settings(config, {"storage.data_dir": data_dir, "index.url": index_url})
    configure_logging("DEBUG" if verbose else "WARNING", settings.logging.format)
    if is_bucket_url(path):
        _index_bucket_command(settings, path, import_files, prune, watch)
    try:
        folder = resolve_folder(path, settings.import_roots)
    except PathNotAllowedError as exc:
        raise _fail(str(exc)) from None
    if watch and prune:
        raise _fail("--prune cannot be combined with --watch; prune with a one-time task")
    mode = Mode.IMPORT if import_files else Mode.IN_PLACE

    context = _ingest_context(settings, start_workers=True)
    # The objects of the imported modules live until exit. Frozen, they are
    # not traversed by every full garbage collection, which the many rows of
    # a bulk index trigger: about 0.2 s less CPU per 20,000 files.
    gc.freeze()
    try:
        context.tasks.mark_interrupted()
        if watch:
            code = _watch_folder(context, folder, mode)
        else:
            code = _index_folder(context, folder, mode, prune)
    except SQLAlchemyError as exc:
        raise _fail(f"The index database failed: {exc}", code=1) from None
    finally:
        context.pool.close()
        context.engine.dispose()
    raise typer.Exit(code)


def _index_bucket_command(
    settings: Settings, url: str, import_files: bool, prune: bool, watch: bool
) -> None:
    """Index a bucket prefix as a resumable task; exit with the task's outcome."""
    try:
        location = resolve_bucket(url, settings.ingest.import_buckets)
    except PathNotAllowedError as exc:
        raise _fail(str(exc)) from None
    if watch:
        raise _fail("--watch applies to folders only; index the bucket without it")
    mode = Mode.IMPORT if import_files else Mode.IN_PLACE
    context = _ingest_context(settings, start_workers=True)
    cancel = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        typer.echo(f"Received {signal.Signals(signum).name}; cancelling", err=True)
        cancel.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        task_id = _orphaned_bucket_task(context, location.url, mode, prune)
        if task_id is None:
            task_id = context.tasks.create("index", location.url, str(mode), prune, resumable=True)
        else:
            typer.echo(f"Resuming task {task_id}, whose process stopped", err=True)
        with ProgressBar(f"Task {task_id}") as bar:
            record = run_bucket_task(context, task_id, cancel, bar.update)
        files = context.tasks.files(task_id, REPORT_LINES)
        for line in summarize(record, files, context.tasks.count_files(task_id)):
            typer.echo(line)
    except SQLAlchemyError as exc:
        raise _fail(f"The index database failed: {exc}", code=1) from None
    finally:
        context.pool.close()
        context.engine.dispose()
    raise typer.Exit({"completed": 0, "cancelled": 130}.get(record.status, 1))


def _orphaned_bucket_task(context: IngestContext, url: str, mode: Mode, prune: bool) -> int | None:
    """Return the id of an unfinished task with these settings that no process holds."""
    leases = LeaseStore(context.engine)
    for task in context.tasks.claimable():
        if (
            task.path == url
            and task.mode == mode
            and task.prune == prune
            and leases.holder(f"task:{task.id}") is None
        ):
            return task.id
    return None


def _index_folder(context: IngestContext, folder: Path, mode: Mode, prune: bool) -> int:
    cancel = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        typer.echo(f"Received {signal.Signals(signum).name}; cancelling", err=True)
        cancel.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    task_id = context.tasks.create("index", str(folder), str(mode), prune)
    with ProgressBar(f"Task {task_id}") as bar:
        record = run_index_task(context, task_id, folder, mode, prune, cancel, bar.update)
    files = context.tasks.files(task_id, REPORT_LINES)
    for line in summarize(record, files, context.tasks.count_files(task_id)):
        typer.echo(line)
    return {"completed": 0, "cancelled": 130}.get(record.status, 1)


def _watch_folder(context: IngestContext, folder: Path, mode: Mode) -> int:
    watcher = FolderWatcher(context, folder, mode)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        typer.echo(f"Received {signal.Signals(signum).name}; stopping", err=True)
        watcher.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    typer.echo(f"Watching {folder} as task {watcher.task_id}; stop with Ctrl-C", err=True)
    watcher.run()
    record = context.tasks.get(watcher.task_id)
    assert record is not None
    files = context.tasks.files(watcher.task_id, REPORT_LINES)
    for line in summarize(record, files, context.tasks.count_files(watcher.task_id)):
        typer.echo(line)
    return 0


@app.command("remove")
def remove_command(
    study: Annotated[
        str | None, typer.Option("--study", help="Study Instance UID of the study to remove.")
    ] = None,
    series: Annotated[
        str | None, typer.Option("--series", help="Series Instance UID of the series to remove.")
    ] = None,
    instance: Annotated[
        str | None, typer.Option("--instance", help="SOP Instance UID of the instance to remove.")
    ] = None,
    delete_files: Annotated[
        bool,
        typer.Option(
            "--delete-files",
            help="Also delete the files in the archive's storage (never in-place files).",
        ),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Remove a study, series or instance from the index."""
    from dicomvault.archive import Archive, IndexUnavailableError  # see run_server
    from dicomvault.dicom.attributes import Level

    selected = [
        (level, uid)
        for level, uid in ((Level.STUDY, study), (Level.SERIES, series), (Level.IMAGE, instance))
        if uid
    ]
    if len(selected) != 1:
        raise _fail("Give exactly one of --study, --series and --instance")
    level, uid = selected[0]
    settings = _settings(config, {"storage.data_dir": data_dir, "index.url": index_url})
    configure_logging("WARNING", settings.logging.format)
    context = _ingest_context(settings)
    archive = Archive(settings, context.engine, context.storage)
    try:
        result = archive.remove(level, uid.strip(), delete_files)
    except IndexUnavailableError as exc:
        raise _fail(str(exc), code=1) from None
    finally:
        context.engine.dispose()
    what = {Level.STUDY: "study", Level.SERIES: "series", Level.IMAGE: "instance"}[level]
    if not result.removed:
        raise _fail(f"No {what} with UID {uid} is indexed", code=1)
    typer.echo(
        f"Removed {len(result.removed)} instances of {what} {uid} from the index; "
        f"{result.deleted_files} stored files deleted, "
        f"{result.kept_in_place} in-place files left where they are"
    )


@app.command("fsck")
def fsck_command(
    verify_checksums: Annotated[
        bool,
        typer.Option(
            "--verify-checksums",
            help="Also read every stored object and compare its SHA-256 with the recorded one.",
        ),
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Re-index orphan objects, delete temporary leftovers and remove missing "
            "instances from the index. Refused while a server holds the data directory.",
        ),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Check that the index and the storage agree; exit 0 if clean, 1 if problems remain."""
    from dicomvault.fsck import check_archive, format_report, repair_archive  # see run_server

    settings = _settings(config, {"storage.data_dir": data_dir, "index.url": index_url})
    configure_logging("WARNING", settings.logging.format)
    lock = None
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if repair:
            lock = lock_data_dir(settings.data_dir)
        storage = open_storage(settings)
        engine = open_index_engine(settings.index_url)
    except DataDirInUseError as exc:
        raise _fail(f"{exc}. 'fsck --repair' needs the archive to itself") from None
    except (StorageSetupError, DatabaseError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(
            f"Cannot use data directory {settings.data_dir}: {exc.strerror or exc}"
        ) from None
    try:
        report = check_archive(engine, storage, verify_checksums)
        if repair:
            repair_archive(engine, storage, report)
    except (OSError, SQLAlchemyError) as exc:
        raise _fail(f"The check failed: {exc}") from None
    finally:
        engine.dispose()
        if lock is not None:
            lock.close()
    typer.echo(format_report(report, verify_checksums, repair))
    raise typer.Exit(1 if report.unrepaired else 0)


tasks_app = typer.Typer(help="List, show and cancel indexing tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


def _task_store(config: Path | None, data_dir: str | None, index_url: str | None) -> TaskStore:
    settings = _settings(config, {"storage.data_dir": data_dir, "index.url": index_url})
    configure_logging("WARNING", settings.logging.format)
    try:
        return TaskStore(open_index_engine(settings.index_url))
    except DatabaseError as exc:
        raise _fail(str(exc), code=1) from None


@tasks_app.command("list")
def tasks_list(
    limit: Annotated[int, typer.Option("--limit", help="Number of tasks, newest first.")] = 20,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """List the newest indexing tasks with their counts."""
    store = _task_store(config, data_dir, index_url)
    records = store.list(limit)
    if not records:
        typer.echo("No indexing tasks yet; start one with 'dicomvault index FOLDER'")
        return
    for record in records:
        counts = record.counts
        typer.echo(
            f"{record.id:>5}  {record.status:<11} {record.kind:<5} {record.mode:<8} "
            f"found {counts.found}, indexed {counts.indexed}, skipped {counts.skipped}, "
            f"failed {counts.failed}, pruned {counts.pruned}  {record.path}"
        )


@tasks_app.command("show")
def tasks_show(
    task_id: Annotated[int, typer.Argument(help="Task id, as 'dicomvault tasks list' shows.")],
    show_all: Annotated[bool, typer.Option("--all", help="List every file not indexed.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Show one task's counts and the files it did not index, with the reasons."""
    store = _task_store(config, data_dir, index_url)
    record = store.get(task_id)
    if record is None:
        raise _fail(f"No indexing task has id {task_id}; 'dicomvault tasks list' shows them", 1)
    files = store.files(task_id, None if show_all else REPORT_LINES)
    for line in summarize(record, files, store.count_files(task_id)):
        typer.echo(line)


@tasks_app.command("cancel")
def tasks_cancel(
    task_id: Annotated[int, typer.Argument(help="Task id, as 'dicomvault tasks list' shows.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    index_url: IndexUrlOption = None,
) -> None:
    """Ask a queued or running task to stop, also one run by another process."""
    store = _task_store(config, data_dir, index_url)
    try:
        record = store.request_cancel(task_id)
    except TaskNotFoundError:
        raise _fail(
            f"No indexing task has id {task_id}; 'dicomvault tasks list' shows them", 1
        ) from None
    if record.finished_at is not None and record.status != "cancelled":
        raise _fail(f"Task {task_id} has already finished: {record.status}", 1)
    typer.echo(f"Cancellation of task {task_id} requested")


# --- certificates -----------------------------------------------------------------------

certs_app = typer.Typer(help="Create TLS certificates for tests.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")


@certs_app.command("dev")
def certs_dev(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the PEM files to.")] = Path(
        "certs"
    ),
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            "--hostname",
            help="DNS name or IP address the server certificate also names, besides "
            "localhost, 127.0.0.1 and ::1; repeat for several.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite files left by an earlier run.")
    ] = False,
) -> None:
    """Create a private CA with a server and a client certificate, for tests only.

    Writes ca.pem, server.pem, server-key.pem, client.pem and client-key.pem
    (keys unencrypted, mode 0600), then prints the settings that use them.
    """
    from dicomvault.dev_certs import FilesExistError, write_dev_certificates

    try:
        written = write_dev_certificates(out, hostname or [], force=force)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except FilesExistError as exc:
        raise _fail(f"Files exist already: {exc}; pass --force to replace them") from None
    except OSError as exc:
        raise _fail(f"Cannot write to {out}: {exc.strerror or exc}", code=1) from None
    for path in written.paths():
        typer.echo(f"Wrote {path}")
    typer.echo(_dev_certs_usage(written))


def _dev_certs_usage(written: DevCertificates) -> str:
    return f"""
These certificates are for tests: the CA's key was not kept, and anyone with
client-key.pem can connect where client certificates are required.

Settings for DIMSE over TLS with client certificates, and for HTTPS
(in the configuration file, or as DICOMVAULT_DIMSE_TLS_PORT and so on):

[dimse]
tls_port = 2762
tls_cert_file = "{written.server_cert}"
tls_key_file = "{written.server_key}"
tls_ca_file = "{written.ca_cert}"
tls_require_client_cert = true

[http]
tls_cert_file = "{written.server_cert}"
tls_key_file = "{written.server_key}"

Check with DCMTK:
  echoscu +tls {written.client_key} {written.client_cert} +cf {written.ca_cert} \\
      -aec DICOMVAULT 127.0.0.1 2762
  curl --cacert {written.ca_cert} https://127.0.0.1:8080/health"""


def main() -> None:
    """Run the command line."""
    app()
