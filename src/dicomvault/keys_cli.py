"""The ``dicomvault keys`` commands: generate a master key, rotate keys, show key status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dicomvault.config import ConfigError, Settings, load_settings
from dicomvault.encryption.key_record import KeyRecordError
from dicomvault.encryption.keys import KeySetupError, generate_key_file, load_key_provider
from dicomvault.encryption.rotation import (
    Outcome,
    RotationReport,
    finish_rotation,
    rotate_storage,
    survey_storage,
)
from dicomvault.logging_setup import configure_logging
from dicomvault.storage.base import StorageError
from dicomvault.storage.encrypted import EncryptedStorage
from dicomvault.storage.lock import DataDirInUseError, lock_data_dir
from dicomvault.storage.setup import (
    STORAGE_FOLDER,
    StorageSetupError,
    open_inner_storage,
    open_storage,
    record_place,
)

LISTED_FAILURES = 20

keys_app = typer.Typer(
    help="Create master keys for encryption at rest, rotate them, and show which keys "
    "the stored files need.",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML configuration file (default: $DICOMVAULT_CONFIG)."),
]
DataDirOption = Annotated[
    str | None, typer.Option("--data-dir", help="Data directory [storage.data_dir].")
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def _settings(config: Path | None, data_dir: str | None) -> Settings:
    try:
        return load_settings(config, overrides={"storage.data_dir": data_dir})
    except ConfigError as exc:
        raise _fail(str(exc)) from None


@keys_app.command("generate")
def keys_generate(
    path: Annotated[Path, typer.Argument(help="New key file to write; must not exist.")],
) -> None:
    """Write a new random 256-bit master key to a file readable by its owner only.

    The key is written as 64 hexadecimal digits. Only its id is printed.
    """
    try:
        key_id = generate_key_file(path)
    except KeySetupError as exc:
        raise _fail(str(exc), code=1) from None
    typer.echo(f"Wrote master key {key_id} to {path} (mode 0600).")
    typer.echo(
        "Keep a copy apart from the archive's data and backups: without the key, "
        "the encrypted files cannot be read."
    )


@keys_app.command("rotate")
def keys_rotate(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log at DEBUG level.")] = False,
) -> None:
    """Wrap the data key of every stored file under the current master key.

    First make the new key current (encryption.key_file, or
    encryption.kms_key_id with AWS KMS), list the old key in
    encryption.previous_key_files (or encryption.kms_previous_key_ids), and
    restart the server. Rotation can then run while the server serves.
    Files stored before encryption was turned on are encrypted. An
    interrupted run can be started again. When no file fails, the key
    record drops the earlier keys, which can then be removed from the
    settings. On S3 storage, restart every node with the new key first:
    each object is uploaded again, through the machine that runs this.
    """
    settings = _settings(config, data_dir)
    configure_logging("DEBUG" if verbose else "WARNING", settings.logging.format)
    if not settings.encryption.enabled:
        raise _fail(
            "Encryption is off; set encryption.enabled = true and the new master key in "
            "encryption.key_file (or DICOMVAULT_ENCRYPTION_KEY), or in encryption.kms_key_id "
            'with encryption.provider = "aws-kms", first'
        )
    if settings.storage.backend == "s3":
        # Other nodes may serve from the bucket, so no local lock shows whether one runs.
        _rotate(settings, serving=False)
        return
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_data_dir(settings.data_dir)
    except DataDirInUseError:
        lock = None  # a server is running; rotate beside it
    except OSError as exc:
        raise _fail(f"Cannot use data directory {settings.data_dir}: {exc.strerror}", 1) from None
    try:
        _rotate(settings, serving=lock is not None)
    finally:
        if lock is not None:
            lock.close()


def _rotate(settings: Settings, serving: bool) -> None:
    """Rotate every stored file; ``serving`` is True when no server can be running."""
    try:
        storage = open_storage(settings, serving=serving)
        assert isinstance(storage, EncryptedStorage)  # encryption is on
        record = record_place(storage.inner).load()
    except (StorageSetupError, KeyRecordError, StorageError) as exc:
        raise _fail(str(exc), code=1) from None
    assert record is not None  # open_storage creates it
    provider = storage.provider
    current = provider.current_key_id
    if not serving and record.current_key_id and record.current_key_id != current:
        if settings.storage.backend == "s3":
            sealer, restart = "The node that started last on this bucket", "every node"
        else:
            sealer, restart = "The running server", "the server"
        raise _fail(
            f"{sealer} seals new files under master key {record.current_key_id}, "
            f"but {provider.current_key_setting} names master key {current}. Restart "
            f"{restart} with the new key in {provider.current_key_setting} and the old one in "
            f"{provider.earlier_key_setting(record.current_key_id)}, then rotate",
            code=1,
        )
    storage.accept_plaintext = True  # files stored before encryption get encrypted

    try:
        total = sum(1 for _ in storage.inner.iter_keys())
    except StorageError as exc:
        raise _fail(str(exc), code=1) from None
    typer.echo(f"Rotating {total} stored files in {storage.location} to master key {current}")
    try:
        with _RotationProgress(total) as update:
            report = rotate_storage(storage, update)
    except StorageError as exc:  # the listing failed part-way
        raise _fail(f"{exc}; run 'dicomvault keys rotate' again", code=1) from None
    typer.echo(_summary(report))

    if report.counts[Outcome.FAILED]:
        for key, reason in report.failures[:LISTED_FAILURES]:
            typer.echo(f"  {key}: {reason}", err=True)
        raise _fail(
            f"{report.counts[Outcome.FAILED]} files are not under master key {current}; "
            "fix the cause and run 'dicomvault keys rotate' again. The earlier keys are "
            "still needed",
            code=1,
        )
    dropped = finish_rotation(storage, record)
    typer.echo(f"Every stored file is now encrypted under master key {current}.")
    if dropped:
        settings_to_edit = sorted({provider.earlier_key_setting(key_id) for key_id in dropped})
        typer.echo(
            f"Master keys no longer needed: {', '.join(dropped)}. Remove them from "
            f"{' and '.join(settings_to_edit)} before the next start, and destroy them once "
            "no backup needs them."
        )


class _RotationProgress:
    """A rich progress bar of files rotated, as a context manager that returns its update."""

    def __init__(self, total: int) -> None:
        self._bar = Progress(
            TextColumn("Files"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[summary]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,  # the summary line follows on standard output
        )
        self._task = self._bar.add_task("rotate", total=total, summary="")

    def __enter__(self) -> Callable[[RotationReport], None]:
        self._bar.start()
        return self.update

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def update(self, report: RotationReport) -> None:
        self._bar.update(self._task, completed=report.total, summary=_summary(report))


def _summary(report: RotationReport) -> str:
    counts = report.counts
    return (
        f"{counts[Outcome.REWRAPPED]} rewrapped, {counts[Outcome.SEALED]} encrypted again "
        f"whole, {counts[Outcome.CURRENT]} already current, {counts[Outcome.FAILED]} failed"
    )


@keys_app.command("status")
def keys_status(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Show the configured master keys, the key record, and the stored files per key.

    Reads only file headers and decrypts nothing. With AWS KMS it checks
    each configured key with a DescribeKey request.
    """
    settings = _settings(config, data_dir)
    root = settings.data_dir / STORAGE_FOLDER
    if settings.storage.backend == "filesystem" and not root.is_dir():
        raise _fail(f"No storage folder {root}; check --data-dir", code=1)
    try:
        inner = open_inner_storage(settings)
    except StorageSetupError as exc:
        raise _fail(str(exc), code=1) from None

    if settings.encryption.enabled:
        try:
            provider = load_key_provider(settings.encryption)
            typer.echo(f"Encryption: on; current master key {provider.current_key_id}")
            for key_id in provider.key_ids[1:]:
                typer.echo(f"Earlier master key: {key_id}")
            typer.echo(f"Key provider: {provider.describe()}")
        except KeySetupError as exc:
            typer.echo(f"Encryption: on, but the keys cannot be read: {exc}")
    else:
        typer.echo("Encryption: off")

    place = record_place(inner)
    try:
        record = place.load()
    except (KeyRecordError, StorageError) as exc:
        raise _fail(str(exc), code=1) from None
    if record is None:
        typer.echo(f"Key record: none at {place}")
    else:
        typer.echo(
            f"Key record: keys {', '.join(sorted(record.key_checks)) or 'none'}; "
            f"server's current key {record.current_key_id or 'not recorded'}; "
            f"unencrypted files {'possible' if record.plaintext_objects else 'rejected'}"
        )

    try:
        counts = survey_storage(inner)
    except StorageError as exc:
        raise _fail(str(exc), code=1) from None
    typer.echo(f"Stored files in {inner.location}: {sum(counts.values())}")
    for keys, count in sorted(counts.items()):
        typer.echo(f"  {keys}: {count}")
