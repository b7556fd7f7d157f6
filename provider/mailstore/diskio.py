"""The mail store's one low-level write, and how a full disk (ENOSPC, EDQUOT) is recognised."""

from __future__ import annotations

import errno
import os

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""No space left on the device, or the system user's disk quota (not the mailbox quota) is used
up: both mean "the bytes cannot be stored now", and both are answered the same way."""


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write fewer). Every write of message data and of the
    control files goes through here, so a test can make the disk fill up at any one of them."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def is_disk_full(error: BaseException) -> bool:
    """Whether an exception (or what caused it) is ENOSPC or EDQUOT."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False
