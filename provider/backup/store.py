"""One mailbox's backup store on disk: compressed objects named by SHA-256, and manifests."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import os
import re
import secrets
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from provider.mailstore.uidlist import fsync_directory

# zlib level 6: mail text shrinks to about a third; faster levels gain little on small files.
COMPRESSION_LEVEL = 6
MANIFEST_SUFFIX = ".manifest"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SNAPSHOT_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def _syncfs(path: Path) -> bool:
    """Flush the whole file system holding `path` (Linux syncfs(2)); False if unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "syncfs"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(path))
    finally:
        os.close(fd)
    return True


class BackupStoreError(Exception):
    """Something in the backup store is not as it should be."""


class MissingObject(BackupStoreError, KeyError):
    """An object a manifest refers to is not in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DamagedObject(BackupStoreError):
    """An object whose content no longer matches its name (SHA-256)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_snapshot_id(text: str) -> bool:
    return _SNAPSHOT_ID.fullmatch(text) is not None


def _write_durably(temp_dir: Path, target: Path, data: bytes) -> None:
    """Write under a temporary name, fsync, rename into place (RELIABILITY B1). The caller
    fsyncs the target directory (once per batch, before anything refers to the file)."""
    temp = temp_dir / f"{target.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    os.close(fd)
    try:
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


class BackupStore:
    """``<root>/objects/ab/<sha256>`` (zlib), ``<root>/snapshots/<id>.manifest``, ``<root>/tmp``,
    ``<root>/damaged`` (objects verify found bad, kept as evidence) and a lock file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.snapshots = root / "snapshots"
        self.tmp = root / "tmp"
        self.damaged = root / "damaged"
        self._dirty: set[Path] = set()

    def __repr__(self) -> str:
        return f"BackupStore({str(self.root)!r})"

    def exists(self) -> bool:
        return self.snapshots.is_dir()

    def create(self) -> None:
        for directory in (self.root, self.objects, self.snapshots, self.tmp):
            os.makedirs(directory, mode=0o700, exist_ok=True)

    @contextlib.contextmanager
    def locked(self, *, shared: bool = False) -> Iterator[None]:
        """Snapshots and retention hold the lock alone; restore and listing may share it."""
        self.create()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def clean_tmp(self) -> int:
        """Remove what an interrupted run left in tmp/ (call with the exclusive lock)."""
        removed = 0
        if self.tmp.is_dir():
            for entry in os.scandir(self.tmp):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    # --- objects

    def object_path(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"{digest!r} is not a SHA-256 digest")
        return self.objects / digest[:2] / digest

    def digests(self) -> set[str]:
        """Every object in the store, by listing directories (no object is opened)."""
        found: set[str] = set()
        if not self.objects.is_dir():
            return found
        for shard in os.scandir(self.objects):
            if shard.is_dir(follow_symlinks=False):
                found.update(e.name for e in os.scandir(shard.path) if _DIGEST.fullmatch(e.name))
        return found

    def put(self, data: bytes, digest: str | None = None) -> str:
        """Store `data` once under its SHA-256 (nothing is written if it is there already)."""
        digest = digest or sha256(data)
        target = self.object_path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(mode=0o700, exist_ok=True)
        _write_durably(self.tmp, target, zlib.compress(data, COMPRESSION_LEVEL))
        self._dirty.add(target.parent)
        return digest

    def put_many(self, items: list[tuple[str, bytes]], workers: int = 4) -> int:
        """Store several (digest, data) the store does not have yet; how many were written.

        The same rule as `put` (an object is complete before it has its name), paid once for
        the batch: compressed and written to tmp/ in parallel threads (zlib and file writes
        release the GIL), made durable with one `syncfs` of the store's file system (one fsync
        per file where that is not available), then renamed into place.
        """
        fresh = [(d, data) for d, data in dict(items).items() if not self.object_path(d).exists()]
        if not fresh:
            return 0

        def write(item: tuple[str, bytes]) -> tuple[Path, Path]:
            digest, data = item
            temp = self.tmp / f"{digest}.{secrets.token_hex(4)}.tmp"
            with open(temp, "xb") as handle:
                handle.write(zlib.compress(data, COMPRESSION_LEVEL))
            return temp, self.object_path(digest)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            written = list(pool.map(write, fresh))
        try:
            if not _syncfs(self.tmp):
                for temp, _ in written:
                    fd = os.open(temp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            for temp, target in written:
                target.parent.mkdir(mode=0o700, exist_ok=True)
                os.replace(temp, target)
                self._dirty.add(target.parent)
        except BaseException:
            for temp, _ in written:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            raise
        return len(written)

    def sync(self) -> None:
        """Make every object written since the last sync durable (before a manifest names it)."""
        for directory in sorted(self._dirty):
            fsync_directory(directory)
        if self._dirty:
            fsync_directory(self.objects)
        self._dirty.clear()

    def get(self, digest: str) -> bytes:
        """The object's content, checked against its name."""
        try:
            stored = self.object_path(digest).read_bytes()
        except FileNotFoundError:
            raise MissingObject(f"object {digest} is missing") from None
        try:
            data = zlib.decompress(stored)
        except zlib.error as error:
            raise DamagedObject(f"object {digest} cannot be decompressed: {error}") from None
        if sha256(data) != digest:
            raise DamagedObject(f"object {digest} does not match its SHA-256")
        return data

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.object_path(digest))

    def quarantine(self, digest: str) -> Path:
        """Move a damaged object aside: the next snapshot then stores the message afresh (the
        same name, so every older snapshot referring to it is whole again)."""
        os.makedirs(self.damaged, mode=0o700, exist_ok=True)
        target = self.damaged / f"{digest}.{secrets.token_hex(4)}"
        os.replace(self.object_path(digest), target)
        return target

    # --- manifests

    def manifest_path(self, snapshot_id: str) -> Path:
        if not is_snapshot_id(snapshot_id):
            raise ValueError(f"{snapshot_id!r} is not a snapshot id")
        return self.snapshots / f"{snapshot_id}{MANIFEST_SUFFIX}"

    def snapshot_ids(self) -> list[str]:
        """Complete snapshots (a manifest appears only by rename, once whole), oldest first."""
        if not self.snapshots.is_dir():
            return []
        names = [
            entry.name.removesuffix(MANIFEST_SUFFIX)
            for entry in os.scandir(self.snapshots)
            if entry.name.endswith(MANIFEST_SUFFIX)
        ]
        return sorted(name for name in names if is_snapshot_id(name))

    def write_manifest(self, snapshot_id: str, data: bytes) -> None:
        self.sync()
        _write_durably(self.tmp, self.manifest_path(snapshot_id), data)
        fsync_directory(self.snapshots)

    def read_manifest_bytes(self, snapshot_id: str) -> bytes:
        return self.manifest_path(snapshot_id).read_bytes()

    def remove_manifest(self, snapshot_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.manifest_path(snapshot_id))
