"""Maildir++ mail store that Dovecot can serve unchanged: mailboxes, folders, delivery, UIDs, flags.

On disk (DESIGN.md §4)::

    <root>/<domain>/<local>/Maildir/         INBOX: cur/ new/ tmp/ dovecot-uidlist dovecot-keywords
    <root>/<domain>/<local>/Maildir/.Sent/   a folder: the same, plus an empty maildirfolder file
    <root>/<domain>/<local>/Maildir/.A.B/    folder "A/B" (names in modified UTF-7)
    <root>/<domain>/<local>/Maildir/dovecot-uidvalidity(.<hex>)   the UIDVALIDITY counter

Besides the messages, the state is Dovecot's own control files (dovecot-uidlist,
dovecot-keywords, dovecot-uidvalidity) and three small files of ours, names Dovecot never uses:
provider-recent (\\Recent), provider-modseq.sqlite (RFC 7162 mod-sequences) and the parsed-message
cache. What this module keeps in memory is re-checked against them on every call.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import functools
import itertools
import logging
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from provider.mailstore import diskio, names
from provider.mailstore import keywords as kw
from provider.mailstore.locking import DEFAULT_TIMEOUT, FolderLock, LockTimeout
from provider.mailstore.uidlist import (
    UIDLIST_NAME,
    UidlistCorrupt,
    UidlistFile,
    UidRecord,
    format_header,
    fsync_directory,
    new_guid,
)

log = logging.getLogger(__name__)

SEPARATOR = names.SEPARATOR
INBOX = names.INBOX
SPECIAL_USE: dict[str, str] = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
"""Folders created with every mailbox, and the RFC 6154 role LIST reports for each."""

TMP_MAX_AGE = 36 * 3600
"""tmp/ files untouched for longer than this are debris of a crashed delivery (maildir(5))."""

UNSTABLE_SECONDS = 2.0
"""On a file system with whole-second times, a directory changed this recently may change again
within the same mtime tick: re-list it."""
TICK_MARGIN_SECONDS = 0.05
"""With sub-second times: a listing made this long after the directory's mtime saw every change
up to it; any later change moves the mtime (the kernel's timestamp clock lags by one tick at
most, a few milliseconds)."""
# Our own small file in a folder: "<uidvalidity> <lowest UID still \Recent>".
RECENT_NAME = "provider-recent"
MODSEQ_NAME = "provider-modseq.sqlite"
"""Per-folder mod-sequences (RFC 7162): the letters each message had when it got its modseq."""
MODSEQ_BUSY_SECONDS = 10.0
# QRESYNC (RFC 7162 §3.2): the expunged UIDs remembered per folder, with the modseq each went
# at. Past this the oldest are forgotten, and a client asking from before them is told of every
# UID of its set that is not here any more (the superset RFC 7162 §3.2.6 allows).
MAX_EXPUNGED_REMEMBERED = 50_000

READ_LOCK_WAIT = 0.5
"""How long a reader waits for the lock to give UIDs to new files before leaving them for later."""

UIDVALIDITY_NAME = "dovecot-uidvalidity"

EARLIEST_INTERNAL_DATE = 0
LATEST_INTERNAL_DATE = 2**32 - 1
"""Internal dates the store keeps (as the file's mtime): 1970-01-01 to 2106-02-07 06:28:15 UTC.
Dovecot's index holds the received date as an unsigned 32-bit time, and many file systems
hold no more (ext4 stops in 2446, older ones in 2038 or 1901): a date outside is refused,
never changed silently."""

SYSTEM_FLAG_LETTERS: dict[str, str] = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
"""IMAP system flags and their Maildir info letters (kept in ASCII order in file names).

"P" (maildir's "passed") is not mapped to ``$Forwarded``: Dovecot ignores it, and so do we, but
like Dovecot we keep it (and any other letter we do not know) when the flags change.
``$Forwarded`` is an ordinary keyword, stored through dovecot-keywords.
"""

_LETTER_FLAGS = {letter: flag for flag, letter in SYSTEM_FLAG_LETTERS.items()}
_FLAG_BY_FOLDED = {flag.casefold(): flag for flag in SYSTEM_FLAG_LETTERS}
_SIZE_FIELD = re.compile(r",S=(\d+)")
# Our own basename field (Dovecot ignores it): the APPEND date-time's zone, ",Z=+0200".
_ZONE_FIELD = re.compile(r",Z=([+-])(\d\d)(\d\d)")
_DELIVERY_TIME = re.compile(r"^(\d+)(?:\.M(\d+))?")
_LOCAL_PART = re.compile(r"[a-z0-9_+=-]+(\.[a-z0-9_+=-]+)*")
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+")
_counter = itertools.count(1)


# --- errors -------------------------------------------------------------------------------------


class MailstoreError(Exception):
    """Base of the mail store's errors; the message is fit to show to an administrator."""


class MailboxMissing(MailstoreError):
    """No mailbox directory for that address (MailStore.create was never called)."""


class FolderNotFound(MailstoreError):
    """No folder by that name."""


class FolderExists(MailstoreError):
    """A folder by that name already exists."""


class InvalidFolderName(MailstoreError, ValueError):
    """A folder name the store refuses (the message says why), or an operation INBOX forbids."""


class InvalidAddress(MailstoreError, ValueError):
    """An address that cannot safely name a directory under the store's root."""


class InvalidFlag(MailstoreError, ValueError):
    """Not an IMAP system flag we can store, or not a valid keyword."""


class MailstoreBusy(MailstoreError):
    """The folder stayed locked for the whole bounded wait; try again later."""


class InvalidDate(MailstoreError, ValueError):
    """An internal date outside what the store can keep (EARLIEST/LATEST_INTERNAL_DATE)."""


class TooManyKeywords(MailstoreError):
    """A folder can name at most 26 keywords (the letters a-z in Maildir file names), and these
    new ones (`names`) do not fit."""

    def __init__(self, names: list[str]) -> None:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        super().__init__(
            f"This folder already names the {kw.MAX_KEYWORDS} keywords Maildir can hold, so "
            f"{shown} cannot be added"
        )
        self.names = names


class StorageFull(MailstoreError):
    """No space left on the disk (ENOSPC), or the system's disk quota is used up (EDQUOT). The
    write was undone: nothing half-written stays in tmp/, new/, cur/ or the uidlist."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _disk_full_is_storage_full(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn ENOSPC and EDQUOT raised by a write path into StorageFull (the method has already
    undone its own partial work on the way out)."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except OSError as error:
            if not diskio.is_disk_full(error):
                raise
            raise StorageFull(f"not enough disk space ({error.strerror})") from error

    return wrapper


class MessageNotFound(MailstoreError, KeyError):
    """No message with that UID (any more) in the folder."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredMessage:
    uid: int
    uidvalidity: int
    basename: str
    size: int
    path: Path
    # Keywords asked for that the folder had no letter left for (it names 26): not stored.
    dropped_keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class MessageInfo:
    uid: int
    basename: str
    path: Path
    size: int
    flags: frozenset[str]
    keywords: frozenset[str]
    internal_date: float
    recent: bool
    # The time zone the internal date was given in (APPEND), minutes east of UTC.
    zone_minutes: int = 0


@dataclass(frozen=True)
class Modseqs:
    """Mod-sequences (RFC 7162) of a folder's messages, as of one sync: treat as read-only."""

    highest: int
    by_uid: dict[int, int]


@dataclass(frozen=True)
class ExpungedSince:
    """UIDs expunged after a modseq (RFC 7162 §3.2), as the folder remembers them. `complete`
    is False when expunges after that modseq may have been forgotten (pruned history, a
    rebuilt modseq file): the caller must then treat every missing UID as expunged."""

    uids: list[int]
    complete: bool


@dataclass(frozen=True)
class FolderSnapshot:
    version: int
    messages: list[MessageInfo] | None
    uidvalidity: int
    uidnext: int
    # Only when asked for: the mod-sequences of exactly these messages.
    modseqs: Modseqs | None = None
    # The keywords the folder names (in letter order), as of the same sync.
    keywords: tuple[str, ...] = ()
    # Only when asked for (QRESYNC): the UIDs expunged after a modseq, as of the same sync.
    expunged: ExpungedSince | None = None


@dataclass(frozen=True)
class FolderInfo:
    name: str
    special_use: str | None
    path: Path


@dataclass(frozen=True)
class IncomingMessage:
    """One message for Folder.deliver_many (an APPEND with several messages, COPY, restore)."""

    data: bytes
    flags: Iterable[str] = ()
    keywords: Iterable[str] = ()
    internal_date: float | None = None
    zone_minutes: int | None = None
    source: Path | None = None
    """A message file of the same Maildir holding exactly `data` (COPY's and MOVE's original):
    the new file is a hard link to it, as Dovecot's maildir_copy_with_hardlinks, so nothing is
    written or fsynced but the directory; the bytes are written when linking is not possible
    (another file system, the original renamed or expunged meanwhile)."""


# An expunge leaves its uidlist lines until this many name no file, then rewrites the file
# without them: as Dovecot, which rewrites dovecot-uidlist only now and then. A line without a
# file is a message already gone to every reader (a listing decides what exists); rewriting
# the whole uidlist on every EXPUNGE cost two more listings, a write and two fsyncs.
_STALE_UIDLIST_LINES = 64

# Why os.link may refuse where writing the bytes works: another file system (a folder on
# another mount), no hard links at all, or too many links to one file.
_NO_HARD_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})


def link_file(source: Path, target: Path) -> None:
    """os.link, named so tests can make it fail."""
    os.link(source, target)


# --- file names ---------------------------------------------------------------------------------


def _hostname() -> str:
    # Dovecot's escaping, so that "/" and ":" never reach a file name.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def unique_basename() -> str:
    """``<secs>.M<usecs>P<pid>Q<counter>.<hostname>``: unique per host, process and call."""
    secs, usecs = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{secs}.M{usecs}P{os.getpid()}Q{next(_counter)}.{_hostname()}"


def zone_minutes(basename: str) -> int:
    """The internal date's zone kept in the name (",Z=+0200" → 120), else 0 (UTC)."""
    match = _ZONE_FIELD.search(basename) if ",Z=" in basename else None
    if match is None:
        return 0
    minutes = int(match.group(2)) * 60 + int(match.group(3))
    return -minutes if match.group(1) == "-" else minutes


def save_date(basename: str) -> float | None:
    """When the message was saved in its folder (RFC 8514 save date): the time at the start of
    its file name, which `unique_basename` writes when the file is created in this folder's
    tmp/ (APPEND, COPY, MOVE and delivery each write a new file; a flag change renames it but
    keeps the basename). Dovecot and other Maildir writers name files the same way. None for a
    name that does not start with a time, or one outside the range an internal date can have."""
    match = _DELIVERY_TIME.match(basename)
    if match is None:
        return None
    if len(match.group(1)) > 10 or len(match.group(2) or "") > 6:
        return None
    seconds = int(match.group(1))
    if not EARLIEST_INTERNAL_DATE < seconds < LATEST_INTERNAL_DATE:
        return None
    return seconds + int(match.group(2) or 0) / 1_000_000


def virtual_size(data: bytes) -> int:
    """Size with every bare LF counted as CRLF (Dovecot's W=, the IMAP RFC822.SIZE)."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def info_letters(flags: Iterable[str], keyword_letters: Iterable[str] = ()) -> str:
    """The letters after ``:2,`` for system flags and keyword letters, in ASCII order."""
    return "".join(sorted(set(_system_letters(flags)) | set(keyword_letters)))


@dataclass(frozen=True)
class _Entry:
    subdir: str
    filename: str
    basename: str
    letters: str
    size: int | None


def _parse_filename(subdir: str, filename: str) -> _Entry:
    basename, _, info = filename.partition(":")
    letters = info[2:].split(",", 1)[0] if info.startswith("2,") else ""
    size = _SIZE_FIELD.search(basename)
    return _Entry(subdir, filename, basename, letters, int(size.group(1)) if size else None)


def _listing_is_complete(mtime_ns: int, listed_at: float) -> bool:
    """Whether a listing started at `listed_at` of a directory whose mtime (read before it)
    was `mtime_ns` can be trusted until the mtime moves: any change after the listing must
    then show as a new mtime. Whole-second mtimes need UNSTABLE_SECONDS (Dovecot's rule)."""
    age = listed_at - mtime_ns / 1e9
    if mtime_ns % 1_000_000_000 == 0:
        return age > UNSTABLE_SECONDS
    return age > TICK_MARGIN_SECONDS


def _delivery_order(basename: str) -> tuple[int, int, str]:
    """Sort key for files that need UIDs: delivery time from the name, then the name."""
    match = _DELIVERY_TIME.match(basename)
    if match is None:
        return (2**63, 0, basename)
    return (int(match.group(1)), int(match.group(2) or 0), basename)


def _system_letters(flags: Iterable[str]) -> list[str]:
    if isinstance(flags, str):
        raise InvalidFlag("flags must be a collection of flag names, not one string")
    letters = []
    for flag in flags:
        known = _FLAG_BY_FOLDED.get(str(flag).casefold())
        if known is None:
            if str(flag).startswith("\\"):
                raise InvalidFlag(f"{flag} is not a flag that can be stored")
            raise InvalidFlag(f"{flag!r} is not a system flag; pass keywords separately")
        letters.append(SYSTEM_FLAG_LETTERS[known])
    return letters


def _checked_keywords(keywords: Iterable[str]) -> list[str]:
    if isinstance(keywords, str):
        raise InvalidFlag("keywords must be a collection of names, not one string")
    result: list[str] = []
    for keyword in keywords:
        try:
            kw.check_keyword(keyword)
        except ValueError as error:
            raise InvalidFlag(str(error)) from error
        if keyword.casefold() not in {k.casefold() for k in result}:
            result.append(keyword)
    return result


def keepable_date(timestamp: float) -> float:
    """A message file's mtime as an internal date the store keeps: one set outside the range
    (`touch`, a migrated file) is shown, copied and restored as the nearest end of it, rather
    than making COPY, MOVE, the POP3 archive or a restore of that message fail."""
    return min(max(timestamp, EARLIEST_INTERNAL_DATE), LATEST_INTERNAL_DATE)


def check_internal_date(timestamp: float | None) -> None:
    """InvalidDate unless the store can keep this internal date exactly."""
    if timestamp is not None and not (EARLIEST_INTERNAL_DATE <= timestamp <= LATEST_INTERNAL_DATE):
        raise InvalidDate(
            "the internal date must be between 1970-01-01 and 2106-02-07 06:28:15 UTC"
        )


# --- mod-sequences (RFC 7162 CONDSTORE) -----------------------------------------------------------

# sqlite3 error codes that mean the file cannot be trusted (primary code: the low byte).
_SQLITE_ERROR, _SQLITE_CORRUPT, _SQLITE_NOTADB = 1, 11, 26


def _next_modseq(last: int) -> int:
    """A modseq above `last` and never below the clock in microseconds, so that a lost or
    replaced file cannot make the folder's values go backwards."""
    return max(last + 1, time.time_ns() // 1000)


class _ModseqFile:
    """provider-modseq.sqlite: for each message (by basename) the info letters and UID it had
    when it last got a modseq, the folder's highest modseq, and (QRESYNC) the UIDs of messages
    that went, with the modseq their going was given.

    A message whose letters differ from the recorded ones (a flag change by anyone, Dovecot
    included), or that has no record (a delivery), gets a fresh modseq; records of messages that
    are gone are dropped and raise the highest modseq. All of it in one write transaction, so
    processes sharing the folder agree: the first to notice a change numbers it, the others find
    the letters recorded and take that value. Caller holds the folder state's thread lock.

    Expunge history: `complete_after` (meta) is the modseq from which every expunge is in the
    `expunged` table; a file created now starts it at its first value (clients holding older
    values learnt them from a lost file), a file from before QRESYNC at its highest, and
    pruning past MAX_EXPUNGED_REMEMBERED raises it to the newest modseq forgotten.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connection: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None
        self.data_version: int | None = None
        self.records: dict[str, tuple[str, int, int]] = {}
        self.highest = 0
        self.complete_after: int | None = None
        # The highest value this process saw in any incarnation of the file.
        self.floor = 0

    def close(self) -> None:
        connection, self.connection, self.identity = self.connection, None, None
        self.data_version, self.records, self.highest = None, {}, 0
        self.complete_after = None
        if connection is not None:
            connection.close()

    def discard(self) -> None:
        """Remove a damaged file: every message then gets a fresh, higher modseq."""
        self.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def _connect(self) -> sqlite3.Connection:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self.connection is not None:
            if st is not None and (st.st_dev, st.st_ino) == self.identity:
                return self.connection
            self.close()  # deleted or replaced: follow the file on disk
        connection = sqlite3.connect(
            self.path, timeout=MODSEQ_BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS message (basename TEXT PRIMARY KEY,"
                " letters TEXT NOT NULL, uid INTEGER NOT NULL, modseq INTEGER NOT NULL)"
            )
            connection.execute(
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )
            connection.execute(
                "CREATE TABLE IF NOT EXISTS expunged (uidvalidity INTEGER NOT NULL,"
                " uid INTEGER NOT NULL, modseq INTEGER NOT NULL, PRIMARY KEY (uidvalidity, uid))"
            )
            connection.execute("CREATE INDEX IF NOT EXISTS expunged_by_modseq ON expunged (modseq)")
            st = os.stat(self.path)
        except BaseException:
            connection.close()
            raise
        self.connection, self.identity = connection, (st.st_dev, st.st_ino)
        return connection

    def _load(self, connection: sqlite3.Connection) -> None:
        self.records = {
            str(basename): (str(letters), int(uid), int(modseq))
            for basename, letters, uid, modseq in connection.execute(
                "SELECT basename, letters, uid, modseq FROM message"
            )
        }
        row = connection.execute("SELECT value FROM meta WHERE name = 'highest'").fetchone()
        self.highest = int(row[0]) if row else 0
        self.floor = max(self.floor, self.highest)
        row = connection.execute("SELECT value FROM meta WHERE name = 'complete_after'").fetchone()
        self.complete_after = int(row[0]) if row else None

    def _differences(
        self, current: dict[str, tuple[str, int]], next_uid: int
    ) -> tuple[list[str], list[str]]:
        """Messages to number again, and records of messages that are gone. A record whose UID
        is at least `next_uid` belongs to a delivery this process has not seen yet: kept."""
        records = self.records
        stale = [b for b, seen in current.items() if records.get(b, ("",))[:2] != seen]
        gone = [b for b, r in records.items() if r[1] < next_uid and b not in current]
        return stale, gone

    def reconcile(
        self,
        current_of: Callable[[], dict[str, tuple[str, int]]],
        next_uid: int,
        known: bool,
        uidvalidity: int = 0,
    ) -> bool:
        """Bring the file up to date with the folder's messages, `current_of()` (basename →
        (letters, UID)); `known` says they are what the last call saw, so that nothing needs
        comparing unless another process wrote. True when the records may have changed."""
        connection = self._connect()
        version = connection.execute("PRAGMA data_version").fetchone()[0]
        changed = version != self.data_version
        if changed:
            self._load(connection)
            self.data_version = version
        elif known:
            return False
        current = current_of()
        stale, gone = self._differences(current, next_uid)
        if self.highest and self.complete_after is not None and not stale and not gone:
            return changed
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA data_version").fetchone()[0]
            if version != self.data_version:
                self._load(connection)
                self.data_version = version
                stale, gone = self._differences(current, next_uid)
            last = max(self.highest, self.floor)
            rows: list[tuple[str, str, int, int]] = []
            for basename in sorted(stale, key=lambda b: current[b][1]):
                last = _next_modseq(last)
                letters, uid = current[basename]
                rows.append((basename, letters, uid, last))
            if gone or not (self.highest or rows):
                last = _next_modseq(last)
            if rows:
                connection.executemany(
                    "INSERT OR REPLACE INTO message (basename, letters, uid, modseq)"
                    " VALUES (?, ?, ?, ?)",
                    rows,
                )
            if gone:
                connection.executemany(
                    "DELETE FROM message WHERE basename = ?", [(b,) for b in gone]
                )
                connection.executemany(
                    "INSERT OR REPLACE INTO expunged (uidvalidity, uid, modseq) VALUES (?, ?, ?)",
                    [(uidvalidity, self.records[b][1], last) for b in gone],
                )
            complete_after = self.complete_after
            if complete_after is None:
                # A new file: values before its first are another file's, whose expunges are
                # lost. A file from before QRESYNC: its expunges up to now were not kept.
                complete_after = self.highest or last
            if gone:
                complete_after = max(complete_after, self._prune(connection))
            if complete_after != self.complete_after:
                connection.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('complete_after', ?)",
                    (complete_after,),
                )
            if last != self.highest:
                connection.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('highest', ?)", (last,)
                )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        for basename, letters, uid, modseq in rows:
            self.records[basename] = (letters, uid, modseq)
        for basename in gone:
            del self.records[basename]
        self.highest = last
        self.complete_after = complete_after
        self.floor = max(self.floor, last)
        return True

    @staticmethod
    def _prune(connection: sqlite3.Connection) -> int:
        """Forget the oldest expunges beyond MAX_EXPUNGED_REMEMBERED (all those sharing the
        cut's modseq too); the newest modseq forgotten, 0 when none was."""
        row = connection.execute(
            "SELECT modseq FROM expunged ORDER BY modseq DESC LIMIT 1 OFFSET ?",
            (MAX_EXPUNGED_REMEMBERED,),
        ).fetchone()
        if row is None:
            return 0
        connection.execute("DELETE FROM expunged WHERE modseq <= ?", (row[0],))
        return int(row[0])

    def expunged_since(self, uidvalidity: int, modseq: int) -> ExpungedSince:
        """The UIDs (of this UIDVALIDITY) expunged after `modseq`, as last reconciled."""
        connection = self._connect()
        uids = [
            int(uid)
            for (uid,) in connection.execute(
                "SELECT uid FROM expunged WHERE uidvalidity = ? AND modseq > ? ORDER BY uid",
                (uidvalidity, modseq),
            )
        ]
        complete_after = self.complete_after
        return ExpungedSince(uids, complete_after is not None and modseq >= complete_after)


# --- per-folder cache shared by every Folder object on the same directory in this process --------


@dataclass(eq=False)
class _FolderState:
    path: Path
    lock: threading.RLock = field(default_factory=threading.RLock)
    held: FolderLock | None = None
    uidlist: UidlistFile = field(init=False)
    keywords: kw.KeywordFile = field(init=False)
    # Directory listings, re-read only when a directory's mtime moved (or was too recent).
    listing: dict[str, dict[str, _Entry]] = field(default_factory=lambda: {"new": {}, "cur": {}})
    dir_signature: dict[str, tuple[int, int] | None] = field(
        default_factory=lambda: {"new": None, "cur": None}
    )
    dir_stable: dict[str, bool] = field(default_factory=lambda: {"new": False, "cur": False})
    by_basename: dict[str, _Entry] = field(default_factory=dict)
    listing_version: int = 0
    # What changed in the listings since the last build: additions alone allow an append.
    added: set[str] = field(default_factory=set)
    removed: bool = False
    # The built result, and what it was built from.
    infos: list[MessageInfo] = field(default_factory=list)
    by_uid: dict[int, MessageInfo] = field(default_factory=dict)
    built_from: dict[int, _Entry] = field(default_factory=dict)
    built: tuple[object, ...] | None = None
    # Changes whenever `infos` does; unique in the process, so a replaced state never repeats one.
    version: int = field(default_factory=lambda: next(_versions))
    # The \Recent marker (RECENT_NAME) as last read: lowest unclaimed UID, file signature.
    first_recent: int = 0
    recent_signature: tuple[object, ...] | None = None
    # Mod-sequences (MODSEQ_NAME), worked out only when someone asks (a CONDSTORE client).
    modseq_file: _ModseqFile = field(init=False)
    modseqs: Modseqs | None = None
    modseqs_version: int | None = None

    def __post_init__(self) -> None:
        self.uidlist = UidlistFile(self.path / UIDLIST_NAME)
        self.keywords = kw.KeywordFile(self.path / kw.KEYWORDS_NAME)
        self.modseq_file = _ModseqFile(self.path / MODSEQ_NAME)


_versions = itertools.count(1)
_STATES: OrderedDict[str, _FolderState] = OrderedDict()
_STATES_LOCK = threading.Lock()
_MAX_STATES = 256


def _state_for(path: Path) -> _FolderState:
    key = str(path)
    dropped: list[_FolderState] = []
    with _STATES_LOCK:
        state = _STATES.get(key)
        if state is None:
            state = _STATES[key] = _FolderState(path)
        _STATES.move_to_end(key)
        while len(_STATES) > _MAX_STATES:
            dropped.append(_STATES.popitem(last=False)[1])
    _close_dropped(dropped)
    return state


def _close_dropped(states: Iterable[_FolderState]) -> None:
    """Close the modseq databases of states no longer cached (unless one is in use right now:
    a Folder object may still hold its state, and would simply reconnect)."""
    for state in states:
        if state.lock.acquire(blocking=False):
            try:
                state.modseq_file.close()
            finally:
                state.lock.release()


def _forget_states(path: Path) -> None:
    prefix = str(path)
    with _STATES_LOCK:
        keys = [k for k in _STATES if k == prefix or k.startswith(prefix + os.sep)]
        dropped = [_STATES.pop(key) for key in keys]
    _close_dropped(dropped)


def forget_cached_state() -> None:
    """Drop every folder's in-memory cache, as a restarted process would have none."""
    with _STATES_LOCK:
        dropped = list(_STATES.values())
        _STATES.clear()
    _close_dropped(dropped)


class _Moved(Exception):
    """A file was renamed between listing and stat: list again."""


# --- folders ------------------------------------------------------------------------------------


class Folder:
    """One Maildir folder: its messages, their UIDs (dovecot-uidlist) and flags (file names)."""

    def __init__(self, maildir: Maildir, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._maildir = maildir
        self._state = _state_for(path)

    def __repr__(self) -> str:
        return f"Folder({self.name!r}, {str(self.path)!r})"

    @property
    def uidvalidity(self) -> int:
        with self._state.lock:
            self._sync()
            return self._state.uidlist.uidvalidity

    @property
    def uidnext(self) -> int:
        with self._state.lock:
            self._sync()
            return self._state.uidlist.next_uid

    # --- reading

    def messages(self) -> list[MessageInfo]:
        """Every message, by ascending UID. Files without a UID get one now; vanished ones drop
        out. Cheap when nothing changed: a few stat() calls and a list copy."""
        with self._state.lock:
            self._sync()
            return list(self._state.infos)

    def snapshot(
        self,
        known_version: int | None = None,
        *,
        modseqs: bool = False,
        expunged_since: int | None = None,
    ) -> FolderSnapshot:
        """The folder after a sync, in one step: its messages (None when they are still those
        of `known_version`: nothing to compare), UIDVALIDITY and UIDNEXT, with `modseqs` the
        mod-sequences of those very messages, and with `expunged_since` the UIDs expunged
        after that modseq (QRESYNC; implies `modseqs`)."""
        with self._state.lock:
            self._sync()
            state = self._state
            messages = None if known_version == state.version else list(state.infos)
            numbered = self._modseqs() if modseqs or expunged_since is not None else None
            expunged = None
            if expunged_since is not None:
                expunged = self._expunged_since(expunged_since)
            return FolderSnapshot(
                state.version,
                messages,
                state.uidlist.uidvalidity,
                state.uidlist.next_uid,
                numbered,
                state.keywords.ordered_names(),
                expunged,
            )

    # --- mod-sequences (RFC 7162): worked out when asked for, never on the plain paths

    def modseqs(self) -> Modseqs:
        """Every message's modseq and the folder's highest, after a sync. A message changed by
        anyone since the last look (flags, delivery) gets a new value now; the values are kept
        in provider-modseq.sqlite, shared by every process, and never go backwards."""
        with self._state.lock:
            self._sync()
            return self._modseqs()

    def expunged_since(self, modseq: int) -> ExpungedSince:
        """The UIDs expunged after `modseq` (RFC 7162 §3.2), after a sync and a reconcile (so an
        expunge by anyone, Dovecot included, is numbered now if nobody had looked yet)."""
        with self._state.lock:
            self._sync()
            self._modseqs()
            return self._expunged_since(modseq)

    def _expunged_since(self, modseq: int) -> ExpungedSince:
        """(Caller holds the state lock and has reconciled the modseqs.)"""
        try:
            return self._state.modseq_file.expunged_since(self._state.uidlist.uidvalidity, modseq)
        except sqlite3.Error as error:
            raise MailstoreBusy(f"{self.path / MODSEQ_NAME}: {error}") from error

    def _modseqs(self) -> Modseqs:
        """(Caller holds the state lock and has synced.)"""
        state = self._state
        known = state.modseqs is not None and state.modseqs_version == state.version

        def current() -> dict[str, tuple[str, int]]:
            return {entry.basename: (entry.letters, uid) for uid, entry in state.built_from.items()}

        modseq_file = state.modseq_file
        changed = False
        for attempt in range(2):
            try:
                changed = modseq_file.reconcile(
                    current, state.uidlist.next_uid, known, state.uidlist.uidvalidity
                )
                break
            except sqlite3.Error as error:
                code = (getattr(error, "sqlite_errorcode", None) or 0) & 0xFF
                modseq_file.close()
                if attempt or code not in (_SQLITE_ERROR, _SQLITE_CORRUPT, _SQLITE_NOTADB):
                    raise MailstoreBusy(f"{self.path / MODSEQ_NAME}: {error}") from error
                log.warning("%s: %s; giving every message a new modseq", self.path, error)
                modseq_file.discard()
                known = False
        if state.modseqs is None or changed or not known:
            records = modseq_file.records
            by_uid = {
                uid: records[entry.basename][2]
                for uid, entry in state.built_from.items()
                if entry.basename in records
            }
            state.modseqs = Modseqs(modseq_file.highest, by_uid)
            state.modseqs_version = state.version
        return state.modseqs

    def change_flags_unchanged_since(
        self,
        uids: Iterable[int],
        since: int,
        mode: Literal["replace", "add", "remove"],
        flags: Iterable[str],
        keywords: Iterable[str] = (),
    ) -> tuple[list[MessageInfo], list[int], Modseqs]:
        """STORE with UNCHANGEDSINCE (RFC 7162 §3.1.3): change only the messages whose modseq
        is at most `since`. Returns the messages changed (or left as they were), the UIDs that
        failed the test, and the modseqs afterwards. Other sessions of this process wait; another
        process can still slip a change between the test and the rename."""
        flags, keywords = list(flags), list(keywords)
        state = self._state
        with state.lock:
            self._sync()
            before = self._modseqs().by_uid
            done: list[MessageInfo] = []
            failed: list[int] = []
            for uid in uids:
                if uid not in before:
                    continue
                if before[uid] > since:
                    failed.append(uid)
                    continue
                with contextlib.suppress(MessageNotFound):
                    done.append(self.change_flags(uid, mode, flags, keywords))
            self._sync()
            return done, failed, self._modseqs()

    # --- \Recent (RFC 3501 §2.3.2): the first session to be told of a message gets it

    def recent_from(self) -> int:
        """The lowest UID still \\Recent: every message from it up is recent for the next
        session that claims it (EXAMINE and STATUS only look)."""
        with self._state.lock:
            self._sync()
            return self._read_recent()

    def claim_recent(self, up_to: int) -> int:
        """Claim \\Recent for the messages up to UID `up_to` and return the lowest UID that
        was still unclaimed: the caller's recent messages are those from it to `up_to`, and no
        later claim, in this process or another, gets them again."""
        state = self._state
        with state.lock:
            self._sync()
            # It only grows: nothing left to claim. (Without a marker yet, write one, so that
            # messages stored later with flags, in cur/, are recent too.)
            if self._read_recent() > up_to and state.recent_signature is not None:
                return up_to + 1
            with self._lock():
                first = self._read_recent()
                if first <= up_to or state.recent_signature is None:
                    self._write_recent(max(first, up_to + 1))
                return first

    def _read_recent(self) -> int:
        state = self._state
        path = self.path / RECENT_NAME
        uidvalidity = state.uidlist.uidvalidity
        try:
            st = os.stat(path)
        except FileNotFoundError:
            signature = None
        else:
            signature = (st.st_ino, st.st_mtime_ns, st.st_size, uidvalidity)
        if signature is not None and signature == state.recent_signature:
            return state.first_recent
        value: int | None = None
        if signature is not None:
            with contextlib.suppress(OSError, ValueError):
                words = path.read_text("ascii").split()
                if len(words) == 2 and int(words[0]) == uidvalidity:
                    value = int(words[1])
        if value is None:
            # No marker (yet), or one from before a UIDVALIDITY change: what is still in new/
            # is recent, as Dovecot treats a Maildir it has no index for.
            in_new = [info.uid for info in state.infos if info.recent]
            value = min(in_new) if in_new else state.uidlist.next_uid
        state.first_recent, state.recent_signature = value, signature
        return value

    def _write_recent(self, first: int) -> None:
        """Replace the marker (caller holds the folder lock). Not fsynced: if it is lost, some
        messages are simply \\Recent once more."""
        state = self._state
        uidvalidity = state.uidlist.uidvalidity
        path = self.path / RECENT_NAME
        temp = path.with_name(RECENT_NAME + ".tmp")
        try:
            temp.write_text(f"{uidvalidity} {first}\n", "ascii")
            os.replace(temp, path)
        except OSError as error:
            if not diskio.is_disk_full(error):
                raise
            # A full disk must not stop SELECT: these messages are \Recent once more later.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            log.warning("%s: \\Recent marker not updated: %s", self.path, error)
            return
        st = os.stat(path)
        state.first_recent = first
        state.recent_signature = (st.st_ino, st.st_mtime_ns, st.st_size, uidvalidity)

    def get(self, uid: int) -> MessageInfo:
        with self._state.lock:
            self._sync()
            info = self._state.by_uid.get(uid)
        if info is None:
            raise MessageNotFound(f"no message with UID {uid} in {self.name}")
        return info

    def read(self, uid: int) -> bytes:
        """The message exactly as stored (it may have moved since the last listing: retried)."""
        for attempt in range(4):
            with self._state.lock:
                if attempt or self._state.built is None:
                    self._sync(force=attempt > 1)
                info = self._state.by_uid.get(uid)
            if info is None:
                if attempt == 0:
                    continue
                break
            try:
                return info.path.read_bytes()
            except FileNotFoundError:
                continue
        raise MessageNotFound(f"no message with UID {uid} in {self.name}")

    # --- writing

    def deliver(
        self,
        data: bytes,
        *,
        flags: Iterable[str] = (),
        keywords: Iterable[str] = (),
        internal_date: float | None = None,
    ) -> StoredMessage:
        """Store one message crash-safely (RELIABILITY D1) and give it the next UID.

        tmp/<unique> → write, fsync → take the folder lock → hard link into new/ (cur/ when
        flags or keywords are given; never over an existing name) → fsync the directory →
        append its UID to dovecot-uidlist, fsynced → release. If any step fails, nothing is left
        in new/, cur/ or the uidlist, and the exception propagates.
        """
        [stored] = self.deliver_many(
            [IncomingMessage(data, flags=flags, keywords=keywords, internal_date=internal_date)]
        )
        return stored

    @_disk_full_is_storage_full
    def deliver_many(self, messages: Iterable[IncomingMessage]) -> list[StoredMessage]:
        """Store several messages all or nothing (RFC 3501 §6.3.11 / §6.4.7, RELIABILITY P6);
        they get consecutive ascending UIDs, in order."""
        prepared: list[tuple[bytes, list[str], list[str], float | None, int | None]] = []
        sources: list[Path | None] = []
        for message in messages:
            sources.append(message.source)
            if not isinstance(message.data, bytes | bytearray | memoryview):
                raise TypeError("message data must be bytes")
            check_internal_date(message.internal_date)
            prepared.append(
                (
                    bytes(message.data),
                    _system_letters(message.flags),
                    _checked_keywords(message.keywords),
                    message.internal_date,
                    message.zone_minutes,
                )
            )
        if not prepared:
            return []
        # Keywords beyond the 26 a folder can name are dropped (and reported), never a reason
        # to refuse the message: Dovecot keeps them in its index only, which we do not have.
        letters_by_keyword = self._keyword_letters(
            [k for p in prepared for k in p[2]], all_or_nothing=False
        )
        dropped: list[tuple[str, ...]] = []
        created: list[Path] = []
        try:
            plan: list[tuple[Path, str, str | None, int]] = []
            for (data, flag_letters, names_, internal_date, zone), source in zip(
                prepared, sources, strict=True
            ):
                linked = self._link_temp(source, internal_date) if source is not None else None
                temp, base = linked or self._write_temp(data, internal_date)
                created.append(temp)
                letters = None
                dropped.append(tuple(n for n in names_ if n.casefold() not in letters_by_keyword))
                if flag_letters or names_:
                    keyword_letters = [
                        letters_by_keyword[n.casefold()]
                        for n in names_
                        if n.casefold() in letters_by_keyword
                    ]
                    letters = "".join(sorted(set(flag_letters) | set(keyword_letters)))
                basename = f"{base},S={len(data)},W={virtual_size(data)}"
                if zone:
                    sign, minutes = "+" if zone > 0 else "-", abs(zone)
                    basename += f",Z={sign}{minutes // 60:02d}{minutes % 60:02d}"
                plan.append((temp, basename, letters, len(data)))
            # Files enter new/ and cur/ only under the lock, as in Dovecot's maildir-save.c:
            # otherwise another process could number (and even expunge) a message whose
            # delivery has not returned yet.
            with self._state.lock, self._lock():
                placed: list[tuple[Path, str, int]] = []
                for temp, basename, letters, size in plan:
                    final, basename = self._place(temp, basename, letters)
                    created.append(final)
                    placed.append((final, basename, size))
                for directory in sorted({final.parent for final, _, _ in placed}):
                    fsync_directory(directory)
                uids, uidvalidity = self._assign_uids([basename for _, basename, _ in placed])
        except BaseException:
            for path in created:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise
        return [
            StoredMessage(uid, uidvalidity, basename, size, final, lost)
            for uid, (final, basename, size), lost in zip(uids, placed, dropped, strict=True)
        ]

    def set_flags(
        self, uid: int, flags: Iterable[str], keywords: Iterable[str] = ()
    ) -> MessageInfo:
        """Replace the message's flags and keywords (a rename within cur/, or new/ → cur/)."""
        return self.change_flags(uid, "replace", flags, keywords)

    @_disk_full_is_storage_full
    def change_flags(
        self,
        uid: int,
        mode: Literal["replace", "add", "remove"],
        flags: Iterable[str],
        keywords: Iterable[str] = (),
    ) -> MessageInfo:
        """Replace, add or remove flags and keywords (IMAP STORE FLAGS, +FLAGS, -FLAGS).

        The result is worked out from the file's name at the moment of the rename, after a
        sync, so a flag someone else set meanwhile is kept (RFC 3501 §6.4.6). Letters we do
        not know ("P", or keyword letters without a name) are kept, as Dovecot keeps them.
        """
        system = set(_system_letters(flags))
        wanted = _checked_keywords(keywords)
        given: set[str] = set()
        if mode != "remove":
            letters_by_keyword = self._keyword_letters(wanted, all_or_nothing=True)
            given = {letters_by_keyword[name.casefold()] for name in wanted}
        removed_names = {name.casefold() for name in wanted}
        state = self._state
        with state.lock:
            for attempt in range(5):
                self._sync(force=attempt > 1)
                info = state.by_uid.get(uid)
                if info is None:
                    continue
                old = _parse_filename("new" if info.recent else "cur", info.path.name)
                named = {kw.letter(index) for index in state.keywords.names}
                current_system = {c for c in old.letters if c in _LETTER_FLAGS}
                current_keywords = {c for c in old.letters if c in named}
                kept = {c for c in old.letters if c not in _LETTER_FLAGS and c not in named}
                if mode == "replace":
                    chosen = system | given
                elif mode == "add":
                    chosen = current_system | system | current_keywords | given
                else:
                    chosen = (current_system - system) | {
                        c
                        for c in current_keywords
                        if not {n.casefold() for n in state.keywords.names_for(c)} & removed_names
                    }
                letters = "".join(sorted(chosen | kept))
                target = self.path / "cur" / f"{info.basename}:2,{letters}"
                if target == info.path:
                    return info
                try:
                    os.rename(info.path, target)
                except FileNotFoundError:
                    continue
                updated = dataclasses.replace(
                    info,
                    path=target,
                    flags=frozenset(_LETTER_FLAGS[c] for c in letters if c in _LETTER_FLAGS),
                    keywords=state.keywords.names_for(letters),
                    recent=False,
                )
                self._remember_rename(old, _parse_filename("cur", target.name), updated)
                return updated
        raise MessageNotFound(f"no message with UID {uid} in {self.name}")

    def expunge(self, uids: Iterable[int]) -> list[MessageInfo]:
        """Remove messages (files, then their uidlist lines); returns exactly those this call
        removed, so a caller can release their quota without counting anything twice."""
        wanted = set(uids)
        state = self._state
        removed: list[MessageInfo] = []
        with state.lock:
            self._sync()
            if not wanted & state.by_uid.keys():
                return []
            with self._lock():
                self._sync()
                directories: set[Path] = set()
                for uid in sorted(wanted):
                    for _attempt in range(3):
                        info = state.by_uid.get(uid)
                        if info is None:
                            break
                        try:
                            os.unlink(info.path)
                        except FileNotFoundError:
                            self._sync(force=True)
                            continue
                        removed.append(info)
                        directories.add(info.path.parent)
                        break
                for directory in sorted(directories):
                    fsync_directory(directory)
                if removed and self._stale_lines(len(removed)) > _STALE_UIDLIST_LINES:
                    try:
                        self._drop_lines({info.uid for info in removed})
                    except OSError as error:
                        if not diskio.is_disk_full(error):
                            raise
                        # The files are gone (and their space free): lines without a file
                        # are harmless and go with the next rewrite.
                        log.warning("%s: uidlist not rewritten after expunge: %s", self, error)
            # _drop_lines re-listed the directories itself, so a plain sync would see "no
            # change" and keep the removed messages in this process's view: rebuild it.
            self._sync(force=True)
        return removed

    # --- internals: delivery

    def _write_temp(self, data: bytes, internal_date: float | None) -> tuple[Path, str]:
        temp_dir = self.path / "tmp"
        while True:
            base = unique_basename()
            temp = temp_dir / base
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            except FileNotFoundError as error:
                raise FolderNotFound(f"folder {self.name!r} does not exist") from error
            break
        try:
            try:
                diskio.write_all(fd, data)
                if internal_date is not None:
                    # atime stays "now", so clean_tmp never mistakes this file for debris.
                    os.utime(fd, (time.time(), internal_date))
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return temp, base

    def _link_temp(self, source: Path, internal_date: float | None) -> tuple[Path, str] | None:
        """A hard link in tmp/ to `source` (a message file of this Maildir, already on disk);
        None when the bytes must be written instead."""
        temp_dir = self.path / "tmp"
        while True:
            base = unique_basename()
            temp = temp_dir / base
            try:
                link_file(source, temp)
            except FileExistsError:
                continue
            except FileNotFoundError:
                if not temp_dir.is_dir():
                    raise FolderNotFound(f"folder {self.name!r} does not exist") from None
                return None  # renamed by a flag change, or expunged, since it was read
            except OSError as error:
                if error.errno in _NO_HARD_LINK:
                    return None
                raise
            break
        try:
            status = os.stat(temp)
            if internal_date is not None and int(status.st_mtime) != int(internal_date):
                os.unlink(temp)  # the copy is to have another internal date: write it
                return None
            # atime "now", as _write_temp leaves it, so clean_tmp never takes it for debris.
            os.utime(temp, (time.time(), status.st_mtime))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        return temp, base

    def _place(self, temp: Path, basename: str, letters: str | None) -> tuple[Path, str]:
        """Hard-link the tmp file into new/ or cur/ under a name nobody has, then drop tmp/."""
        subdir = "new" if letters is None else "cur"
        suffix = basename[basename.index(",") :]
        for _attempt in range(100):
            name = basename if letters is None else f"{basename}:2,{letters}"
            final = self.path / subdir / name
            try:
                os.link(temp, final)
            except FileExistsError:
                basename = unique_basename() + suffix
                continue
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                # File systems without hard links: rename, after checking the name is free.
                if os.path.lexists(final):
                    basename = unique_basename() + suffix
                    continue
                os.rename(temp, final)
                return final, basename
            try:
                os.unlink(temp)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(final)
                raise
            return final, basename
        raise MailstoreError(f"no unique file name found in {self.path / subdir}")

    def _assign_uids(self, basenames: list[str]) -> tuple[list[int], int]:
        """Append UIDs for our new files (caller holds the lock)."""
        self._refresh_uidlist_locked()
        uidlist = self._state.uidlist
        missing = [name for name in basenames if name not in uidlist.uids]
        if missing:
            uidlist.append(missing)
        return [uidlist.uids[name] for name in basenames], uidlist.uidvalidity

    def _keyword_letters(self, wanted: list[str], *, all_or_nothing: bool) -> dict[str, str]:
        """casefolded keyword → its letter, adding missing keywords to dovecot-keywords. A
        keyword that finds no free letter (26 are named already) is left out of the result, or
        with `all_or_nothing` makes it raise TooManyKeywords before anything is written."""
        if not wanted:
            return {}
        state = self._state
        with state.lock:
            state.keywords.refresh()
            if any(state.keywords.lookup(name) is None for name in wanted):
                with self._lock():
                    state.keywords.refresh()
                    if all_or_nothing:
                        missing = {
                            n.casefold(): n for n in wanted if state.keywords.lookup(n) is None
                        }
                        free = kw.MAX_KEYWORDS - len(state.keywords.names)
                        if len(missing) > free:
                            raise TooManyKeywords(list(missing.values()))
                    state.keywords.add(wanted)
            result = {}
            for name in wanted:
                index = state.keywords.lookup(name)
                if index is not None:
                    result[name.casefold()] = kw.letter(index)
            return result

    def keyword_names(self) -> tuple[str, ...]:
        """The keywords this folder names (dovecot-keywords), in letter order: what IMAP
        lists in FLAGS and PERMANENTFLAGS."""
        with self._state.lock:
            self._state.keywords.refresh()
            return self._state.keywords.ordered_names()

    # --- internals: locking and syncing

    @contextlib.contextmanager
    def _lock(self, timeout: float | None = None) -> Iterator[FolderLock]:
        state = self._state
        with state.lock:
            if state.held is not None:
                yield state.held
                return
            wait = self._maildir.lock_timeout if timeout is None else timeout
            lock = FolderLock(self.path, timeout=wait)
            try:
                lock.acquire()
            except LockTimeout as error:
                raise MailstoreBusy(
                    f"folder {self.name!r} is locked by another process; try again later"
                ) from error
            except FileNotFoundError as error:
                raise FolderNotFound(f"folder {self.name!r} does not exist") from error
            state.held = lock
            try:
                yield lock
            finally:
                state.held = None
                lock.release()

    def _sync(self, *, force: bool = False) -> None:
        for _attempt in range(4):
            try:
                self._sync_once(force=force)
                return
            except _Moved:
                force = True
        self._sync_once(force=True)

    def _sync_once(self, *, force: bool) -> None:
        state = self._state
        locked = state.held is not None
        keywords_changed = state.keywords.refresh()
        try:
            uidlist_changed = state.uidlist.refresh(locked=locked)
            corrupt = False
        except UidlistCorrupt:
            uidlist_changed = corrupt = True
        dirs_changed = self._scan(force=force)
        if (
            not (keywords_changed or uidlist_changed or dirs_changed or force or state.added)
            and state.built
        ):
            return
        uidlist = state.uidlist
        # Every listed file had a UID after the last sync; unless the uidlist was rewritten or
        # files went away, only the files listed since then can lack one.
        only_added = (
            state.built is not None and not state.removed and state.built[2] == uidlist.generation
        )
        candidates = state.added if only_added else state.by_basename
        if corrupt or not uidlist.exists:
            with self._lock():
                self._assign_missing_uids()
        elif any(b not in uidlist.uids for b in candidates):
            # Another writer's delivery in progress (it holds the lock while it numbers its
            # files) or a crashed one: do not wait long. The file gets its UID on a later call.
            wait = min(READ_LOCK_WAIT, self._maildir.lock_timeout)
            with contextlib.suppress(MailstoreBusy), self._lock(wait):
                self._assign_missing_uids()
        # readdir() may miss a file that is being renamed (a flag change) at that moment: look
        # again before reporting a message as gone.
        if (
            state.removed
            and not force
            and any(info.basename not in state.by_basename for info in state.infos)
        ):
            self._scan(force=True)
        self._build()

    def _assign_missing_uids(self) -> None:
        self._refresh_uidlist_locked()
        uidlist = self._state.uidlist
        unassigned = [b for b in self._state.by_basename if b not in uidlist.uids]
        if unassigned:
            uidlist.append(sorted(unassigned, key=_delivery_order))

    def _refresh_uidlist_locked(self) -> None:
        """Under the lock: read the uidlist; replace it if it is missing or corrupt."""
        state = self._state
        try:
            state.uidlist.refresh(locked=True)
        except UidlistCorrupt as error:
            log.warning("%s: %s; giving its messages new UIDs", self.path, error)
            self._regenerate(max(error.uidvalidity, state.uidlist.known_uidvalidity))
            return
        if not state.uidlist.exists:
            self._regenerate(state.uidlist.known_uidvalidity)

    def _regenerate(self, floor: int) -> None:
        """A new UIDVALIDITY (above every one known) and fresh UIDs for every file here."""
        state = self._state
        self._scan(force=True)
        uidvalidity = self._maildir._next_uidvalidity(floor)
        ordered = sorted(state.by_basename, key=_delivery_order)
        records = [UidRecord(uid, name) for uid, name in enumerate(ordered, start=1)]
        state.uidlist.rewrite(uidvalidity=uidvalidity, next_uid=len(records) + 1, records=records)

    def _scan(self, *, force: bool) -> bool:
        """List new/ then cur/ (so a message moving new/ → cur/ is seen at least once) when
        their mtime moved, or was too recent to trust; True if the set of files changed."""
        state = self._state
        changed = False
        added: list[_Entry] = []
        for subdir in ("new", "cur"):
            directory = self.path / subdir
            try:
                st = os.stat(directory)
            except FileNotFoundError as error:
                raise FolderNotFound(f"folder {self.name!r} does not exist") from error
            signature = (st.st_ino, st.st_mtime_ns)
            if not force and state.dir_stable[subdir] and signature == state.dir_signature[subdir]:
                continue
            old = state.listing[subdir]
            listed_at = time.time()
            # Set operations in C: a 10,000-file directory that did not change costs one
            # listdir and one set comparison, not a Python loop over every name.
            names = set(os.listdir(directory))
            gone = old.keys() - names
            new_names = [name for name in names - old.keys() if not name.startswith(".")]
            if gone or new_names:
                changed = True
                fresh = dict(old)
                if gone:
                    state.removed = True
                    for name in gone:
                        del fresh[name]
                for name in new_names:
                    entry = fresh[name] = _parse_filename(subdir, name)
                    added.append(entry)
                state.listing[subdir] = fresh
            state.dir_signature[subdir] = signature
            state.dir_stable[subdir] = _listing_is_complete(st.st_mtime_ns, listed_at)
        if changed:
            state.added.update(entry.basename for entry in added)
            if state.removed:
                merged = {entry.basename: entry for entry in state.listing["new"].values()}
                merged.update((entry.basename, entry) for entry in state.listing["cur"].values())
                state.by_basename = merged
            else:
                for entry in added:
                    known = state.by_basename.get(entry.basename)
                    # A message in both directories is moving to cur/: cur/ wins.
                    if known is None or known.subdir == "new" or entry.subdir == "cur":
                        state.by_basename[entry.basename] = entry
            state.listing_version += 1
        return changed

    def _build(self) -> None:
        """Turn uidlist records and listed files into MessageInfo, reusing what did not change.

        When only files and UIDs were added since the last build (the usual case: deliveries),
        only the new UIDs are looked at; otherwise every record is, but unchanged messages keep
        their MessageInfo (no stat, no new Path).
        """
        state = self._state
        uidlist = state.uidlist
        signature = (
            uidlist.signature(),
            uidlist.uidvalidity,
            uidlist.generation,
            state.keywords.signature,
            state.listing_version,
        )
        if signature == state.built:
            return
        previous = state.built
        same_base = (
            previous is not None
            and previous[1:4] == signature[1:4]
            and not state.removed
            and (previous[0] is None) == (signature[0] is None)
        )
        last = state.infos[-1].uid if state.infos else 0
        if same_base and all(uidlist.uids.get(b, last + 1) > last for b in state.added):
            infos, by_uid, built_from = state.infos, state.by_uid, state.built_from
            newer: list[UidRecord] = []
            for uid in reversed(uidlist.records):
                if uid <= last:
                    break
                newer.append(uidlist.records[uid])
            records: Iterable[UidRecord] = reversed(newer)
            reuse: dict[int, MessageInfo] = {}
            keywords_same = True
        else:
            keywords_same = previous is not None and previous[3] == signature[3]
            reuse = state.by_uid
            infos, by_uid, built_from = [], {}, {}
            records = uidlist.records.values()
        directories = {"new": f"{self.path}/new", "cur": f"{self.path}/cur"}
        decoded: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        for record in records:
            entry = state.by_basename.get(record.basename)
            if entry is None:
                continue
            uid = record.uid
            info = reuse.get(uid)
            if info is not None and state.built_from.get(uid) is entry:
                if not keywords_same and entry.letters != entry.letters.upper():
                    # The keyword table changed: only the names need decoding again.
                    info = dataclasses.replace(
                        info, keywords=state.keywords.names_for(entry.letters)
                    )
            else:
                path = f"{directories[entry.subdir]}/{entry.filename}"
                try:
                    st = os.stat(path)
                except FileNotFoundError as error:
                    raise _Moved from error
                if entry.letters not in decoded:
                    decoded[entry.letters] = (
                        frozenset(_LETTER_FLAGS[c] for c in entry.letters if c in _LETTER_FLAGS),
                        state.keywords.names_for(entry.letters),
                    )
                flags, keywords = decoded[entry.letters]
                info = MessageInfo(
                    uid,
                    entry.basename,
                    Path(path),
                    entry.size if entry.size is not None else st.st_size,
                    flags,
                    keywords,
                    keepable_date(st.st_mtime),
                    entry.subdir == "new",
                    zone_minutes(entry.basename),
                )
            infos.append(info)
            by_uid[uid] = info
            built_from[uid] = entry
        state.infos, state.by_uid, state.built_from = infos, by_uid, built_from
        # Files still without a UID stay "added", so the next call tries again to give one.
        state.added = {b for b in state.added if b not in uidlist.uids and b in state.by_basename}
        state.removed = False
        state.built = signature
        state.version = next(_versions)

    def _remember_rename(self, old: _Entry, new: _Entry, info: MessageInfo) -> None:
        """Record our own flag change in the cache. The directory mtime changed, so the next
        sync lists the directory again anyway and corrects anything this missed."""
        state = self._state
        state.listing[old.subdir].pop(old.filename, None)
        state.listing["cur"][new.filename] = new
        state.by_basename[new.basename] = new
        state.by_uid[info.uid] = info
        state.built_from[info.uid] = new
        index = bisect.bisect_left(state.infos, info.uid, key=lambda item: item.uid)
        if index < len(state.infos) and state.infos[index].uid == info.uid:
            state.infos[index] = info
        state.version = next(_versions)

    def _stale_lines(self, just_removed: int) -> int:
        """About how many uidlist lines name no file, counting the ones just unlinked (caller
        holds the lock and synced before unlinking)."""
        state = self._state
        return len(state.uidlist.records) - len(state.by_uid) + just_removed

    def _drop_lines(self, expunged: set[int]) -> None:
        """Rewrite the uidlist without the expunged UIDs and without lines whose file is gone
        (absent from two listings in a row, taken under the lock)."""
        state = self._state
        self._scan(force=True)
        first = set(state.by_basename)
        self._scan(force=True)
        present = first | set(state.by_basename)
        uidlist = state.uidlist
        keep = [
            record
            for uid, record in uidlist.records.items()
            if uid not in expunged and record.basename in present
        ]
        uidlist.rewrite(uidvalidity=uidlist.uidvalidity, next_uid=uidlist.next_uid, records=keep)


# --- a mailbox ----------------------------------------------------------------------------------


def _folder_name(name: str) -> str:
    try:
        return names.normalize_folder_name(name)
    except ValueError as error:
        raise InvalidFolderName(str(error)) from error


class Maildir:
    """One mailbox's Maildir++ tree: INBOX at the root, folders as .Name directories."""

    def __init__(self, root: Path, *, lock_timeout: float = DEFAULT_TIMEOUT) -> None:
        self.root = root
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Maildir({str(self.root)!r})"

    def _path_of(self, name: str) -> Path:
        disk = names.disk_name(name)
        return self.root / disk if disk else self.root

    def folder(self, name: str) -> Folder:
        name = _folder_name(name)
        path = self._path_of(name)
        # A symlinked folder could lead outside the mailbox: it is not a folder of ours.
        if not (path / "cur").is_dir() or (name != INBOX and path.is_symlink()):
            raise FolderNotFound(f"folder {name!r} does not exist")
        return Folder(self, name, path)

    def folders(self) -> list[FolderInfo]:
        """INBOX first, then every folder by name, with its special-use role."""
        found: list[FolderInfo] = []
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError as error:
            raise MailboxMissing(f"mailbox {self.root} no longer exists") from error
        with entries:
            for entry in entries:
                name = names.folder_name(entry.name)
                if name is None or name == INBOX or not entry.is_dir(follow_symlinks=False):
                    continue
                if os.path.isdir(os.path.join(entry.path, "cur")):
                    found.append(FolderInfo(name, SPECIAL_USE.get(name), Path(entry.path)))
        found.sort(key=lambda info: info.name)
        return [FolderInfo(INBOX, None, self.root), *found]

    @_disk_full_is_storage_full
    def create_folder(self, name: str) -> Folder:
        """Create a folder, and any missing superior folders (RFC 3501 §6.3.3 SHOULD)."""
        name = _folder_name(name)
        if name == INBOX:
            raise FolderExists("INBOX always exists")
        if self._path_of(name).exists():
            raise FolderExists(f"folder {name!r} already exists")
        for parent in names.parents(name):
            if not self._path_of(parent).exists():
                with contextlib.suppress(FolderExists):
                    self._make_folder(parent)
        self._make_folder(name)
        return Folder(self, name, self._path_of(name))

    def _make_folder(self, name: str) -> None:
        """Build the folder under a private name, then rename it into place in one step."""
        target = self._path_of(name)
        staging = self.root / f"CREATING-{uuid.uuid4().hex}"
        os.mkdir(staging, 0o700)
        try:
            for subdir in ("cur", "new", "tmp"):
                os.mkdir(staging / subdir, 0o700)
            os.close(os.open(staging / "maildirfolder", os.O_WRONLY | os.O_CREAT, 0o600))
            UidlistFile(staging / UIDLIST_NAME).rewrite(
                uidvalidity=self._next_uidvalidity(), next_uid=1, records=[]
            )
            try:
                os.rename(staging, target)
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FolderExists(f"folder {name!r} already exists") from error
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_directory(self.root)
        _forget_states(target)

    def delete_folder(self, name: str) -> list[MessageInfo]:
        """Delete one folder (not its sub-folders, as RFC 3501 §6.3.4 says) and return the
        messages it held, so that the caller can release their quota."""
        name = _folder_name(name)
        if name == INBOX:
            raise InvalidFolderName("INBOX cannot be deleted")
        folder = self.folder(name)
        trash = self.root / f"DELETING-{uuid.uuid4().hex}"
        with folder._state.lock, folder._lock():
            removed = folder.messages()
            os.rename(folder.path, trash)
            fsync_directory(self.root)
        _forget_states(folder.path)
        try:
            shutil.rmtree(trash)
        except OSError:
            log.warning("could not remove %s; clean_tmp will retry", trash, exc_info=True)
        return removed

    @_disk_full_is_storage_full
    def rename_folder(self, old: str, new: str) -> None:
        """Rename a folder and its sub-folders; missing superiors of the new name are created.

        INBOX cannot be renamed (RFC 3501's move-all-messages semantics are not offered).
        UIDs and UIDVALIDITY travel with the folder.
        """
        old, new = _folder_name(old), _folder_name(new)
        if old == INBOX:
            raise InvalidFolderName("INBOX cannot be renamed; move its messages instead")
        if new == INBOX:
            raise FolderExists("INBOX already exists")
        if new == old or new.startswith(old + SEPARATOR):
            raise InvalidFolderName(f"cannot move folder {old!r} inside itself")
        self.folder(old)
        moves = [(old, new)]
        for info in self.folders():
            if info.name.startswith(old + SEPARATOR):
                moves.append((info.name, _folder_name(new + info.name[len(old) :])))
        for _source, target in moves:
            if self._path_of(target).exists():
                raise FolderExists(f"folder {target!r} already exists")
        for parent in names.parents(new):
            if not self._path_of(parent).exists():
                with contextlib.suppress(FolderExists):
                    self._make_folder(parent)
        for source, target in moves:
            try:
                os.rename(self._path_of(source), self._path_of(target))
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise FolderExists(f"folder {target!r} already exists") from error
                raise
            _forget_states(self._path_of(source))
            _forget_states(self._path_of(target))
        fsync_directory(self.root)

    def usage_bytes(self) -> int:
        """Sum of message sizes in every folder (S= from file names, else stat), for recounts."""
        total = 0
        for info in self.folders():
            seen: set[str] = set()
            for subdir in ("new", "cur"):
                try:
                    filenames = os.listdir(info.path / subdir)
                except FileNotFoundError:
                    continue
                for filename in filenames:
                    if filename.startswith("."):
                        continue
                    entry = _parse_filename(subdir, filename)
                    if entry.basename in seen:
                        continue
                    seen.add(entry.basename)
                    if entry.size is not None:
                        total += entry.size
                    else:
                        with contextlib.suppress(FileNotFoundError):
                            total += os.lstat(info.path / subdir / filename).st_size
        return total

    def clean_tmp(self, now: float | None = None) -> int:
        """Remove tmp/ files nobody touched for 36 hours (RELIABILITY D2); returns how many.

        "Touched" is the later of the access and modification times: a delivery in progress
        writes its file (mtime) and keeps atime current even when it sets an old internal date.
        """
        now = time.time() if now is None else now
        removed = 0
        for info in self.folders():
            try:
                entries = os.scandir(info.path / "tmp")
            except FileNotFoundError:
                continue
            with entries:
                for entry in entries:
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if now - max(st.st_atime, st.st_mtime) > TMP_MAX_AGE:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed += 1
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name.startswith(("CREATING-", "DELETING-")) and entry.is_dir(
                    follow_symlinks=False
                ):
                    st = entry.stat(follow_symlinks=False)
                    if now - st.st_mtime > TMP_MAX_AGE:
                        shutil.rmtree(entry.path, ignore_errors=True)
        return removed

    def _next_uidvalidity(self, floor: int = 0) -> int:
        """A UIDVALIDITY above every one this mailbox handed out, and above `floor`.

        Dovecot's scheme (mailbox-uidvalidity.c), so that Dovecot and we share one counter: the
        marker file dovecot-uidvalidity.<hex> holds the last value and is advanced by rename(),
        which only one process can win; dovecot-uidvalidity repeats the value. We also never go
        below the current time, as Dovecot's first value does.
        """
        prefix = UIDVALIDITY_NAME + "."
        for _attempt in range(100):
            current = 0
            for entry in os.listdir(self.root):
                if entry.startswith(prefix):
                    with contextlib.suppress(ValueError):
                        current = max(current, int(entry[len(prefix) :], 16))
            value = max(current + 1, int(time.time()), floor + 1)
            if value >= 2**32:
                raise MailstoreError(f"{self.root}: UIDVALIDITY values exhausted")
            target = self.root / f"{prefix}{value:08x}"
            if current:
                try:
                    os.rename(self.root / f"{prefix}{current:08x}", target)
                except FileNotFoundError:
                    continue
            else:
                try:
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
                except FileExistsError:
                    continue
            fd = os.open(self.root / UIDVALIDITY_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                os.pwrite(fd, f"{value:08x}".encode(), 0)
            finally:
                os.close(fd)
            return value
        raise MailstoreBusy(f"{self.root}: could not allocate a UIDVALIDITY")


# --- the store ----------------------------------------------------------------------------------


def _split_address(address: str) -> tuple[str, str]:
    if not isinstance(address, str):
        raise InvalidAddress("an address must be a string")
    local, at, domain = address.lower().rpartition("@")
    if (
        not at
        or not _LOCAL_PART.fullmatch(local)
        or len(local) > 64
        or not _DOMAIN.fullmatch(domain)
        or len(domain) > 253
    ):
        raise InvalidAddress(f"{address!r} is not an address the mail store can hold")
    return local, domain


def _write_new_file(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if data:
            diskio.write_all(fd, data)
    finally:
        os.close(fd)


class MailStore:
    """Every mailbox under DATA_DIR/mail: <root>/<domain>/<local>/Maildir."""

    def __init__(self, root: str | os.PathLike[str], *, lock_timeout: float = DEFAULT_TIMEOUT):
        self.root = Path(os.path.realpath(os.fspath(root)))
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"MailStore({str(self.root)!r})"

    def path_for(self, address: str) -> Path:
        """root/<domain>/<local>/Maildir; InvalidAddress for anything that could leave root."""
        local, domain = _split_address(address)
        path = self.root / domain / local / "Maildir"
        # The character rules already forbid "/" and "..": this also catches a symlink.
        if not Path(os.path.realpath(path)).is_relative_to(self.root):
            raise InvalidAddress(f"{address!r} leads outside the mail store")
        return path

    def create(self, address: str) -> Maildir:
        """Create the mailbox (INBOX and the special-use folders); harmless if it exists."""
        path = self.path_for(address)
        for directory in (path, path / "cur", path / "new", path / "tmp"):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        for directory in (path, path.parent, path.parent.parent):
            fsync_directory(directory)
        maildir = Maildir(path, lock_timeout=self.lock_timeout)
        maildir.folder(INBOX).messages()  # writes INBOX's dovecot-uidlist
        for name in SPECIAL_USE:
            with contextlib.suppress(FolderExists):
                maildir.create_folder(name)
        return maildir

    def create_unsynced(self, address: str) -> None:
        """create() for a mailbox that is not there yet, for thousands at once (CSV import).

        The same tree as create() (INBOX and the special-use folders, each with its
        dovecot-uidlist, and the UIDVALIDITY counter files), written straight with a few
        syscalls per entry: no folder objects, locks or states, which make create() ~5 ms of
        Python each. Built under a staging name beside the Maildir and renamed into place, so a
        mailbox is there whole or not at all. Nothing is fsynced: the caller makes the batch
        durable (one os.sync()) before anything counts on it. Anything already at the place (an
        old crash's leftover, a mailbox made meanwhile) is completed by create() instead.
        """
        path = self.path_for(address)
        if os.path.lexists(path):
            self.create(address)
            return
        home = os.fspath(path.parent)
        os.makedirs(home, exist_ok=True)
        staging = os.path.join(home, f"Maildir.creating-{uuid.uuid4().hex}")
        folders = ["", *(names.disk_name(name) for name in SPECIAL_USE)]
        first = int(time.time())
        try:
            os.mkdir(staging, 0o700)
            for offset, disk in enumerate(folders):
                folder = os.path.join(staging, disk) if disk else staging
                if disk:
                    os.mkdir(folder, 0o700)
                for subdir in ("cur", "new", "tmp"):
                    os.mkdir(os.path.join(folder, subdir), 0o700)
                if disk:
                    _write_new_file(os.path.join(folder, "maildirfolder"), b"", 0o600)
                header = format_header(first + offset, 1, new_guid())
                _write_new_file(os.path.join(folder, UIDLIST_NAME), header.encode(), 0o600)
            # Dovecot's counter (see Maildir._next_uidvalidity): the marker names the last value.
            last = first + len(folders) - 1
            _write_new_file(os.path.join(staging, f"{UIDVALIDITY_NAME}.{last:08x}"), b"", 0o444)
            _write_new_file(os.path.join(staging, UIDVALIDITY_NAME), f"{last:08x}".encode(), 0o600)
            os.rename(staging, path)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError) and error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                self.create(address)  # someone made it meanwhile: complete theirs
                return
            raise
        _forget_states(path)  # a mailbox of the same address deleted earlier in this process

    def open(self, address: str) -> Maildir:
        path = self.path_for(address)
        if not (path / "cur").is_dir():
            raise MailboxMissing(f"no mailbox for {address}")
        return Maildir(path, lock_timeout=self.lock_timeout)

    def exists(self, address: str) -> bool:
        return (self.path_for(address) / "cur").is_dir()

    def remove(self, address: str) -> None:
        """Delete the mailbox: one rename takes it out of sight, then the tree is removed.
        Removing a mailbox that does not exist does nothing (a retried job is harmless)."""
        path = self.path_for(address)
        home = path.parent
        if not home.is_dir():
            return
        trash = home.parent / f".deleting-{home.name}-{uuid.uuid4().hex}"
        os.rename(home, trash)
        fsync_directory(home.parent)
        _forget_states(path)
        shutil.rmtree(trash)
