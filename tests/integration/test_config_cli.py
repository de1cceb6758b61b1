"""Command line: `dicomvault --help`, `dicomvault config` and invalid settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.network import LOOPBACK, free_port

pytestmark = pytest.mark.integration


def setting_line(output: str, name: str) -> str:
    """Return the output line that starts with the setting `name`, or ""."""
    for line in output.splitlines():
        if line.strip().startswith(name + " ") or line.strip().startswith(name + "="):
            return line
    return ""


def serve_args(data_dir: Path) -> list[str]:
    # Loopback host and a free port, in case the server starts despite the error.
    return ["serve", "--data-dir", str(data_dir), "--host", LOOPBACK, "--port", str(free_port())]


def test_help_lists_commands(tmp_path: Path) -> None:
    run = run_cli(["--help"], tmp_path)

    assert run.returncode == 0, run.describe()
    assert "serve" in run.output, run.describe()
    assert "config" in run.output, run.describe()


def test_config_shows_environment_value(tmp_path: Path) -> None:
    run = run_cli(["config"], tmp_path, {"DICOMVAULT_DIMSE_PORT": "4242"})

    assert run.returncode == 0, run.describe()
    line = setting_line(run.output, "dimse.port")
    assert "4242" in line, run.describe()
    assert "DICOMVAULT_DIMSE_PORT" in line, run.describe()


def test_config_shows_file_value(tmp_path: Path) -> None:
    config = tmp_path / "dicomvault.toml"
    config.write_text('[storage]\nduplicate_policy = "reject"\n', encoding="utf-8")

    run = run_cli(["config"], tmp_path, {"DICOMVAULT_CONFIG": str(config)})

    assert run.returncode == 0, run.describe()
    line = setting_line(run.output, "storage.duplicate_policy")
    assert "reject" in line, run.describe()
    assert str(config) in line, run.describe()


def test_config_masks_password(tmp_path: Path) -> None:
    url = "postgresql+psycopg://dicomvault:Secret-Passw0rd@127.0.0.1:5432/archive"

    run = run_cli(["config"], tmp_path, {"DICOMVAULT_INDEX_URL": url})

    assert run.returncode == 0, run.describe()
    assert "Secret-Passw0rd" not in run.output, run.describe()
    assert "127.0.0.1:5432/archive" in setting_line(run.output, "index.url"), run.describe()


def test_invalid_environment_value_stops_serve(tmp_path: Path) -> None:
    run = run_cli(serve_args(tmp_path / "data"), tmp_path, {"DICOMVAULT_DIMSE_PORT": "abc"})

    assert run.returncode != 0, run.describe()
    assert "DICOMVAULT_DIMSE_PORT" in run.output, run.describe()
    assert "Traceback" not in run.output, run.describe()


@pytest.mark.parametrize(
    ("toml", "name"),
    [
        pytest.param(
            '[dimse]\nmax_associations = "many"\n', "dimse.max_associations", id="bad-value"
        ),
        pytest.param(
            '[storage]\nduplicate_policy = "keep-both"\n',
            "storage.duplicate_policy",
            id="bad-choice",
        ),
        pytest.param("[dimse]\nmax_asociations = 4\n", "dimse.max_asociations", id="unknown-key"),
    ],
)
def test_invalid_file_value_stops_serve(tmp_path: Path, toml: str, name: str) -> None:
    config = tmp_path / "dicomvault.toml"
    config.write_text(toml, encoding="utf-8")

    run = run_cli([*serve_args(tmp_path / "data"), "--config", str(config)], tmp_path)

    assert run.returncode != 0, run.describe()
    assert name in run.output, run.describe()
    assert "Traceback" not in run.output, run.describe()
