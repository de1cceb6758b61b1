"""Unit tests for walking a folder and checking it against the import roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicomvault.ingest.roots import PathNotAllowedError, resolve_folder
from dicomvault.ingest.scan import SkippedEntry, scan_folder


def found_paths(folder: Path) -> list[str]:
    return [Path(found.path).relative_to(folder).as_posix() for found in scan_folder(folder)]


class TestScanFolder:
    def test_nested_files_in_name_order(self, tmp_path: Path) -> None:
        (tmp_path / "b" / "c").mkdir(parents=True)
        for name in ("z.dcm", "a.dcm", "b/x.dcm", "b/c/y.dcm"):
            (tmp_path / name).write_bytes(b"x")

        assert found_paths(tmp_path) == ["a.dcm", "z.dcm", "b/x.dcm", "b/c/y.dcm"]

    def test_size_and_mtime(self, tmp_path: Path) -> None:
        path = tmp_path / "one.dcm"
        path.write_bytes(b"12345")
        os.utime(path, ns=(1_000_000_000, 2_000_000_000))

        [found] = scan_folder(tmp_path)

        assert (found.size, found.mtime_ns) == (5, 2_000_000_000)

    def test_link_outside_not_followed(self, tmp_path: Path) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "secret.dcm").write_bytes(b"x")
        folder = tmp_path / "folder"
        folder.mkdir()
        (folder / "escape").symlink_to(outside)
        (folder / "file-link").symlink_to(outside / "secret.dcm")
        skipped: list[SkippedEntry] = []

        found = list(scan_folder(folder, on_skipped=skipped.append))

        assert found == []
        assert [Path(entry.path).name for entry in skipped] == ["escape", "file-link"]
        assert skipped[0].reason == f"Symbolic link to {outside}, outside the folder; not followed"

    def test_link_inside_followed(self, tmp_path: Path) -> None:
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "a.dcm").write_bytes(b"x")
        (tmp_path / "alias").symlink_to(tmp_path / "real")

        # The folder and its alias are one folder, entered once.
        assert found_paths(tmp_path) == ["alias/a.dcm"]

    def test_link_loop_entered_once(self, tmp_path: Path) -> None:
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "a.dcm").write_bytes(b"x")
        (tmp_path / "sub" / "parent").symlink_to(tmp_path)

        assert found_paths(tmp_path) == ["sub/a.dcm"]

    def test_broken_link_skipped(self, tmp_path: Path) -> None:
        (tmp_path / "broken").symlink_to(tmp_path / "missing")
        skipped: list[SkippedEntry] = []

        assert list(scan_folder(tmp_path, on_skipped=skipped.append)) == []
        assert skipped == [
            SkippedEntry(
                str(tmp_path / "broken"), "Broken symbolic link or removed during the scan"
            )
        ]

    def test_fifo_skipped(self, tmp_path: Path) -> None:
        os.mkfifo(tmp_path / "pipe")
        skipped: list[SkippedEntry] = []

        assert list(scan_folder(tmp_path, on_skipped=skipped.append)) == []
        assert skipped == [SkippedEntry(str(tmp_path / "pipe"), "Not a regular file")]

    def test_stop_ends_walk(self, tmp_path: Path) -> None:
        (tmp_path / "a.dcm").write_bytes(b"x")

        assert list(scan_folder(tmp_path, stop=lambda: True)) == []


class TestResolveFolder:
    def test_folder_under_root(self, tmp_path: Path) -> None:
        (tmp_path / "root" / "study").mkdir(parents=True)
        root = (tmp_path / "root").resolve()

        assert resolve_folder(tmp_path / "root" / "study", [root]) == root / "study"

    def test_root_itself(self, tmp_path: Path) -> None:
        assert resolve_folder(tmp_path, [tmp_path.resolve()]) == tmp_path.resolve()

    def test_outside_rejected(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        root.mkdir()
        other = tmp_path / "other"
        other.mkdir()

        with pytest.raises(PathNotAllowedError) as excinfo:
            resolve_folder(other, [root])

        assert str(excinfo.value) == (
            f"Cannot index {other} (resolved to {other}): it is not under an import root "
            f"({root}); add a root to [ingest] import_roots or choose a folder under one"
        )
        assert not excinfo.value.not_a_folder

    def test_dot_dot_rejected(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        root.mkdir()

        with pytest.raises(PathNotAllowedError, match="not under an import root"):
            resolve_folder(f"{root}/../", [root])

    def test_prefix_of_root_name_rejected(self, tmp_path: Path) -> None:
        (tmp_path / "root").mkdir()
        (tmp_path / "root2").mkdir()

        with pytest.raises(PathNotAllowedError, match="not under an import root"):
            resolve_folder(tmp_path / "root2", [tmp_path / "root"])

    def test_link_out_of_root_rejected(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        root.mkdir()
        (root / "escape").symlink_to(tmp_path)

        with pytest.raises(PathNotAllowedError, match="not under an import root"):
            resolve_folder(root / "escape", [root])

    def test_no_roots(self, tmp_path: Path) -> None:
        with pytest.raises(PathNotAllowedError) as excinfo:
            resolve_folder(tmp_path, [])

        assert str(excinfo.value) == (
            f"Cannot index {tmp_path}: no import roots are configured; list the folders that "
            "may be indexed in [ingest] import_roots or DICOMVAULT_INGEST_IMPORT_ROOTS"
        )

    def test_missing_folder(self, tmp_path: Path) -> None:
        with pytest.raises(PathNotAllowedError) as excinfo:
            resolve_folder(tmp_path / "missing", [tmp_path])

        assert str(excinfo.value) == f"Cannot index {tmp_path / 'missing'}: no such folder"
        assert excinfo.value.not_a_folder
