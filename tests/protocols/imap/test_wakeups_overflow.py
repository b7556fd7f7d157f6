"""When the kernel's inotify queue overflows (events lost), every watched folder is woken."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from provider.protocols.imap.wakeups import FolderWatcher


def _make_folder(path: Path) -> Path:
    for name in ("new", "cur", "tmp"):
        (path / name).mkdir(parents=True)
    return path


def _max_queued_events() -> int:
    try:
        return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    except (OSError, ValueError):
        return 16384


def test_a_queue_overflow_wakes_every_folder_even_one_without_events(tmp_path: Path) -> None:
    busy = _make_folder(tmp_path / "busy")
    quiet = _make_folder(tmp_path / "quiet")
    loop = asyncio.new_event_loop()
    try:
        watcher = FolderWatcher(loop)
        busy_changes = watcher.subscribe(busy)
        quiet_changes = watcher.subscribe(quiet)
        assert busy_changes.watched and quiet_changes.watched
        busy_waiter = busy_changes.waiter()
        quiet_waiter = quiet_changes.waiter()
        # The loop does not run meanwhile, so nothing reads the queue: more events than it
        # holds make the kernel drop the rest and queue IN_Q_OVERFLOW instead.
        target = busy / "cur" / "x"
        for _ in range(_max_queued_events() // 2 + 100):
            fd = os.open(target, os.O_CREAT | os.O_WRONLY)  # IN_CREATE … IN_CLOSE_WRITE
            os.close(fd)
            os.unlink(target)  # IN_DELETE

        async def both_woken() -> None:
            async with asyncio.timeout(10):
                await asyncio.gather(busy_waiter, quiet_waiter)

        loop.run_until_complete(both_woken())
        assert quiet_waiter.done() and busy_waiter.done()
        # After an overflow the watches still work: a later change wakes its folder again.
        again = quiet_changes.waiter()
        (quiet / "new" / "after").write_bytes(b"x")
        loop.run_until_complete(asyncio.wait_for(again, 10))
        watcher.close()
    finally:
        loop.close()
