"""`dicomvault user`: add, list, change the password of and remove users."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_cli

pytestmark = pytest.mark.integration

PASSWORD = b"a long enough password\n"


@pytest.fixture(scope="module")
def index_backend() -> str:
    """The user store runs on both back-ends in tests/unit/test_users.py; the command line
    is the same on each.
    """
    return "sqlite"


def where(data_dir: Path, index_url: str) -> list[str]:
    args = ["--data-dir", str(data_dir)]
    return args + (["--index-url", index_url] if index_url else [])


def test_add_list_passwd_remove(tmp_path: Path, index_url: str) -> None:
    args = where(tmp_path / "data", index_url)

    admin = run_cli(
        ["user", "add", "alice", "--role", "admin", "--password-stdin", *args],
        tmp_path,
        stdin=PASSWORD,
    )
    user = run_cli(["user", "add", "bob", "--password-stdin", *args], tmp_path, stdin=PASSWORD)
    listed = run_cli(["user", "list", *args], tmp_path)
    changed = run_cli(
        ["user", "passwd", "bob", "--password-stdin", *args], tmp_path, stdin=b"another long one\n"
    )
    removed = run_cli(["user", "remove", "bob", *args], tmp_path)
    after = run_cli(["user", "list", *args], tmp_path)

    assert admin.returncode == 0, admin.describe()
    assert "Added user alice with role admin" in admin.output
    assert user.returncode == 0, user.describe()
    assert listed.output.splitlines() == ["alice  admin", "bob    user"]
    assert changed.returncode == 0, changed.describe()
    assert removed.returncode == 0, removed.describe()
    assert after.output.splitlines() == ["alice  admin"]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["user", "add", "bob", "--password-stdin"], b"short\n", "at least 10 characters"),
        (["user", "add", "bob", "--password-stdin"], b"", "standard input is empty"),
        (["user", "add", "bob"], None, "use --password-stdin"),
        (["user", "add", "bob", "--role", "root"], None, "invalid role 'root'"),
        (["user", "add", "-x", "--password-stdin"], PASSWORD, "No such option"),
        (["user", "add", "b b", "--password-stdin"], PASSWORD, "invalid user name 'b b'"),
        (["user", "passwd", "nobody", "--password-stdin"], PASSWORD, "No user named 'nobody'"),
        (["user", "remove", "nobody"], None, "No user named 'nobody'"),
    ],
)
def test_bad_input(
    tmp_path: Path, index_url: str, args: list[str], stdin: bytes | None, message: str
) -> None:
    run = run_cli([*args, *where(tmp_path / "data", index_url)], tmp_path, stdin=stdin)

    assert run.returncode != 0, run.describe()
    assert message in run.output, run.describe()
    assert "Traceback" not in run.output


def test_existing_name(tmp_path: Path, index_url: str) -> None:
    args = where(tmp_path / "data", index_url)
    run_cli(["user", "add", "alice", "--password-stdin", *args], tmp_path, stdin=PASSWORD)

    again = run_cli(["user", "add", "alice", "--password-stdin", *args], tmp_path, stdin=PASSWORD)

    assert again.returncode == 2
    assert "A user named 'alice' exists" in again.output
