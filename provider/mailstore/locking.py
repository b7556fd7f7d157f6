"""The folder lock: Dovecot's dovecot-uidlist.lock dotlock, behind an flock that orders our own."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

LOCK_NAME = "dovecot-uidlist.lock"
PROTECTED_NAME = "dovecot-uidlist"
STALE_SECONDS = 120.0
"""Dovecot's MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT: a lock nobody refreshed for this long is stale."""
DEFAULT_TIMEOUT = 30.0

_FIRST_DELAY = 0.001
_MAX_DELAY = 0.05


class LockTimeout(TimeoutError):
    """The lock stayed taken for the whole wait."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(lock_path: Path) -> tuple[int, str] | None:
    """The "pid:hostname" a dotlock holds (Dovecot's file_write_pid format), if readable."""
    try:
        with open(lock_path, "rb") as handle:
            content = handle.read(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    pid_text, sep, host = content.partition(":")
    if not sep or not pid_text.isdigit() or int(pid_text) <= 0:
        return None
    return int(pid_text), host


class FolderLock:
    """Exclusive right to change one folder's dovecot-uidlist (and dovecot-keywords).

    Two layers, so that our processes and threads never race each other and Dovecot still sees
    the lock it knows:

    * an ``flock`` on the folder directory, opened anew for every acquisition, so threads of one
      process exclude each other as well as other processes; the kernel drops it when a process
      dies, so it is never stale;
    * Dovecot's dotlock ``dovecot-uidlist.lock``, created with ``O_CREAT|O_EXCL`` and holding
      ``pid:hostname``. One that belongs to a dead process on this host, or that neither it nor
      the uidlist changed for two minutes, is stale and replaced, as Dovecot's file-dotlock does.

    Waiting is bounded: `LockTimeout` after ``timeout`` seconds.
    """

    def __init__(self, directory: Path, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.directory = directory
        self.lock_path = directory / LOCK_NAME
        self.timeout = timeout
        self._dir_fd: int | None = None
        self._identity: tuple[int, int] | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._identity is not None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._wait(lambda: self._try_flock(dir_fd), deadline)
            self._dir_fd = dir_fd
            self._wait(self._try_dotlock, deadline)
        except BaseException:
            self._dir_fd = None
            os.close(dir_fd)
            raise

    def release(self) -> None:
        try:
            if self._identity is not None:
                with contextlib.suppress(FileNotFoundError):
                    if self._is_ours():
                        os.unlink(self.lock_path)
        finally:
            self._identity = None
            if self._dir_fd is not None:
                os.close(self._dir_fd)  # closing drops the flock
                self._dir_fd = None

    def refresh(self) -> None:
        """Touch the dotlock during long work so that nobody takes it for stale."""
        if self._identity is not None:
            with contextlib.suppress(FileNotFoundError):
                if self._is_ours():
                    os.utime(self.lock_path)

    def _is_ours(self) -> bool:
        """Same inode and our pid:host in it: a lock that replaced ours (after judging ours
        stale) can reuse the inode number, but not the content."""
        st = os.lstat(self.lock_path)
        if (st.st_dev, st.st_ino) != self._identity:
            return False
        return _owner(self.lock_path) == (os.getpid(), socket.gethostname())

    def _wait(self, attempt: Callable[[], bool], deadline: float) -> None:
        delay = _FIRST_DELAY
        while not attempt():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(f"{self.lock_path} stayed locked for {self.timeout:g} s")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_DELAY)

    @staticmethod
    def _try_flock(dir_fd: int) -> bool:
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def _try_dotlock(self) -> bool:
        try:
            fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            self._break_if_stale()
            return False
        try:
            os.write(fd, f"{os.getpid()}:{socket.gethostname()}".encode())
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
            raise
        os.close(fd)
        self._identity = (st.st_dev, st.st_ino)
        return True

    def _break_if_stale(self) -> None:
        try:
            before = os.lstat(self.lock_path)
        except FileNotFoundError:
            return
        stale = False
        owner = _owner(self.lock_path)
        if owner is not None and owner[1] == socket.gethostname():
            pid = owner[0]
            # We hold the flock, so no thread of ours owns a dotlock bearing our own pid.
            stale = pid == os.getpid() or not _pid_alive(pid)
        if not stale:
            # mtime, not ctime: refresh() touches it, and it is what an operator can reason about.
            last_change = before.st_mtime
            with contextlib.suppress(FileNotFoundError):
                last_change = max(last_change, os.stat(self.directory / PROTECTED_NAME).st_mtime)
            stale = time.time() - last_change > STALE_SECONDS
        if not stale:
            return
        with contextlib.suppress(FileNotFoundError):
            now = os.lstat(self.lock_path)
            if (now.st_dev, now.st_ino, now.st_mtime_ns) == (
                before.st_dev,
                before.st_ino,
                before.st_mtime_ns,
            ):
                os.unlink(self.lock_path)
