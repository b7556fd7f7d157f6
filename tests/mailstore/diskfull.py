"""Helpers for full-disk tests: fail the store's Nth write, or mount a really small file system."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from provider.mailstore import diskio


class FailingWrites:
    """Make the store's `nth` low-level write from now on fail as a full disk would; every
    other write goes through. `calls` counts the writes seen since `arm`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.original = diskio.write_all
        self.calls = 0
        self.failed = 0

    def arm(self, nth: int, code: int = errno.ENOSPC) -> None:
        counter = itertools.count(1)
        self.calls = self.failed = 0

        def write_all(fd: int, data: bytes) -> None:
            self.calls = next(counter)
            if self.calls == nth:
                self.failed += 1
                raise OSError(code, os.strerror(code))
            self.original(fd, data)

        self.monkeypatch.setattr(diskio, "write_all", write_all)

    def disarm(self) -> None:
        self.monkeypatch.setattr(diskio, "write_all", self.original)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` for the duration; skips the test when this machine
    does not let us mount (not root, or no CAP_SYS_ADMIN in a container)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount command on this machine: the full-disk test needs a small tmpfs")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        # Lazy: a cache database the server still holds open must not keep the mount.
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(directory: Path, leave: int) -> Path:
    """Fill the file system of `directory` until about `leave` bytes are free; the filler."""
    filler = directory / "filler"
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as out:
        out.write(b"\0" * max(free - leave, 0))
    return filler


def leftovers(folder_path: Path) -> list[str]:
    """What a failed write must never leave: files in tmp/ and lock or temp files."""
    found = [f"tmp/{p.name}" for p in (folder_path / "tmp").iterdir()]
    found += [p.name for p in folder_path.iterdir() if p.name.endswith((".lock", ".tmp"))]
    return found
