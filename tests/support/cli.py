"""Run the dicomvault command line the tests installed, with a clean environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.process import ToolRun, run_tool

CLI_TIMEOUT_SECONDS = 30
# The console script that `pip install` put next to the interpreter running the tests.
DICOMVAULT = str(Path(sys.executable).parent / "dicomvault")


def run_cli(
    args: list[str], cwd: Path, env: Mapping[str, str] | None = None, stdin: bytes | None = None
) -> ToolRun:
    """Run the dicomvault command with only the DICOMVAULT_* variables in `env`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    # Wide enough that no output line wraps.
    environ["COLUMNS"] = "200"
    environ.update(env or {})
    return run_tool(
        [DICOMVAULT, *args], timeout=CLI_TIMEOUT_SECONDS, env=environ, cwd=cwd, stdin=stdin
    )
