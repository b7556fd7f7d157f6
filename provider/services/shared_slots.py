"""Counted slots every process of an installation shares: POSIX record locks on one file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# A key's slots are the bytes [bucket * stride, bucket * stride + limit) of the file, where
# bucket is a 40-bit hash of the key: two keys share slots only if their hashes collide
# (about one pair in a million among 1.5 million keys held at once; a slot is only taken by
# a logged-in session or a login being checked, so nobody can fill buckets by guessing).
BUCKET_BITS = 40
# Slots per key at most (larger limits are cut to this; a limit is a few dozen at most).
MAX_SLOTS = 1 << 16
# After the file could not be opened it is not tried again for this long (s).
RETRY_SECONDS = 60.0


class SlotsUnavailable(Exception):
    """The lock file cannot be used now; the caller counts in its own memory instead."""


class SharedSlots:
    """`limit` slots per key, shared by every process that opens the same file, and freed by
    the kernel the moment the process holding one exits, however it exits (kill -9 too).

    A slot is one byte of the file locked with fcntl (POSIX record locks, which also work
    between machines over NFSv4 and other file systems with shared locking). Record locks
    belong to a process: it would be granted a byte it already holds, so this object
    remembers which slots its process holds and skips them. One descriptor per process
    (closing any descriptor of the file would drop all the process's locks: it is never
    closed while slots are held, and one inherited over a fork holds nothing in the child).
    Every call is a few non-blocking system calls: safe on the event loop.
    """

    def __init__(
        self, path: str | os.PathLike[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._held: set[int] = set()
        self._down_until: float | None = None

    def _descriptor(self) -> int:
        """The file's descriptor for this process (opened again after a fork)."""
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        if self._fd is not None:  # inherited: the parent's locks are not ours
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd, self._held = None, set()
        if self._down_until is not None and self._clock() < self._down_until:
            raise SlotsUnavailable(str(self.path))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            first = self._down_until is None
            self._down_until = self._clock() + RETRY_SECONDS
            if first:
                log.warning(
                    "slot file %s unusable (%s): connection limits and login turns are "
                    "counted per process until it works again",
                    self.path,
                    error,
                )
            raise SlotsUnavailable(str(self.path)) from error
        if self._down_until is not None:
            log.info("slot file %s works again", self.path)
        self._fd, self._pid, self._down_until = fd, os.getpid(), None
        return fd

    @staticmethod
    def offset(key: str) -> int:
        """The first byte of `key`'s slots (the same in every process and on every machine)."""
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        bucket = int.from_bytes(digest, "big") >> (64 - BUCKET_BITS)
        return bucket * MAX_SLOTS

    def acquire(self, key: str, limit: int) -> int | None:
        """Take a free slot of `key` (one of its first `limit`); its handle, or None when all
        are held. Raises SlotsUnavailable when the file cannot be used."""
        base = self.offset(key)
        with self._lock:
            fd = self._descriptor()
            for slot in range(base, base + max(0, min(limit, MAX_SLOTS))):
                if slot in self._held:
                    continue
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot, os.SEEK_SET)
                except OSError as error:
                    if error.errno in (errno.EACCES, errno.EAGAIN):
                        continue
                    raise SlotsUnavailable(str(self.path)) from error
                self._held.add(slot)
                return slot
            return None

    def release(self, slot: int) -> None:
        """Give back a slot this process took (after a fork, the child has none to give)."""
        with self._lock:
            if slot not in self._held or self._fd is None or self._pid != os.getpid():
                return
            self._held.discard(slot)
            with contextlib.suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, slot, os.SEEK_SET)

    def held(self) -> int:
        """Slots this process holds now."""
        with self._lock:
            return len(self._held) if self._pid == os.getpid() else 0
