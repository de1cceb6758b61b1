"""Statistics of repeated measurements and the Markdown tables the runner prints."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence


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
