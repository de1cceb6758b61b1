"""Show an indexing task's progress in the terminal, and summarize it at the end."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from dicomvault.index.tasks import TaskCounts, TaskFile, TaskRecord


class ProgressBar:
    """A rich progress bar: files dealt with of files found, counts, rate, time left."""

    def __init__(self, description: str, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "indexed {task.fields[indexed]}, skipped {task.fields[skipped]}, "
                "failed {task.fields[failed]}"
            ),
            TextColumn("{task.fields[rate]:.0f} files/s"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(
            description, total=None, indexed=0, skipped=0, failed=0, rate=0.0
        )

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, counts: TaskCounts) -> None:
        """Show the current counts."""
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 0.0
        self._progress.update(
            self._task,
            total=counts.found,
            completed=counts.done,
            indexed=counts.indexed,
            skipped=counts.skipped,
            failed=counts.failed,
            rate=counts.done / elapsed if elapsed > 0 else 0.0,
        )


def summarize(record: TaskRecord, files: list[TaskFile], files_total: int) -> list[str]:
    """Return the lines that summarize a finished task, with the files it did not index."""
    counts = record.counts
    lines = [
        f"Task {record.id} {record.status} in {record.elapsed_seconds:.1f} s "
        f"({record.rate:.0f} files/s): {counts.found} files found, {counts.indexed} indexed, "
        f"{counts.skipped} skipped (unchanged), {counts.failed} failed, "
        f"{counts.ignored} ignored, {counts.pending} still being written, "
        f"{counts.pruned} pruned"
    ]
    if record.message:
        lines.append(f"  {record.message}")
    for file in files:
        lines.append(f"  {file.outcome}: {file.path}: {file.reason}")
    if files_total > len(files):
        lines.append(
            f"  ... and {files_total - len(files)} more; "
            f"'dicomvault tasks show {record.id} --all' lists them"
        )
    return lines
