"""Unit tests for the filesystem storage: atomic writes, keys and disk errors."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomvault.storage import StorageError, StorageFullError
from dicomvault.storage.filesystem import TEMP_DIR_NAME, FilesystemStorage
from dicomvault.storage.in_place import in_place_key, in_place_path, is_in_place_key

KEY = "ab/cd/abcdef.dcm"


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path / "storage")


def files_under(root: Path) -> list[str]:
    """List every file below ``root``, temporary ones included, relative to it."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def failing_chunks(error: BaseException) -> Iterator[bytes]:
    """Yield one chunk, then raise ``error`` as a broken upstream would."""
    yield b"first chunk"
    raise error


class TestRoundTrip:
    def test_put_returns_size(self, storage: FilesystemStorage) -> None:
        assert storage.put(KEY, [b"abc", b"", b"defg"]) == 7

    def test_open_reads_chunks(self, storage: FilesystemStorage) -> None:
        storage.put(KEY, [b"abc", b"defg"])
        with storage.open(KEY) as file:
            assert file.read() == b"abcdefg"

    def test_exists(self, storage: FilesystemStorage) -> None:
        assert not storage.exists(KEY)
        storage.put(KEY, [b"abc"])
        assert storage.exists(KEY)

    def test_delete(self, storage: FilesystemStorage) -> None:
        storage.put(KEY, [b"abc"])
        storage.delete(KEY)
        assert not storage.exists(KEY)

    def test_delete_missing(self, storage: FilesystemStorage) -> None:
        storage.delete(KEY)
        assert not storage.exists(KEY)

    def test_open_missing(self, storage: FilesystemStorage) -> None:
        with pytest.raises(FileNotFoundError):
            storage.open(KEY)

    def test_put_replaces(self, storage: FilesystemStorage) -> None:
        storage.put(KEY, [b"old"])
        storage.put(KEY, [b"new"])
        with storage.open(KEY) as file:
            assert file.read() == b"new"

    def test_file_under_root(self, storage: FilesystemStorage) -> None:
        storage.put(KEY, [b"abc"])
        assert files_under(storage.root) == [KEY]

    def test_describe(self, storage: FilesystemStorage) -> None:
        assert storage.describe() == f"filesystem at {storage.root}"


class TestAtomicity:
    def test_failing_chunks_leave_no_file(self, storage: FilesystemStorage) -> None:
        with pytest.raises(RuntimeError, match=r"^upstream closed$"):
            storage.put(KEY, failing_chunks(RuntimeError("upstream closed")))
        assert not storage.exists(KEY)

    def test_failing_chunks_leave_no_temporary_file(self, storage: FilesystemStorage) -> None:
        with pytest.raises(RuntimeError):
            storage.put(KEY, failing_chunks(RuntimeError("upstream closed")))
        assert files_under(storage.root) == []

    def test_interrupt_leaves_no_temporary_file(self, storage: FilesystemStorage) -> None:
        with pytest.raises(KeyboardInterrupt):
            storage.put(KEY, failing_chunks(KeyboardInterrupt()))
        assert files_under(storage.root) == []

    def test_os_error_in_chunks(self, storage: FilesystemStorage) -> None:
        with pytest.raises(StorageError) as excinfo:
            storage.put(KEY, failing_chunks(OSError(errno.EIO, "Input/output error")))
        assert str(excinfo.value) == f"Cannot write {KEY} in {storage.root}: Input/output error"
        assert files_under(storage.root) == []

    def test_failed_replace_keeps_old_file(self, storage: FilesystemStorage) -> None:
        storage.put(KEY, [b"old"])
        with pytest.raises(RuntimeError):
            storage.put(KEY, failing_chunks(RuntimeError("upstream closed")))
        with storage.open(KEY) as file:
            assert file.read() == b"old"

    def test_folder_fsync_failure_leaves_no_file(
        self, storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # put() fails, so by the Storage contract no object may remain under the key.
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(StorageError):
            storage.put(KEY, [b"abc"])
        assert not storage.exists(KEY)


class TestDiskFull:
    @pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
    def test_replace_fails(
        self, storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch, code: int
    ) -> None:
        def replace(source: object, target: object) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(StorageFullError) as excinfo:
            storage.put(KEY, [b"abc"])
        assert str(excinfo.value) == f"No space left to store {KEY} in {storage.root}"

    def test_write_fails(self, storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch) -> None:
        # Buffered writes reach the disk at fsync, which can report ENOSPC on a full disk.
        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(StorageFullError):
            storage.put(KEY, [b"abc"])

    def test_no_files_left(
        self, storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(StorageFullError):
            storage.put(KEY, [b"abc"])
        assert files_under(storage.root) == []

    def test_read_only_is_full(
        self, storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def replace(source: object, target: object) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(StorageFullError) as excinfo:
            storage.put(KEY, [b"abc"])
        assert str(excinfo.value) == (
            f"Cannot store {KEY} in {storage.root}: the file system is read-only"
        )
        assert files_under(storage.root) == []

    def test_is_storage_error(self) -> None:
        assert issubclass(StorageFullError, StorageError)

    def test_other_errno_not_full(
        self, storage: FilesystemStorage, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def replace(source: object, target: object) -> None:
            raise OSError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(StorageError) as excinfo:
            storage.put(KEY, [b"abc"])
        assert type(excinfo.value) is StorageError
        assert str(excinfo.value) == f"Cannot write {KEY} in {storage.root}: Permission denied"


class TestKeys:
    @pytest.mark.parametrize(
        "key",
        [
            pytest.param("../x", id="parent"),
            pytest.param("a/../../x", id="inner_parent"),
            pytest.param("/abs", id="absolute"),
            pytest.param("a//b", id="empty_part"),
            pytest.param("a/./b", id="dot_part"),
            pytest.param(".", id="dot"),
            pytest.param("", id="empty"),
            pytest.param("a/", id="trailing_slash"),
            pytest.param("a\\b", id="backslash"),
            pytest.param("a b", id="space"),
            pytest.param("name.dcm\n", id="trailing_newline"),
            pytest.param(f"{TEMP_DIR_NAME}/abc.part", id="temporary_folder"),
        ],
    )
    def test_invalid_rejected(self, storage: FilesystemStorage, key: str) -> None:
        with pytest.raises(ValueError) as excinfo:
            storage.put(key, [b"abc"])
        assert str(excinfo.value) == (
            f"Invalid storage key {key!r}: expected a relative name such as 'ab/cd/name.dcm' "
            "whose parts do not start with '.'"
        )

    @pytest.mark.parametrize("method", ["open", "exists", "delete"])
    def test_invalid_rejected_by_every_method(
        self, storage: FilesystemStorage, method: str
    ) -> None:
        with pytest.raises(ValueError, match=r"^Invalid storage key '\.\./x'"):
            getattr(storage, method)("../x")

    def test_path_for(self, storage: FilesystemStorage) -> None:
        assert storage.path_for(KEY) == storage.root / "ab" / "cd" / "abcdef.dcm"

    def test_single_name(self, storage: FilesystemStorage) -> None:
        storage.put("x.dcm", [b"abc"])
        assert storage.exists("x.dcm")

    def test_parent_is_a_file(self, storage: FilesystemStorage) -> None:
        storage.put("ab", [b"abc"])
        with pytest.raises(StorageError, match=r"^Cannot write ab/cd\.dcm in "):
            storage.put("ab/cd.dcm", [b"abc"])


class TestTemporaryFiles:
    def make_temporary(self, storage: FilesystemStorage, name: str, age: float = 0.0) -> Path:
        path = storage.temp_dir / name
        path.write_bytes(b"partial")
        if age:
            mtime = time.time() - age
            os.utime(path, (mtime, mtime))
        return path

    def test_removed(self, storage: FilesystemStorage) -> None:
        self.make_temporary(storage, "a.part")
        self.make_temporary(storage, "b.part")
        assert storage.remove_temporary_files() == 2
        assert files_under(storage.root) == []

    def test_none_left(self, storage: FilesystemStorage) -> None:
        assert storage.remove_temporary_files() == 0

    def test_recent_kept(self, storage: FilesystemStorage) -> None:
        self.make_temporary(storage, "old.part", age=3600)
        self.make_temporary(storage, "new.part")
        assert storage.remove_temporary_files(older_than=60) == 1
        assert files_under(storage.root) == [f"{TEMP_DIR_NAME}/new.part"]

    def test_other_files_kept(self, storage: FilesystemStorage) -> None:
        self.make_temporary(storage, "notes.txt")
        storage.put(KEY, [b"abc"])
        assert storage.remove_temporary_files() == 0
        assert files_under(storage.root) == [f"{TEMP_DIR_NAME}/notes.txt", KEY]

    def test_removal_logged(
        self, storage: FilesystemStorage, caplog: pytest.LogCaptureFixture
    ) -> None:
        self.make_temporary(storage, "a.part")
        storage.remove_temporary_files()
        assert caplog.messages == [f"Removed 1 temporary files left in {storage.temp_dir}"]


class TestInPlaceKeys:
    def test_path_is_the_file(self, storage: FilesystemStorage, tmp_path: Path) -> None:
        source = tmp_path / "elsewhere" / "a.dcm"

        assert storage.path_for(in_place_key(source)) == source

    def test_delete_leaves_file(self, storage: FilesystemStorage, tmp_path: Path) -> None:
        source = tmp_path / "a.dcm"
        source.write_bytes(b"data")

        storage.delete(in_place_key(source))

        assert source.read_bytes() == b"data"

    def test_put_rejected(self, storage: FilesystemStorage, tmp_path: Path) -> None:
        source = tmp_path / "a.dcm"
        source.write_bytes(b"data")

        with pytest.raises(ValueError, match="in-place files are never modified"):
            storage.put(in_place_key(source), [b"other"])

        assert source.read_bytes() == b"data"

    def test_open_and_exists(self, storage: FilesystemStorage, tmp_path: Path) -> None:
        source = tmp_path / "a.dcm"
        source.write_bytes(b"data")

        with storage.open(in_place_key(source)) as file:
            assert file.read() == b"data"
        assert storage.exists(in_place_key(source))
        assert not storage.exists(in_place_key(tmp_path / "missing.dcm"))

    def test_relative_path_rejected(self) -> None:
        with pytest.raises(ValueError, match="needs an absolute path"):
            in_place_key("relative/a.dcm")
        with pytest.raises(ValueError, match="the path must be absolute"):
            in_place_path("inplace:relative/a.dcm")

    def test_stored_key_not_in_place(self) -> None:
        assert in_place_path(KEY) is None
        assert not is_in_place_key(KEY)
