"""rundir's writers and readers: an atomic write that fails (full disk, read-only file system,
a directory in the way) is a DemixError naming the path and leaves the previous file intact;
run files with a key given twice are refused."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from demix.errors import DemixError
from demix.rundir import atomic_write_text, read_run_file, write_json


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "64k", options: str = "") -> Iterator[Path]:
    """A size-limited tmpfs mounted at ``where`` (root only), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(mount: Path) -> None:
    """Fill a file system to the last byte (a filler file, written until ENOSPC)."""
    fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def test_a_full_disk_keeps_the_previous_file_and_names_the_path(tmp_path):
    with tmpfs(tmp_path / "small") as mount:
        path = mount / "best_mixture.json"
        write_json(path, {"weights": {"general": 1.0}})
        before = path.read_bytes()
        with pytest.raises(DemixError) as err:
            atomic_write_text(path, "x" * 200_000)  # more than the 64 KiB file system holds
        assert f"cannot write '{path}'" in err.value.what and "No space left on device" in err.value.what
        assert "free space" in (err.value.fix or "")
        assert path.read_bytes() == before
        assert sorted(p.name for p in mount.iterdir()) == ["best_mixture.json"]  # no temporary file left behind


def test_a_write_on_a_read_only_file_system_names_the_path(tmp_path):
    with tmpfs(tmp_path / "ro", options="ro") as mount:
        with pytest.raises(DemixError, match=f"cannot write '{mount / 'out.json'}'.*Read-only file system") as err:
            write_json(mount / "out.json", {})
        assert "writable" in (err.value.fix or "")


def test_a_directory_in_the_way_is_never_replaced(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("a user's file")
    with pytest.raises(DemixError, match=f"cannot write '{target}'.*directory") as err:
        atomic_write_text(target, "text")
    assert "file path" in (err.value.fix or "")
    assert (target / "keep.txt").read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_where_a_directory_is_needed_is_named(tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(DemixError, match=f"cannot write '{tmp_path / 'run' / 'x.json'}'"):
        write_json(tmp_path / "run" / "x.json", {})
    assert (tmp_path / "run").read_text() == "not a directory"


def test_the_temporary_file_is_removed_when_the_write_fails(tmp_path, monkeypatch):
    # Where no tmpfs can be mounted: the same failure (ENOSPC at fsync) simulated.
    path = tmp_path / "cv.json"
    path.write_text("old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DemixError, match="No space left on device"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["cv.json"]


def test_a_run_file_with_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "selection.json"
    path.write_text('{"weights": {"general": 0.5, "general": 0.5}}')
    with pytest.raises(DemixError, match=f"'{path}' cannot be read .*key 'general' is given twice"):
        read_run_file(path, "rerun `demix search`")
