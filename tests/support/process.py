"""Run command line programs with a timeout and capture their output."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

TOOL_TIMEOUT_SECONDS = 120


@dataclasses.dataclass
class ToolRun:
    """One finished run of a command line tool."""

    args: list[str]
    returncode: int
    output: str

    def describe(self) -> str:
        """The command, exit code and output, for assertion messages."""
        return (
            f"Command: {shlex.join(self.args)}\nExit code: {self.returncode}\n"
            f"Output:\n{self.output}"
        )


def run_tool(
    args: Sequence[str | bytes],
    timeout: float = TOOL_TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> ToolRun:
    """Run a tool and capture stdout and stderr together.

    Arguments may be bytes so that a test can pass values in any character
    set. `env` replaces the whole environment when given. The tool reads
    `stdin`, or no standard input at all.
    """
    completed = subprocess.run(
        list(args),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )
    printable_args = [
        arg.decode("utf-8", errors="replace") if isinstance(arg, bytes) else arg for arg in args
    ]
    output = completed.stdout.decode("utf-8", errors="replace")
    return ToolRun(printable_args, completed.returncode, output)
