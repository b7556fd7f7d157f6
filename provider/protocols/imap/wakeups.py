"""IDLE wake-ups: inotify on a folder's Maildir directories, whoever changed them (any process)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
# What a delivery (new/ or cur/ gains a file), a flag change (a rename in cur/), an expunge (an
# unlink) and the folder's own files (dovecot-uidlist, keywords, the modseq file: written by
# rename or in place) do to the watched directories.
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
WATCHED = ("", "new", "cur")  # relative to the folder: the folder itself (its index files)


class Changes:
    """What one IDLE session waits on: `waiter()` is a future that completes at the folder's
    next change (at once if one came since the last); never, when the folder is not watched
    (the session's poll still runs)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self._pending = False
        self.watched = False
        self.on_close: Callable[[], None] | None = None

    def notify(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        else:
            self._pending = True

    def waiter(self) -> asyncio.Future[None]:
        if self._future is None or self._future.done():
            self._future = self._loop.create_future()
            if self._pending:
                self._pending = False
                self._future.set_result(None)
        return self._future

    def close(self) -> None:
        """Stop waiting (and stop watching the folder, if this was its last session here)."""
        if self._future is not None and not self._future.done():
            self._future.cancel()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self.init1 = libc.inotify_init1
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = (ctypes.c_int, ctypes.c_int)


class FolderWatcher:
    """One inotify descriptor per event loop, watching each folder some IDLE session of this
    process is in (three watches per folder, shared by its sessions) and waking them on any
    change to it, by this process or another (LMTP, another worker, another `serve` on this
    machine). Over a network file system, changes made on another machine are not seen: the
    session's poll (IMAP_IDLE_POLL_SECONDS) still finds them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._libc = _Libc()
        fd = self._libc.init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        self.fd = fd
        self._folders: dict[str, set[Changes]] = {}
        self._watches: dict[str, list[int]] = {}
        self._by_wd: dict[int, str] = {}
        loop.add_reader(fd, self._read)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.fd)
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def subscribe(self, folder: Path) -> Changes:
        changes = Changes(self._loop)
        key = str(folder)
        if key not in self._watches and not self._add(key):
            return changes
        self._folders.setdefault(key, set()).add(changes)
        changes.watched = True
        return changes

    def subscribed(self) -> int:
        """Sessions subscribed now."""
        return sum(len(subscribers) for subscribers in self._folders.values())

    def unsubscribe(self, folder: Path, changes: Changes) -> None:
        key = str(folder)
        subscribers = self._folders.get(key)
        if subscribers is None:
            return
        subscribers.discard(changes)
        if not subscribers:
            del self._folders[key]
            for wd in self._watches.pop(key, []):
                self._by_wd.pop(wd, None)
                self._libc.rm_watch(self.fd, wd)

    def _add(self, key: str) -> bool:
        added: list[int] = []
        for name in WATCHED:
            path = os.path.join(key, name) if name else key
            wd = self._libc.add_watch(self.fd, os.fsencode(path), MASK)
            if wd < 0:
                code = ctypes.get_errno()
                for earlier in added:
                    self._by_wd.pop(earlier, None)
                    self._libc.rm_watch(self.fd, earlier)
                if code == errno.ENOSPC:
                    log.warning(
                        "inotify watch limit reached (fs.inotify.max_user_watches): IDLE "
                        "sessions fall back to polling"
                    )
                return False
            added.append(wd)
            self._by_wd[wd] = key
        self._watches[key] = added
        return True

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            log.warning("inotify read failed", exc_info=True)
            return
        woken: set[str] = set()
        gone: set[str] = set()
        offset = 0
        while offset + EVENT.size <= len(data):
            wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
            offset += EVENT.size + length
            if mask & IN_Q_OVERFLOW:  # events were lost: every folder may have changed
                woken.update(self._folders)
                continue
            key = self._by_wd.get(wd)
            if key is None:
                continue
            woken.add(key)
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                gone.add(key)
        for key in woken:
            for changes in list(self._folders.get(key, ())):
                changes.notify()
        for key in gone:  # deleted or renamed: its sessions poll from now on
            for changes in self._folders.pop(key, set()):
                changes.watched = False
            for wd in self._watches.pop(key, []):
                self._by_wd.pop(wd, None)
                self._libc.rm_watch(self.fd, wd)


# The watcher of each event loop while some session of it is IDLE (closed with the last one,
# so a stopped loop leaves no descriptor behind).
_WATCHERS: dict[asyncio.AbstractEventLoop, FolderWatcher] = {}
_UNAVAILABLE: list[str] = []  # why inotify cannot be used here, once known


def _watcher(loop: asyncio.AbstractEventLoop) -> FolderWatcher | None:
    found = _WATCHERS.get(loop)
    if found is None and not _UNAVAILABLE:
        try:
            found = _WATCHERS[loop] = FolderWatcher(loop)
        except (OSError, AttributeError) as error:
            _UNAVAILABLE.append(str(error))
            log.warning("no inotify (%s): IDLE sessions poll for changes", error)
    return found


def watch_folder(folder: Path | None) -> Changes:
    """Changes of `folder` (any process's) until the returned object is closed; call on the
    event loop. Without a folder or inotify, its waiter never completes."""
    loop = asyncio.get_running_loop()
    found = _watcher(loop) if folder is not None else None
    if found is None or folder is None:
        return Changes(loop)
    changes = found.subscribe(folder)

    def unsubscribe() -> None:
        found.unsubscribe(folder, changes)
        if not found.subscribed() and _WATCHERS.get(loop) is found:
            del _WATCHERS[loop]
            found.close()

    changes.on_close = unsubscribe
    return changes
