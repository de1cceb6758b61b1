"""Statistics of repeated measurements and the Markdown tables the runner prints."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Sample:
    """Repeated measurements of one quantity, such as instances per second over three runs."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median of the values."""
        return statistics.median(self.values)

    def format(self, digits: int = 0) -> str:
        """Format as "median (min-max)", or just the value when there is one."""
        median = f"{self.median:.{digits}f}"
        if len(self.values) == 1:
            return median
        return f"{median} ({min(self.values):.{digits}f}-{max(self.values):.{digits}f})"


def format_ratio(numerator: Sample | None, denominator: Sample | None) -> str:
    """Format the ratio of two medians as "0.76", or "-" when either is missing or zero."""
    if numerator is None or denominator is None or denominator.median == 0:
        return "-"
    return f"{numerator.median / denominator.median:.2f}"


@dataclasses.dataclass
class Table:
    """A Markdown table with a title line and notes printed under it."""

    title: str
    header: Sequence[str]
    rows: list[Sequence[str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def render(self) -> str:
        """Return the table as Markdown: the title, the table, then one line per note."""
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "---|" * len(self.header))
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines) + "\n"


def machine_lines() -> list[str]:
    """Return lines naming the date and the machine: cores, memory and Python."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        f"Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"Machine: {os.cpu_count()} cores, {memory_gib:.1f} GiB memory, "
        f"Python {sys.version.split()[0]}",
    ]


def run_and_report(
    measure: Callable[[Path], list[Table]],
    header: Sequence[str],
    workdir: Path | None,
    keep: bool,
    markdown: Path | None,
    prefix: str,
) -> int:
    """Run ``measure`` in a work folder, print its tables after ``header``; return the exit code.

    The folder is ``workdir`` or a new temporary one, removed at the end
    unless ``keep``. A failed measurement is logged with the folder, which
    is then kept, and gives 1. The output also goes to ``markdown`` if given.
    """
    work = workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        tables = measure(work)
    except Exception:
        LOGGER.exception("benchmark failed; its files are in %s", work)
        return 1
    if not keep:
        shutil.rmtree(work, ignore_errors=True)

    minutes = (time.perf_counter() - started) / 60
    lines = [*header, f"Wall time: {minutes:.1f} min", ""]
    output = "\n".join(lines) + "\n" + "\n".join(table.render() for table in tables)
    print(output)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(output, encoding="utf-8")
    return 0
