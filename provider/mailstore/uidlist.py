"""dovecot-uidlist (version 3): parse it, follow its appends, append UIDs and rewrite it safely.

Format (Dovecot's maildir-uidlist.c)::

    3 V<uidvalidity> N<nextuid> G<32 hex mailbox guid>[ <other header fields>]
    <uid>[ <key><value> ...] :<basename>

UIDs ascend strictly from line to line. Dovecot appends new lines without touching the header, so
the next UID is max(N, last UID + 1). Extension fields on lines (Dovecot's W, S, G, P — P is a
POP3 UIDL) and unknown header fields are kept verbatim when the file is rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from provider.mailstore import diskio

log = logging.getLogger(__name__)

UIDLIST_NAME = "dovecot-uidlist"
TEMP_NAME = "dovecot-uidlist.tmp"
MAX_UID = 2**32 - 2
"""Largest UID Dovecot accepts: (uint32_t)-1 is its 'not assigned' marker."""


class UidlistCorrupt(ValueError):
    """The file cannot be trusted. `uidvalidity` is its header's value when that was readable."""

    def __init__(self, message: str, uidvalidity: int = 0) -> None:
        super().__init__(message)
        self.uidvalidity = uidvalidity


@dataclass(frozen=True)
class UidRecord:
    uid: int
    basename: str
    extensions: str = ""


@dataclass
class Header:
    version: int
    uidvalidity: int
    next_uid: int
    guid: str = ""
    extra: str = ""


def new_guid() -> str:
    return uuid.uuid4().hex


def format_header(uidvalidity: int, next_uid: int, guid: str, extra: str = "") -> str:
    line = f"3 V{uidvalidity} N{next_uid} G{guid}"
    return f"{line} {extra}\n" if extra else f"{line}\n"


def format_record(record: UidRecord) -> str:
    ext = f" {record.extensions}" if record.extensions else ""
    return f"{record.uid}{ext} :{record.basename}\n"


def parse_header(line: str) -> Header:
    """The first line; UidlistCorrupt unless it is a usable version 1 or 3 header."""
    version_text, _, rest = line.partition(" ")
    if version_text == "1":
        fields = rest.split()
        if len(fields) != 2 or not all(f.isdigit() for f in fields):
            raise UidlistCorrupt(f"bad version 1 header {line!r}")
        header = Header(1, int(fields[0]), int(fields[1]))
    elif version_text == "3":
        header = Header(3, 0, 0)
        extra: list[str] = []
        for item in rest.split():
            key, value = item[0], item[1:]
            if key == "V" and value.isdigit():
                header.uidvalidity = int(value)
            elif key == "N" and value.isdigit():
                header.next_uid = int(value)
            elif key == "G" and len(value) == 32 and all(c in "0123456789abcdef" for c in value):
                header.guid = value
            elif key in "VNG":
                raise UidlistCorrupt(f"bad header field {item!r}", header.uidvalidity)
            else:
                extra.append(item)
        header.extra = " ".join(extra)
    else:
        raise UidlistCorrupt(f"unsupported uidlist header {line[:40]!r}")
    if not 0 < header.uidvalidity < 2**32 or not 0 < header.next_uid <= MAX_UID + 1:
        raise UidlistCorrupt(f"bad header {line!r}", header.uidvalidity)
    return header


def parse_record(line: str, version: int) -> UidRecord:
    uid_text, sep, rest = line.partition(" ")
    if not sep or not uid_text.isdigit() or not 0 < int(uid_text) <= MAX_UID:
        raise UidlistCorrupt(f"bad uidlist line {line[:80]!r}")
    extensions = ""
    if version == 3:
        ext_text, colon, name = rest.partition(":")
        if not colon:
            raise UidlistCorrupt(f"uidlist line without ':' {line[:80]!r}")
        extensions = " ".join(ext_text.split())
    else:
        name = rest
    basename = name.split(":", 1)[0]
    if not basename or "/" in basename or basename.strip() != basename:
        raise UidlistCorrupt(f"bad file name in uidlist line {line[:80]!r}")
    return UidRecord(int(uid_text), basename, extensions)


@dataclass
class UidlistFile:
    """One folder's dovecot-uidlist as last read, kept up to date by reading only what changed.

    Reading needs no lock: rewrites replace the file by rename, and a half-written last line
    from an append in progress is left for the next read. Under the folder lock nobody else can
    be appending, so there a half line means the file was cut short: corrupt.
    """

    path: Path
    exists: bool = False
    header: Header | None = None
    records: dict[int, UidRecord] = field(default_factory=dict)
    uids: dict[str, int] = field(default_factory=dict)
    last_uid: int = 0
    known_uidvalidity: int = 0
    known_next_uid: int = 0
    generation: int = 0
    """Bumped whenever records may have been removed or renumbered (anything but an append)."""
    _identity: tuple[int, int] | None = None
    _offset: int = 0
    _size: int = -1
    _mtime_ns: int = -1

    @property
    def uidvalidity(self) -> int:
        return self.header.uidvalidity if self.header else 0

    @property
    def next_uid(self) -> int:
        if self.header is None:
            return 1
        return max(self.header.next_uid, self.last_uid + 1)

    @property
    def guid(self) -> str:
        return self.header.guid if self.header else ""

    def signature(self) -> tuple[int, int, int, int] | None:
        if not self.exists or self._identity is None:
            return None
        return (*self._identity, self._size, self._mtime_ns)

    def forget(self) -> None:
        """Drop what was read (the uidvalidity and next UID seen stay known)."""
        self.generation += 1
        self.exists = False
        self.header = None
        self.records = {}
        self.uids = {}
        self.last_uid = 0
        self._identity = None
        self._offset = 0
        self._size = -1
        self._mtime_ns = -1

    def refresh(self, *, locked: bool = False) -> bool:
        """Bring the in-memory copy up to date; True if anything changed.

        Raises UidlistCorrupt for a file that cannot be trusted, including one whose next UID
        went backwards under the same UIDVALIDITY (Dovecot's "next_uid was lowered").
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            changed = self.exists
            self.forget()
            return changed
        identity = (st.st_dev, st.st_ino)
        if (
            self.exists
            and identity == self._identity
            and st.st_size == self._size
            and st.st_mtime_ns == self._mtime_ns
            and not (locked and self._offset != self._size)
        ):
            return False
        incremental = (
            self.exists
            and identity == self._identity
            and self.header is not None
            and st.st_size >= self._size
            and self._offset > 0
        )
        try:
            with open(self.path, "rb") as handle:
                opened = os.fstat(handle.fileno())
                if (opened.st_dev, opened.st_ino) != identity:
                    incremental = False
                if incremental:
                    handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            changed = self.exists
            self.forget()
            return changed
        if incremental:
            try:
                self._read_appended(data, locked)
            except UidlistCorrupt:
                # Like Dovecot: an unexpected change may be a rewrite in place; start over.
                with open(self.path, "rb") as handle:
                    opened = os.fstat(handle.fileno())
                    data = handle.read()
                self._read_whole(data, locked)
        else:
            self._read_whole(data, locked)
        self.exists = True
        self._identity = (opened.st_dev, opened.st_ino)
        self._size = opened.st_size
        self._mtime_ns = opened.st_mtime_ns
        self._remember()
        return True

    def _complete_lines(self, data: bytes, locked: bool) -> tuple[list[str], int]:
        end = data.rfind(b"\n") + 1
        if locked and end != len(data):
            raise UidlistCorrupt(f"{self.path} ends in a partial line", self.uidvalidity)
        if b"\0" in data[:end]:
            raise UidlistCorrupt(f"{self.path} contains NUL bytes", self.uidvalidity)
        try:
            text = data[:end].decode("utf-8")
        except UnicodeDecodeError as error:
            raise UidlistCorrupt(f"{self.path} is not UTF-8", self.uidvalidity) from error
        return text.splitlines(), end

    def _read_whole(self, data: bytes, locked: bool) -> None:
        lines, consumed = self._complete_lines(data, locked)
        if not lines:
            raise UidlistCorrupt(f"{self.path} has no header")
        header = parse_header(lines[0])
        records: dict[int, UidRecord] = {}
        uids: dict[str, int] = {}
        last_uid = self._parse_records(lines[1:], header, records, uids, 0)
        if (
            header.uidvalidity == self.known_uidvalidity
            and max(header.next_uid, last_uid + 1) < self.known_next_uid
        ):
            raise UidlistCorrupt(
                f"{self.path}: next UID went back from {self.known_next_uid}", header.uidvalidity
            )
        self.header, self.records, self.uids, self.last_uid = header, records, uids, last_uid
        self._offset = consumed
        self.generation += 1

    def _read_appended(self, data: bytes, locked: bool) -> None:
        assert self.header is not None
        lines, consumed = self._complete_lines(data, locked)
        if not lines:
            return
        # Parse everything first, so a bad line leaves the copy in memory untouched.
        parsed = [parse_record(line, self.header.version) for line in lines]
        last_uid = self.last_uid
        for record in parsed:
            if record.uid <= last_uid:
                raise UidlistCorrupt(
                    f"{self.path}: UIDs not ascending ({record.uid} after {last_uid})",
                    self.header.uidvalidity,
                )
            last_uid = record.uid
        for record in parsed:
            previous = self.uids.get(record.basename)
            if previous is not None:
                # A file listed again under a new UID: Dovecot keeps the later line.
                del self.records[previous]
                self.generation += 1
            self.records[record.uid] = record
            self.uids[record.basename] = record.uid
        self.last_uid = last_uid
        self._offset += consumed

    def _parse_records(
        self,
        lines: list[str],
        header: Header,
        records: dict[int, UidRecord],
        uids: dict[str, int],
        last_uid: int,
    ) -> int:
        for line in lines:
            record = parse_record(line, header.version)
            if record.uid <= last_uid:
                raise UidlistCorrupt(
                    f"{self.path}: UIDs not ascending ({record.uid} after {last_uid})",
                    header.uidvalidity,
                )
            if header.version == 1 and record.uid >= header.next_uid:
                raise UidlistCorrupt(f"{self.path}: UID beyond next UID", header.uidvalidity)
            previous = uids.get(record.basename)
            if previous is not None:
                # Dovecot keeps the later line for a file listed twice; so do we.
                del records[previous]
            records[record.uid] = record
            uids[record.basename] = record.uid
            last_uid = record.uid
        return last_uid

    def _remember(self) -> None:
        if self.header is None:
            return
        if self.header.uidvalidity != self.known_uidvalidity:
            self.known_uidvalidity = self.header.uidvalidity
            self.known_next_uid = 0
        self.known_next_uid = max(self.known_next_uid, self.next_uid)

    def append(self, basenames: list[str]) -> list[int]:
        """Give each basename the next UID by appending lines (fsynced); the caller holds the
        folder lock and has just refreshed.

        If that fails, the file is cut back to its old length, then rewritten with a header that
        skips past their UIDs: a reader may already have seen them, so they must never be
        handed out again. If the rewrite fails too (a full disk), the file is as it was before.
        """
        assert self.exists and self.header is not None and self._offset == self._size
        first = self.next_uid
        new = [UidRecord(first + index, name) for index, name in enumerate(basenames)]
        if new and new[-1].uid > MAX_UID:
            raise OverflowError(f"{self.path}: UIDs exhausted")
        payload = "".join(format_record(record) for record in new).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            before = os.fstat(fd)
            if (before.st_dev, before.st_ino) != self._identity or before.st_size != self._size:
                raise UidlistCorrupt(f"{self.path} changed while locked")
            try:
                diskio.write_all(fd, payload)
                os.fsync(fd)
            except BaseException:
                # A full disk can leave part of a line: cut the file back first (that needs no
                # space), so that it never ends in half a record even if the rewrite fails too.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, before.st_size)
                self._take_back(first + len(new))
                raise
            after = os.fstat(fd)
        finally:
            os.close(fd)
        for record in new:
            self.records[record.uid] = record
            self.uids[record.basename] = record.uid
        if new:
            self.last_uid = new[-1].uid
        self._offset = self._size = after.st_size
        self._mtime_ns = after.st_mtime_ns
        self._remember()
        return [record.uid for record in new]

    def _take_back(self, next_uid: int) -> None:
        try:
            self.rewrite(
                uidvalidity=self.uidvalidity,
                next_uid=next_uid,
                records=list(self.records.values()),
            )
        except Exception:
            log.warning("%s: could not take back a failed append", self.path, exc_info=True)

    def rewrite(
        self,
        *,
        uidvalidity: int,
        next_uid: int,
        records: list[UidRecord],
        guid: str | None = None,
    ) -> None:
        """Replace the file (temp file, fsync, rename, fsync directory); caller holds the lock."""
        header = Header(
            3,
            uidvalidity,
            max(next_uid, records[-1].uid + 1 if records else 1),
            guid or self.guid or new_guid(),
            self.header.extra if self.header and self.header.uidvalidity == uidvalidity else "",
        )
        text = format_header(header.uidvalidity, header.next_uid, header.guid, header.extra)
        payload = (text + "".join(format_record(record) for record in records)).encode("utf-8")
        temp = self.path.with_name(TEMP_NAME)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                diskio.write_all(fd, payload)
                if not _FSYNC_DEFERRED.get():
                    os.fsync(fd)
                os.rename(temp, self.path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
                raise
            st = os.fstat(fd)
        finally:
            os.close(fd)
        fsync_directory(self.path.parent)
        self.generation += 1
        self.exists = True
        self.header = header
        self.records = {record.uid: record for record in records}
        self.uids = {record.basename: record.uid for record in records}
        self.last_uid = records[-1].uid if records else 0
        self._identity = (st.st_dev, st.st_ino)
        self._offset = self._size = st.st_size
        self._mtime_ns = st.st_mtime_ns
        if uidvalidity != self.known_uidvalidity:
            self.known_uidvalidity, self.known_next_uid = uidvalidity, 0
        self._remember()


# Set while making many empty mailboxes at once (CSV import): their ~20 fsyncs each are left
# out, and the caller makes all of it durable with one sync(2) before it relies on it.
_FSYNC_DEFERRED: ContextVar[bool] = ContextVar("fsync_deferred", default=False)


@contextlib.contextmanager
def fsync_deferred() -> Iterator[None]:
    """Skip the fsyncs of new folders and uid lists in this thread (and context) until the
    block ends; the caller must call os.sync() before anything counts on those files."""
    token = _FSYNC_DEFERRED.set(True)
    try:
        yield
    finally:
        _FSYNC_DEFERRED.reset(token)


def fsync_directory(path: Path) -> None:
    """Make a rename or new entry in `path` durable (later, within fsync_deferred())."""
    if _FSYNC_DEFERRED.get():
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
