"""IMAP commands of the authenticated and selected states, as `do_<verb>` methods."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import functools
import logging
import os
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO, Literal, TypeVar

from sqlalchemy import select

from provider.errors import NotFound, ProviderError
from provider.extensions import db
from provider.mailstore import (
    Folder,
    FolderInfo,
    FolderNotFound,
    FolderSnapshot,
    IncomingMessage,
    MailboxMissing,
    Maildir,
    MailstoreBusy,
    MessageInfo,
    MessageNotFound,
    StorageFull,
    StoredMessage,
    TooManyKeywords,
)
from provider.mailstore.content import UnknownTransferEncoding
from provider.mailstore.keywords import MAX_KEYWORD_LENGTH, MAX_KEYWORDS, check_keyword
from provider.mailstore.maildir import InvalidDate, check_internal_date
from provider.mailstore.message import (
    Envelope,
    MessageHeader,
    ParsedMessage,
    section_bytes,
    shared_cache,
)
from provider.mailstore.names import decode_mutf7
from provider.models import Mailbox
from provider.protocols.imap import catenate as catenating
from provider.protocols.imap import fetch as fetching
from provider.protocols.imap import fetch_more
from provider.protocols.imap import qresync as qr
from provider.protocols.imap.compress import deflate_active, start_deflate
from provider.protocols.imap.contexts import (
    MAX_CONTEXTS,
    SearchContext,
    noupdate_line,
    update_line,
)
from provider.protocols.imap.parser import (
    Atom,
    Command,
    Literal8,
    LiteralArg,
    ProtocolError,
    Value,
    as_text,
    encode_literal,
    encode_mailbox,
    format_sequence_set,
    parse_sequence_set,
)
from provider.protocols.imap.search import (
    Candidate,
    Predicate,
    esearch_line,
    parse_search,
    return_options,
    saved_part,
    saves_result,
    search_charset,
)
from provider.protocols.imap.selected import SYSTEM_FLAGS, SelectedView
from provider.protocols.imap.sort import (
    SortMessage,
    esort_line,
    needs_content,
    parse_sort_criteria,
    sort_message,
    sort_messages,
)
from provider.protocols.imap.thread import ALGORITHMS as THREAD_ALGORITHMS
from provider.protocols.imap.thread import (
    format_threads,
    ordered_subject_threads,
    references_threads,
)
from provider.protocols.imap.wakeups import watch_folder
from provider.services import quota
from provider.services.storage import mail_store

if TYPE_CHECKING:
    from provider.protocols.imap.session import ImapSession

log = logging.getLogger(__name__)

MAX_KEYWORDS_PER_COMMAND = 100
"""Keywords one STORE or APPEND may name. A folder holds 26, so more can never all be kept;
the bound keeps a hostile command from making the store sort through thousands."""
OVERQUOTA = "NO [OVERQUOTA] Quota exceeded (mailbox for user is full)"
# Dovecot's answer when the disk (or the system's disk quota) is full (RFC 5530 OVERQUOTA).
DISK_FULL = "NO [OVERQUOTA] Not enough disk space"
SUBSCRIPTIONS_FILE = "subscriptions"
LIST_SELECTION_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})
# SIZE: RFC 8438 (STATUS=SIZE), the sum of the messages' RFC822.SIZE.
STATUS_ITEMS = (
    "MESSAGES",
    "RECENT",
    "UIDNEXT",
    "UIDVALIDITY",
    "UNSEEN",
    "HIGHESTMODSEQ",
    "SIZE",
)
STORE_MODES: dict[str, Literal["replace", "add", "remove"]] = {
    "FLAGS": "replace",
    "+FLAGS": "add",
    "-FLAGS": "remove",
}


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[str | None]])


def answers_disk_full(handler: _Handler) -> _Handler:
    """A command that writes to the store answers DISK_FULL when the disk is full; the store
    has undone the write by then (nothing half-written, quota released by the caller)."""

    @functools.wraps(handler)
    async def wrapper(*args: object, **kwargs: object) -> str | None:
        try:
            return await handler(*args, **kwargs)
        except StorageFull as error:
            log.warning("disk full during %s: %s", handler.__name__, error)
            return DISK_FULL

    return wrapper  # type: ignore[return-value]


def modifiers(value: Value, allowed: tuple[str, ...], what: str) -> dict[str, int]:
    """A parenthesised modifier list of `NAME number` pairs (RFC 7162 fetch-modifier,
    store-modifier), each name at most once: {"CHANGEDSINCE": 12}."""
    if not isinstance(value, list) or not value:
        raise ProtocolError(f"{what} modifiers must be a parenthesised list")
    found: dict[str, int] = {}
    position = 0
    while position < len(value):
        name = value[position]
        if not isinstance(name, Atom) or name.upper() not in allowed:
            raise ProtocolError(f"unknown {what} modifier")
        if name.upper() in found or position + 1 >= len(value):
            raise ProtocolError(f"bad {what} modifier {name}")
        found[name.upper()] = mod_sequence(value[position + 1])
        position += 2
    return found


def mod_sequence(value: Value) -> int:
    """A mod-sequence-valzer (RFC 7162 §7): 0 to 2^63 - 1, digits only."""
    if not isinstance(value, Atom) or not value.isdigit() or not value.isascii():
        raise ProtocolError("expected a mod-sequence value")
    number = int(value)
    if number >= 2**63:
        raise ProtocolError("mod-sequence value out of range")
    return number


def wire_name(value: Value, *, creating: bool = False, utf8: bool = False) -> str:
    """A mailbox argument as a folder name: modified UTF-7 on the wire, or UTF-8 once the
    client enabled UTF8=ACCEPT (RFC 6855 §3). A name that is not modified UTF-7 in canonical
    form (RFC 3501 §5.1.3) is refused: taking the text as it came would store a name that LIST
    then shows differently. A new name (CREATE, RENAME's target) gets BAD; a name that must
    already exist gets NO [NONEXISTENT], as Dovecot answers it ("Mailbox name is not valid
    mUTF-7"): no such folder can exist. Octets that are not UTF-8 are BAD either way."""
    try:
        name = utf8_name(value) if utf8 else decoded_name(as_text(value))
    except ProtocolError as error:
        if creating or isinstance(error, NotUtf8):
            raise
        raise NotFound(str(error)) from None
    return "INBOX" if name.upper() == "INBOX" else name


def decoded_name(text: str) -> str:
    """Modified UTF-7 → text; ProtocolError saying what is wrong with it."""
    try:
        return decode_mutf7(text)
    except ValueError as error:
        raise ProtocolError(f"Mailbox name is not valid modified UTF-7: {error}") from None


class NotUtf8(ProtocolError):
    """Octets with the high bit set that are not UTF-8 (RFC 6855 §3: always BAD)."""


# RFC 6855 §3: no controls (C0, DEL, C1), no line or paragraph separator in a mailbox name.
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def utf8_name(value: Value) -> str:
    """A mailbox name (or LIST pattern) sent as UTF-8 after ENABLE UTF8=ACCEPT."""
    if isinstance(value, list):
        raise ProtocolError("expected a mailbox name, got a list")
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise NotUtf8("Mailbox name is not valid UTF-8") from None
    else:
        text = str(value)
    if _NOT_IN_NAMES.search(text):
        raise ProtocolError("Mailbox name holds a control character")
    return text


class KeywordLimit(ProviderError):
    """A keyword, or a number of keywords, beyond what the server accepts (RFC 5530 LIMIT)."""

    imap_code = "LIMIT"


def split_flags(names: list[str]) -> tuple[list[str], list[str]]:
    """System flags and keywords of a flag list. BAD for what is not a flag; NO [LIMIT] for a
    keyword over 255 characters or more than MAX_KEYWORDS_PER_COMMAND keywords."""
    system = {flag.casefold(): flag for flag in SYSTEM_FLAGS}
    flags, keywords = [], []
    for name in names:
        if name.startswith("\\"):
            if name.casefold() == "\\recent":
                continue
            if name.casefold() not in system:
                raise ProtocolError(f"unknown system flag {name}")
            flags.append(system[name.casefold()])
        else:
            keywords.append(name)
    if len({k.casefold() for k in keywords}) > MAX_KEYWORDS_PER_COMMAND:
        raise KeywordLimit(
            f"At most {MAX_KEYWORDS_PER_COMMAND} keywords in one command "
            f"(a folder holds {MAX_KEYWORDS})"
        )
    for name in keywords:
        if len(name) > MAX_KEYWORD_LENGTH:
            raise KeywordLimit(f"Keywords are at most {MAX_KEYWORD_LENGTH} characters long")
        try:
            check_keyword(name)
        except ValueError as error:
            raise ProtocolError(str(error)) from None
    return flags, keywords


def dropped_keywords_notice(stored: list[StoredMessage]) -> list[bytes]:
    """An untagged NO (a warning: the command still succeeds, RFC 3501 §7.1.2) naming the
    keywords the target folder had no room for, so the client knows they were not kept."""
    names = sorted({n for s in stored for n in s.dropped_keywords}, key=str.casefold)
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [
        f"* NO [LIMIT] Keywords not kept: {shown} (a folder holds at most {MAX_KEYWORDS} "
        "keywords, and this one has no room left)\r\n".encode()
    ]


def flag_list(value: Value) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, Atom) for item in items):
        raise ProtocolError("flags must be atoms")
    return [str(item) for item in items]


def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """LIST wildcards (RFC 3501 §6.3.8): * matches anything, % anything but the separator."""
    full = reference + pattern
    regex = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in full)
    if full.upper().startswith("INBOX"):
        return re.compile("(?i:INBOX)" + regex[5:] + r"\Z")
    return re.compile(regex + r"\Z")


def _matches(regexes: list[re.Pattern[str]], name: str) -> bool:
    return any(regex.match(name) for regex in regexes)


def _ancestors(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts))]


def _list_line(
    verb: str, attributes: list[str], name: str, extra: bytes = b"", utf8: bool = False
) -> bytes:
    head = f'* {verb} ({" ".join(attributes)}) "/" '.encode()
    return head + encode_mailbox(name, utf8=utf8) + extra + b"\r\n"


def lsub_lines(
    folders: dict[str, FolderInfo],
    subs: set[str],
    regexes: list[re.Pattern[str]],
    percent_last: list[bool],
    utf8: bool = False,
) -> list[bytes]:
    """LSUB (RFC 3501 §6.3.9): the subscribed names that match; with a trailing `%`, also a
    level above a subscribed name that is not itself subscribed, flagged \\Noselect."""
    ordered = [n for n in folders if n in subs] + sorted(subs - folders.keys())
    out = [_list_line("LSUB", [], name, utf8=utf8) for name in ordered if _matches(regexes, name)]
    if any(percent_last):
        trailing = [r for r, last in zip(regexes, percent_last, strict=True) if last]
        parents = {a for name in subs for a in _ancestors(name) if a not in subs}
        for name in sorted(parents):
            if _matches(trailing, name):
                out.append(_list_line("LSUB", ["\\Noselect"], name, utf8=utf8))
    return out


def status_items(value: Value) -> list[str]:
    """STATUS's parenthesised item list (STATUS, LIST RETURN (STATUS …)), upper-cased."""
    if not isinstance(value, list) or not value:
        raise ProtocolError("STATUS takes a parenthesised list of items")
    items = [as_text(v).upper() for v in value]
    if any(i not in STATUS_ITEMS for i in items):
        raise ProtocolError("unknown STATUS item")
    return items


def list_return_options(value: Value) -> tuple[set[str], list[str] | None]:
    """LIST's RETURN options (RFC 5258 §3.2) and the STATUS items of a `STATUS (…)` option
    (RFC 5819), or None without one."""
    if not isinstance(value, list):
        raise ProtocolError("RETURN takes a list of options")
    returns: set[str] = set()
    status: list[str] | None = None
    position = 0
    while position < len(value):
        option = as_text(value[position]).upper()
        position += 1
        if option == "STATUS":
            if status is not None or position >= len(value):
                raise ProtocolError("RETURN STATUS takes one list of items")
            status = status_items(value[position])
            position += 1
        elif option in LIST_RETURN_OPTIONS:
            returns.add(option)
        else:
            raise ProtocolError("unknown LIST return option")
    return returns, status


def list_lines(
    folders: dict[str, FolderInfo],
    subs: set[str],
    regexes: list[re.Pattern[str]],
    selection: set[str],
    returns: set[str],
    status: Callable[[str], bytes | None] | None = None,
    utf8: bool = False,
) -> list[bytes]:
    """LIST with LIST-EXTENDED (RFC 5258) and SPECIAL-USE (RFC 6154) options; with `status`
    (LIST-STATUS, RFC 5819) each chosen mailbox's LIST line is followed by its STATUS line, or
    marked \\Noselect when the status cannot be had (the folder went away meanwhile)."""
    by_subscription = "SUBSCRIBED" in selection
    special_only = "SPECIAL-USE" in selection
    recursive = "RECURSIVEMATCH" in selection
    show_subscribed = by_subscription or "SUBSCRIBED" in returns
    names = list(folders)
    if by_subscription:
        names += sorted(subs - folders.keys())
    if recursive:
        known = set(names)
        names += sorted({a for n in known for a in _ancestors(n)} - known)

    def chosen(name: str) -> bool:
        if by_subscription and name not in subs:
            return False
        info = folders.get(name)
        return not special_only or (info is not None and info.special_use is not None)

    out = []
    for name in names:
        if not _matches(regexes, name):
            continue
        # RECURSIVEMATCH: a mailbox also answers for chosen descendants the pattern misses.
        child_info = (
            recursive
            and by_subscription
            and any(
                other.startswith(name + "/") and chosen(other) and not _matches(regexes, other)
                for other in names
            )
        )
        if not chosen(name) and not child_info:
            continue
        info = folders.get(name)
        if info is None:
            attributes = ["\\NonExistent"]
        else:
            children = any(other.startswith(name + "/") for other in folders)
            attributes = ["\\HasChildren" if children else "\\HasNoChildren"]
            if info.special_use:
                attributes.append(info.special_use)
        status_line = None
        if status is not None and info is not None and chosen(name):
            status_line = status(name)
            if status_line is None:
                attributes.append("\\Noselect")
        if show_subscribed and name in subs:
            attributes.append("\\Subscribed")
        extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if child_info else b""
        out.append(_list_line("LIST", attributes, name, extra, utf8))
        if status_line is not None:
            out.append(status_line)
    return out


class Commands:
    """Mixed into ImapSession; `self` is the session."""

    # --- helpers (blocking: run through self.blocking)

    def _maildir(self: ImapSession) -> Maildir:
        """The session's mailbox; the store's checks of the address (realpath) once per
        session, that it still exists (one stat) every time."""
        assert self.user is not None
        maildir = self.maildir
        if maildir is None or maildir[0] != self.user:
            self.maildir = (self.user, mail_store().open(self.user))
        elif not os.path.isdir(os.path.join(maildir[1].root, "cur")):
            raise MailboxMissing(f"no mailbox for {self.user}")
        return self.maildir[1]

    def _subscriptions(self: ImapSession, maildir: Maildir) -> set[str] | None:
        try:
            text = (maildir.root / SUBSCRIPTIONS_FILE).read_text("utf-8")
        except FileNotFoundError:
            return None  # never changed: every folder counts as subscribed
        return {line for line in text.splitlines() if line}

    def _set_subscription(self: ImapSession, name: str, on: bool) -> None:
        maildir = self._maildir()
        current = self._subscriptions(maildir)
        if current is None:
            current = {info.name for info in maildir.folders()}
        current = current | {name} if on else current - {name}
        path = maildir.root / SUBSCRIPTIONS_FILE
        temp = path.with_suffix(".tmp")
        temp.write_text("".join(f"{n}\n" for n in sorted(current)), "utf-8")
        temp.replace(path)

    def _usage(self: ImapSession) -> tuple[int, int]:
        row = db.session.execute(
            select(Mailbox.used_bytes, Mailbox.quota_bytes).where(Mailbox.id == self.mailbox_id)
        ).one()
        return int(row[0]), int(row[1])

    def _store_new(
        self: ImapSession, target: str, messages: list[IncomingMessage]
    ) -> list[StoredMessage] | str:
        """Reserve the bytes, then store all or nothing; what was stored, or a NO text."""
        try:
            folder = self._maildir().folder(target)
        except Exception as error:
            from provider.mailstore import FolderNotFound, InvalidFolderName

            if isinstance(error, FolderNotFound | InvalidFolderName):
                return "NO [TRYCREATE] Mailbox does not exist"
            raise
        total = sum(len(m.data) for m in messages)
        assert self.mailbox_id is not None
        # Journaled until the messages are on disk: a kill -9 in between is settled at start.
        held = quota.hold(db.session, self.mailbox_id, total, durable=False)
        if held is None:
            return OVERQUOTA
        try:
            stored = folder.deliver_many(messages)
        except BaseException:
            held.cancel()
            raise
        held.confirm_with_warning_level()
        return stored

    def own_hosts(self: ImapSession) -> list[str]:
        """The host names an absolute CATENATE URL may name for this server: the configured
        HOSTNAME, the address the client connected to, and localhost."""
        hosts = ["localhost"]
        configured = self.app.config.get("HOSTNAME")
        if configured:
            hosts.append(str(configured))
        local = self.writer.get_extra_info("sockname")
        if isinstance(local, tuple) and local:
            hosts.append(str(local[0]))
        return hosts

    def _append_catenated(
        self: ImapSession,
        target: str,
        messages: list[tuple[bytes | list[catenating.CatenatePart], IncomingMessage]],
    ) -> list[StoredMessage] | str:
        """APPEND's messages, CATENATE ones joined first (RFC 4469): then stored all or
        nothing as _store_new does; a NO text if a URL cannot be used or a message is too big."""
        incoming = []
        for content, message in messages:
            if not isinstance(content, bytes):
                assert self.user is not None
                try:
                    content = catenating.join_parts(
                        self._maildir(), content, self.user, self.own_hosts(), self.append_limit
                    )
                except catenating.BadUrl as error:
                    return error.response()
                except catenating.TooBig:
                    return "NO [TOOBIG] The joined message is larger than APPENDLIMIT"
            incoming.append(dataclasses.replace(message, data=content))
        return self._store_new(target, incoming)

    def _release(self: ImapSession, removed: list[MessageInfo]) -> None:
        total = sum(info.size for info in removed)
        if total and self.mailbox_id is not None:
            quota.release(db.session, self.mailbox_id, total, durable=False)
            db.session.commit()

    # --- authenticated state

    async def do_select(self: ImapSession, command: Command, readonly: bool = False) -> str:
        if len(command.args) not in (1, 2):
            raise ProtocolError("SELECT takes one mailbox name")
        parameters = qr.SelectParameters()
        if len(command.args) == 2:
            # RFC 4466 select parameters: CONDSTORE (RFC 7162 §3.1.8), QRESYNC (§3.2.5).
            parameters = qr.parse_select_parameters(command.args[1])
            if parameters.qresync is not None and not self.qresync:
                raise ProtocolError("QRESYNC needs ENABLE QRESYNC first")
        name = wire_name(command.args[0], utf8=self.utf8)
        if parameters.condstore:
            self.condstore = True
        if self.selected is not None:
            # RFC 7162 §3.2.11: what came before is the old mailbox's, what follows the new's.
            await self.send(b"* OK [CLOSED] Previous mailbox closed\r\n")
        self.selected = None
        self.saved_result = frozenset()
        condstore, resync = self.condstore, parameters.qresync

        def open_view() -> tuple[SelectedView, FolderSnapshot]:
            folder = self._maildir().folder(name)
            view = SelectedView(folder, readonly, condstore=condstore, qresync=self.qresync)
            snapshot = folder.snapshot(
                modseqs=condstore, expunged_since=resync.modseq if resync else None
            )
            top = snapshot.messages[-1].uid if snapshot.messages else 0
            # A read-write session claims \\Recent; EXAMINE only looks (RFC 3501 §6.3.2).
            recent_from = folder.recent_from() if readonly else folder.claim_recent(top)
            view.load(snapshot, recent_from)
            return view, snapshot

        view, snapshot = await self.blocking(open_view)
        unseen = view.first_unseen()
        lines = [
            *(line.decode().rstrip("\r\n") for line in view.flags_lines(view.keywords)),
            f"* {len(view.uids)} EXISTS",
            f"* {len(view.recent)} RECENT",
            f"* OK [UIDVALIDITY {view.uidvalidity}] UIDs valid",
            f"* OK [UIDNEXT {view.uidnext}] Predicted next UID",
        ]
        if unseen is not None:
            lines.append(f"* OK [UNSEEN {unseen}] First unseen")
        if condstore:
            lines.append(f"* OK [HIGHESTMODSEQ {view.highest_modseq}] Highest")
        await self.send("".join(line + "\r\n" for line in lines))
        if resync is not None and resync.uidvalidity == view.uidvalidity:
            await self.send_lines(self._resync_lines(view, snapshot, resync))
        self.selected = view
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return f"OK [{mode}] {'EXAMINE' if readonly else 'SELECT'} completed"

    async def do_examine(self: ImapSession, command: Command) -> str:
        return await self.do_select(command, readonly=True)

    @staticmethod
    def _resync_lines(
        view: SelectedView, snapshot: FolderSnapshot, resync: qr.QresyncParameter
    ) -> list[bytes]:
        """SELECT (QRESYNC ...) with the right UIDVALIDITY (RFC 7162 §3.2.5.1): VANISHED
        (EARLIER) for the known UIDs expunged since the client's modseq, then FETCH (UID FLAGS
        MODSEQ) of the known messages changed since — as UID FETCH known-uids (FLAGS)
        (CHANGEDSINCE modseq VANISHED) would, narrowed by the sequence match data."""
        known = resync.known_uids
        if known is None:
            known = [(1, view.uidnext - 1)] if view.uidnext > 1 else []
        expunged = snapshot.expunged
        assert expunged is not None
        floor = qr.seq_match_floor(resync.seq_match, view.uids)
        vanished = qr.vanished_earlier(
            known, view.uids, expunged.uids, expunged.complete, floor, view.uidnext
        )
        lines = []
        if vanished:
            lines.append(b"* VANISHED (EARLIER) %s\r\n" % qr.format_ranges(vanished).encode())
        modseqs = view.modseqs
        lines += [
            view.fetch_flags_line(uid, with_uid=True)
            for uid in view.uids
            if modseqs.get(uid, 0) > resync.modseq and qr.contains(known, uid)
        ]
        return lines

    @answers_disk_full
    async def do_create(self: ImapSession, command: Command) -> str:
        name = (
            wire_name(command.args[0], creating=True, utf8=self.utf8).rstrip("/")
            if command.args
            else ""
        )
        if not name:
            raise ProtocolError("CREATE takes a mailbox name")
        await self.blocking(lambda: self._maildir().create_folder(name))
        return "OK CREATE completed"

    async def do_delete(self: ImapSession, command: Command) -> str:
        name = wire_name(command.args[0], utf8=self.utf8)

        def delete() -> None:
            self._release(self._maildir().delete_folder(name))

        await self.blocking(delete)
        return "OK DELETE completed"

    @answers_disk_full
    async def do_rename(self: ImapSession, command: Command) -> str:
        old, new = (
            wire_name(command.args[0], utf8=self.utf8),
            wire_name(command.args[1], creating=True, utf8=self.utf8),
        )
        await self.blocking(lambda: self._maildir().rename_folder(old, new))
        return "OK RENAME completed"

    async def do_subscribe(self: ImapSession, command: Command) -> str:
        name = wire_name(command.args[0], utf8=self.utf8)
        await self.blocking(self._set_subscription, name, True)
        return "OK SUBSCRIBE completed"

    async def do_unsubscribe(self: ImapSession, command: Command) -> str:
        name = wire_name(command.args[0], utf8=self.utf8)
        await self.blocking(self._set_subscription, name, False)
        return "OK UNSUBSCRIBE completed"

    async def do_list(self: ImapSession, command: Command, lsub: bool = False) -> str:
        args = list(command.args)
        selection: set[str] = set()
        if not lsub and args and isinstance(args[0], list):
            selection = {as_text(v).upper() for v in args.pop(0)}
            # RFC 5258 §3: an unknown option is BAD, and RECURSIVEMATCH needs another one.
            if selection - LIST_SELECTION_OPTIONS:
                raise ProtocolError("unknown LIST selection option")
            if "RECURSIVEMATCH" in selection and not selection - {"RECURSIVEMATCH", "REMOTE"}:
                raise ProtocolError("RECURSIVEMATCH needs another selection option")
        if len(args) < 2:
            raise ProtocolError("LIST takes a reference and a pattern")
        reference = as_text(args[0])
        patterns = args[1] if isinstance(args[1], list) and not lsub else [args[1]]
        returns: set[str] = set()
        status: list[str] | None = None
        rest = args[2:]
        if rest:
            if lsub or len(rest) != 2 or as_text(rest[0]).upper() != "RETURN":
                raise ProtocolError("unexpected arguments after the LIST pattern")
            returns, status = list_return_options(rest[1])
        if status is not None and "HIGHESTMODSEQ" in status:
            await self.enable_condstore()
        verb = "LSUB" if lsub else "LIST"
        texts = [as_text(p) for p in patterns]
        if not lsub and texts == [""]:
            return await self._list_root(verb)

        if self.utf8:
            base = utf8_name(args[0])
            regexes = [pattern_regex(base, utf8_name(p)) for p in patterns]
        else:
            regexes = [pattern_regex(decoded_name(reference), decoded_name(t)) for t in texts]
        utf8 = self.utf8

        def listing() -> list[bytes]:
            maildir = self._maildir()
            folders = {info.name: info for info in maildir.folders()}
            subs = self._subscriptions(maildir)
            if subs is None:
                subs = set(folders)
            if lsub:
                percent_last = [t.endswith("%") for t in texts]
                return lsub_lines(folders, subs, regexes, percent_last, utf8)
            if status is None:
                return list_lines(folders, subs, regexes, selection, returns, utf8=utf8)

            def status_of(name: str) -> bytes | None:
                assert status is not None
                try:
                    values = self._status_values(maildir, name, status)
                except (FolderNotFound, MailstoreBusy):
                    return None
                return status_line(name, status, values, utf8)

            return list_lines(folders, subs, regexes, selection, returns, status_of, utf8)

        await self.send_lines(await self.blocking(listing))
        return f"OK {verb} completed"

    async def _list_root(self: ImapSession, verb: str) -> str:
        await self.send(f'* {verb} (\\Noselect) "/" ""\r\n')
        return f"OK {verb} completed"

    async def do_lsub(self: ImapSession, command: Command) -> str:
        return await self.do_list(command, lsub=True)

    async def do_status(self: ImapSession, command: Command) -> str:
        if len(command.args) != 2:
            raise ProtocolError("STATUS takes a mailbox and a list of items")
        name = wire_name(command.args[0], utf8=self.utf8)
        items = status_items(command.args[1])
        if "HIGHESTMODSEQ" in items:
            await self.enable_condstore()
        values = await self.blocking(lambda: self._status_values(self._maildir(), name, items))
        await self.send(status_line(name, items, values, self.utf8))
        return "OK STATUS completed"

    def _status_values(
        self: ImapSession, maildir: Maildir, name: str, items: list[str]
    ) -> dict[str, int]:
        """The STATUS items of one folder (blocking)."""
        folder = maildir.folder(name)
        snapshot = folder.snapshot()
        messages = snapshot.messages or []
        recent_from = folder.recent_from() if "RECENT" in items else 0
        values = {
            "MESSAGES": len(messages),
            "UIDNEXT": snapshot.uidnext,
            "UIDVALIDITY": snapshot.uidvalidity,
        }
        if "RECENT" in items:
            values["RECENT"] = sum(m.uid >= recent_from for m in messages)
        if "UNSEEN" in items:
            values["UNSEEN"] = sum("\\Seen" not in m.flags for m in messages)
        if "HIGHESTMODSEQ" in items:
            values["HIGHESTMODSEQ"] = folder.modseqs().highest
        if "SIZE" in items:
            values["SIZE"] = sum(fetching.rfc822_size(m.basename, None) or m.size for m in messages)
        return values

    @answers_disk_full
    async def do_append(self: ImapSession, command: Command) -> str:
        args = list(command.args)
        if len(args) < 2:
            raise ProtocolError("APPEND takes a mailbox and a message")
        name = wire_name(args.pop(0), utf8=self.utf8)
        incoming = []
        for flags, when, message in append_groups(args):
            if isinstance(message, bytes) and len(message) > self.append_limit:
                return "NO [TOOBIG] Message too large"
            system, keywords = split_flags(flags)
            internal_date, zone = parse_internal_date(when) if when is not None else (None, None)
            incoming.append((message, IncomingMessage(b"", system, keywords, internal_date, zone)))
        result = await self.blocking(self._append_catenated, name, incoming)
        if isinstance(result, str):
            return result
        await self.send_lines(dropped_keywords_notice(result))
        uids = format_sequence_set(stored.uid for stored in result)
        return f"OK [APPENDUID {result[0].uidvalidity} {uids}] APPEND completed"

    async def do_namespace(self: ImapSession, command: Command) -> str:
        await self.send('* NAMESPACE (("" "/")) NIL NIL\r\n')
        return "OK NAMESPACE completed"

    async def do_enable(self: ImapSession, command: Command) -> str:
        if not command.args:
            raise ProtocolError("ENABLE takes at least one capability")
        enabled = []
        for value in command.args:
            name = as_text(value).upper()
            if name == "CONDSTORE" and "CONDSTORE" not in enabled:
                # Not already on: RFC 5161 lists only what this command enabled.
                if not self.condstore:
                    enabled.append("CONDSTORE")
                await self.enable_condstore()
            elif name == "QRESYNC" and not self.qresync:
                # RFC 7162 §3.2.3: implies CONDSTORE; VANISHED instead of EXPUNGE from now on.
                self.qresync = True
                enabled.append("QRESYNC")
                await self.enable_condstore()
                if self.selected is not None:
                    self.selected.qresync = True
            elif name == "UTF8=ACCEPT" and not self.utf8 and self.selected is None:
                # RFC 6855 §3: only in the authenticated state; once on, for the session.
                self.utf8 = True
                enabled.append("UTF8=ACCEPT")
        await self.send("".join(f"* ENABLED{''.join(' ' + e for e in enabled)}\r\n"))
        return "OK ENABLE completed"

    async def do_compress(self: ImapSession, command: Command) -> str | None:
        """COMPRESS DEFLATE (RFC 4978): the tagged OK goes out plain, everything after it
        (both ways) is deflated."""
        if len(command.args) != 1 or as_text(command.args[0]).upper() != "DEFLATE":
            raise ProtocolError("COMPRESS takes one mechanism: DEFLATE")
        if deflate_active(self.writer):
            raise ProtocolError("COMPRESS is already active")
        await self.send(f"{command.tag} OK DEFLATE active\r\n")
        start_deflate(self.reader, self.writer)
        return None

    async def do_getquotaroot(self: ImapSession, command: Command) -> str:
        name = wire_name(command.args[0], utf8=self.utf8) if command.args else ""
        await self.blocking(lambda: self._maildir().folder(name))
        used, limit = await self.blocking(self._usage)
        await self.send(
            b"* QUOTAROOT "
            + encode_mailbox(name, utf8=self.utf8)
            + b' ""\r\n'
            + f'* QUOTA "" (STORAGE {used // 1024} {limit // 1024})\r\n'.encode()
        )
        return "OK GETQUOTAROOT completed"

    async def do_getquota(self: ImapSession, command: Command) -> str:
        if not command.args or as_text(command.args[0]) != "":
            return "NO [NONEXISTENT] No such quota root"
        used, limit = await self.blocking(self._usage)
        await self.send(f'* QUOTA "" (STORAGE {used // 1024} {limit // 1024})\r\n')
        return "OK GETQUOTA completed"

    async def do_idle(self: ImapSession, command: Command) -> str | None:
        # Woken at once by any process's change to the folder (inotify), else by the poll;
        # watched from before the "+", and looked at once after it (nothing slips between).
        changes = watch_folder(self.selected.folder.path if self.selected else None)
        changes.notify()
        reading: asyncio.Future[bytes | None] | None = None
        try:
            await self.send(b"+ idling\r\n")
            reading = asyncio.ensure_future(self.read_line(self.idle_timeout))
            while True:
                wake = {reading, changes.waiter()}
                await asyncio.wait(
                    wake, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
                if reading.done():
                    line = reading.result()
                    if line is None:
                        return None  # read_line has answered BAD
                    if line.rstrip(b"\r\n").upper() == b"DONE":
                        return "OK IDLE terminated"
                    await self.bad(command.tag, "Expected DONE")
                    return None
                await self.recheck_account()
                await self.sync_selected()
        finally:
            changes.close()
            if reading is not None and not reading.done():
                reading.cancel()

    # --- selected state

    async def do_check(self: ImapSession, command: Command) -> str:
        return "OK CHECK completed"

    async def do_close(self: ImapSession, command: Command) -> str:
        view = self.selected
        self.selected = None
        if view is not None and not view.readonly:
            await self.blocking(self._expunge, view, None)
        return "OK CLOSE completed"

    async def do_unselect(self: ImapSession, command: Command) -> str:
        self.selected = None
        return "OK UNSELECT completed"

    def _expunge(self: ImapSession, view: SelectedView, only: set[int] | None) -> list[int]:
        deleted = [
            info.uid
            for info in view.folder.messages()
            if "\\Deleted" in info.flags and (only is None or info.uid in only)
        ]
        removed = view.folder.expunge(deleted)
        self._release(removed)
        shared_cache(view.folder.path).forget(info.basename for info in removed)
        return [info.uid for info in removed]

    async def do_expunge(self: ImapSession, command: Command, uids: set[int] | None = None) -> str:
        view = self.selected
        assert view is not None
        if view.readonly:
            return "NO [READ-ONLY] Mailbox is read-only"
        removed = await self.blocking(self._expunge, view, uids)
        await self.send_lines(view.remove(set(removed)))
        return "OK EXPUNGE completed"

    def _targets(self: ImapSession, text: str, by_uid: bool) -> list[int]:
        """UIDs of the view a sequence set names (seq numbers or UIDs)."""
        view = self.selected
        assert view is not None
        if text == "$":
            # RFC 5182: the saved result, in either numbering; expunged messages drop out.
            saved = self.saved_result
            return [uid for uid in view.uids if uid in saved and uid not in view.gone]
        ranges = parse_sequence_set(text)
        uids = view.uids
        largest = (uids[-1] if uids else 0) if by_uid else len(uids)
        if not by_uid:
            # A message sequence number that does not exist is an error (RFC 3501 §9,
            # seq-number); a range ending in `*` is not (`1:*` on an empty mailbox is empty).
            for low, high in ranges:
                if low is not None and high is not None and max(low, high) > largest:
                    raise ProtocolError("Invalid message sequence number")
        if not uids:
            return []
        # Each range becomes a slice of the (ascending) UID list: bisect for UIDs, plain
        # indexes for sequence numbers; `*` is the largest (RFC 3501 §6.4.8: 4:* may mean 3:4).
        slices: list[tuple[int, int]] = []
        for low, high in ranges:
            a = largest if low is None else low
            b = largest if high is None else high
            a, b = min(a, b), max(a, b)
            if by_uid:
                slices.append((bisect.bisect_left(uids, a), bisect.bisect_right(uids, b)))
            else:
                slices.append((a - 1, b))
        if len(slices) == 1:
            start, stop = slices[0]
            return uids[max(start, 0) : stop]
        chosen: set[int] = set()
        for start, stop in slices:
            chosen.update(range(max(start, 0), stop))
        return [uids[index] for index in sorted(chosen)]

    async def do_uid(self: ImapSession, command: Command) -> str:
        if not command.args or not isinstance(command.args[0], Atom):
            raise ProtocolError("UID needs a command")
        sub = command.args[0].upper()
        inner = Command(command.tag, sub, command.args[1:])
        if sub == "FETCH":
            return await self.do_fetch(inner, by_uid=True)
        if sub == "STORE":
            return await self.do_store(inner, by_uid=True)
        if sub == "SEARCH":
            return await self.do_search(inner, by_uid=True)
        if sub == "SORT":
            return await self.do_sort(inner, by_uid=True)
        if sub == "THREAD":
            return await self.do_thread(inner, by_uid=True)
        if sub == "COPY":
            return await self.do_copy(inner, by_uid=True)
        if sub == "MOVE":
            return await self.do_move(inner, by_uid=True)
        if sub == "EXPUNGE":
            uids = set(self._targets(as_text(inner.args[0]), True))
            return await self.do_expunge(inner, uids)
        raise ProtocolError(f"unknown UID command {sub}")

    async def do_fetch(self: ImapSession, command: Command, by_uid: bool = False) -> str:
        if len(command.args) not in (2, 3):
            raise ProtocolError("FETCH takes a sequence set and items")
        view = self.selected
        assert view is not None
        items = fetching.parse_fetch_items(fetching.lone_preview_lazy(command.args))
        fetch_modifiers = qr.FetchModifiers()
        if len(command.args) == 3 and not fetching.is_lone_preview_lazy(command.args):
            fetch_modifiers = qr.parse_fetch_modifiers(
                command.args[2], by_uid=by_uid, qresync=self.qresync
            )
        changed_since = fetch_modifiers.changed_since
        # RFC 7162 §3.2.4: with QRESYNC a FETCH that sets \\Seen answers with the UID too.
        sets_seen = not view.readonly and any(item.sets_seen for item in items)
        uid_wanted = by_uid or (view.qresync and sets_seen)
        if uid_wanted and not any(item.name == "UID" for item in items):
            items.insert(0, fetching.FetchItem("UID"))
        wanted = self._targets(as_text(command.args[0]), by_uid)
        if fetch_modifiers.vanished:
            assert changed_since is not None
            await self.send_lines(
                await self._vanished_earlier(view, as_text(command.args[0]), changed_since)
            )
        if changed_since is not None or any(item.name == "MODSEQ" for item in items):
            await self.enable_condstore()
        has_modseq = any(item.name == "MODSEQ" for item in items)
        if (
            self.condstore
            and not has_modseq
            and (changed_since is not None or any(item.name == "FLAGS" for item in items))
        ):
            items.append(fetching.FetchItem("MODSEQ"))
        uids = [u for u in wanted if u not in view.gone]
        if changed_since is not None:
            # RFC 7162 §3.1.4: only the messages whose modseq is above the value; messages
            # expunged elsewhere are not asked for, so they are no reason for a NO either.
            modseqs = view.modseqs
            uids = [u for u in uids if modseqs.get(u, 0) > changed_since]
            wanted = uids
        run = FetchRun(view, uids, items)
        try:
            if run.sets_seen and view.condstore:
                await self.blocking(self._fetch_mark_seen, run)
            # One batch of responses at a time, each sent (as the client reads) before the next
            # is built: memory stays bounded whatever the client asks for (issue 11 item 2).
            while run.position < len(uids):
                await self._send_pieces(await self.blocking(self._fetch_batch, run))
        finally:
            run.close()
        if run.broken:
            return "NO [SERVERBUG] Some messages could not be read; the others were fetched"
        if run.unknown_cte:
            # RFC 3516 §4.3: a section whose encoding cannot be undone fails the request.
            return "NO [UNKNOWN-CTE] Cannot decode a section's content-transfer-encoding"
        # A message another session expunged (and this one was not told of yet) cannot be
        # fetched: say so rather than answer OK without it (RFC 2180 §4.1.2, RFC 5530).
        if run.missing or (not by_uid and len(uids) < len(wanted)):
            return "NO [EXPUNGEISSUED] Some messages were expunged; the others were fetched"
        return f"OK {'UID ' if by_uid else ''}FETCH completed"

    async def _vanished_earlier(
        self: ImapSession, view: SelectedView, text: str, since: int
    ) -> list[bytes]:
        """UID FETCH … (CHANGEDSINCE since VANISHED), RFC 7162 §3.2.6: the UIDs of the set
        (not only those in the mailbox) expunged after `since`, before any FETCH."""
        if text == "$":
            asked = qr.merge((uid, uid) for uid in self.saved_result)
        else:
            # `*` is the largest UID ever given out, so a just-expunged last message counts.
            largest = max(view.uidnext - 1, view.uids[-1] if view.uids else 0)
            asked = qr.merge(
                (min(a, b), max(a, b))
                for low, high in parse_sequence_set(text)
                for a, b in [(largest if low is None else low, largest if high is None else high)]
            )
        expunged = await self.blocking(view.folder.expunged_since, since)
        vanished = qr.vanished_earlier(
            asked, view.uids, expunged.uids, expunged.complete, uidnext=view.uidnext
        )
        if not vanished:
            return []
        return [b"* VANISHED (EARLIER) %s\r\n" % qr.format_ranges(vanished).encode()]

    async def _send_pieces(self: ImapSession, pieces: list[bytes | fetching.FileLiteral]) -> None:
        """Send responses, literals streamed from their files a chunk at a time; each write
        waits until the client has taken enough of the previous ones (session.drain)."""
        # Pieces end inside responses (before and after a literal): no BYE in between.
        self.mid_response = True
        try:
            waiting: list[bytes] = []  # responses sent together: one write, not one each
            for piece in pieces:
                if isinstance(piece, bytes):
                    waiting.append(piece)
                    continue
                await self.send(b"".join(waiting))
                waiting = []
                while chunk := await asyncio.to_thread(piece.next_chunk):
                    await self.send(chunk)
            if waiting:
                await self.send(b"".join(waiting))
        except OSError as error:
            if isinstance(error, ConnectionError):
                raise
            from provider.protocols.imap.session import Disconnect

            # Half a literal is out: the only way to keep the client in step is to hang up.
            log.error("IMAP FETCH for %s failed in a literal: %s", self.user, error)
            self.writer.transport.abort()
            raise Disconnect from None
        finally:
            self.mid_response = False
            for piece in pieces:
                if isinstance(piece, fetching.FileLiteral):
                    piece.close()

    def _fetch_mark_seen(self: ImapSession, run: FetchRun) -> None:
        """CONDSTORE: set \\Seen first, so that one look at the modseqs covers every message."""
        view = run.view
        for uid in run.uids:
            if "\\Seen" not in view.infos[uid].flags:
                try:
                    view.note_flags(view.folder.change_flags(uid, "add", {"\\Seen"}))
                except KeyError:
                    continue
                run.seen_now.add(uid)
        if run.seen_now:
            view.note_modseqs(view.folder.modseqs(), sorted(run.seen_now))

    def _fetch_batch(self: ImapSession, run: FetchRun) -> list[bytes | fetching.FileLiteral]:
        """The responses of the next messages, about FETCH_BATCH_BYTES of them or up to one
        that streams a literal from its file."""
        out: list[bytes | fetching.FileLiteral] = []
        built = 0
        try:
            while run.position < len(run.uids) and built < FETCH_BATCH_BYTES:
                uid = run.uids[run.position]
                run.position += 1
                if not run.needs_content:
                    line = self._fetch_plain(run.view, uid, run.items)
                    if line is not None:
                        out.append(line)
                        built += len(line)
                        continue
                response = self._fetch_message(run, uid)
                if response is None:
                    continue
                out += response.pieces
                built += response.size
                if response.streams:
                    break
        except BaseException:
            for piece in out:
                if isinstance(piece, fetching.FileLiteral):
                    piece.close()
            raise
        return out

    def _fetch_plain(
        self: ImapSession, view: SelectedView, uid: int, items: list[fetching.FetchItem]
    ) -> bytes | None:
        """The response for items that need nothing of the file (FLAGS, UID, sizes from the
        file name…): the common listing, kept lean; None if one of them needs the file."""
        info = view.infos[uid]
        parts = []
        for item in items:
            part = self._plain_item(view, info, item)
            if part is None:
                return None
            parts.append(part)
        return b"* %d FETCH (" % (view.seq_of(uid) or 0) + b" ".join(parts) + b")\r\n"

    def _fetch_message(self: ImapSession, run: FetchRun, uid: int) -> FetchResponse | None:
        """One message's `* n FETCH (…)` response, its big literals left to stream; None when
        the message is gone or unreadable (counted in `run`)."""
        view = run.view
        content = MessageContent(view, view.infos[uid], run)
        try:
            content.prepare()
        except (FileNotFoundError, KeyError, MessageNotFound):
            content.close()
            run.missing += 1
            return None
        except OSError:
            content.close()
            log.exception("cannot read message %s in %s", content.info.basename, view.folder)
            run.broken += 1
            return None
        flags_changed = uid in run.seen_now
        if run.sets_seen and "\\Seen" not in content.info.flags:
            content.info = view.folder.change_flags(uid, "add", {"\\Seen"})
            view.note_flags(content.info)
            flags_changed = True
        response = FetchResponse(view.seq_of(uid) or 0)
        try:
            for item in run.items:
                self._fetch_item(view, content, item, response)
            if flags_changed and not run.wants_flags:
                response.add(view.flags_part(uid))
                if view.condstore and not run.wants_modseq:
                    response.add(view.modseq_part(uid))
        except UnknownTransferEncoding:
            response.close()
            content.close()
            run.unknown_cte += 1
            return None
        except BaseException:
            response.close()
            content.close()
            raise
        if not response.streams:
            content.close()  # else closed with the last literal streamed from it
        response.finish()
        return response

    def _plain_item(
        self: ImapSession, view: SelectedView, info: MessageInfo, item: fetching.FetchItem
    ) -> bytes | None:
        """An item that needs nothing of the message file; None for any other."""
        name = item.name
        if item.section is not None:
            return None
        if name == "FLAGS":
            return view.flags_part(info.uid)
        if name == "UID":
            return b"UID %d" % info.uid
        if name == "RFC822.SIZE":
            size = fetching.rfc822_size(info.basename, None)
            return None if size is None else b"RFC822.SIZE %d" % size
        if name == "MODSEQ":
            return view.modseq_part(info.uid)
        if name == "INTERNALDATE":
            moment = fetching.format_internal_date(info.internal_date, info.zone_minutes)
            return f'INTERNALDATE "{moment}"'.encode()
        if name == "SAVEDATE":
            return fetch_more.save_date_item(info)
        if name == "PREVIEW":
            # Made before (kept in the folder's cache), else LAZY answers NIL at once.
            text = shared_cache(view.folder.path).preview(info.basename)
            return fetch_more.preview_item(text) if text is not None or item.lazy else None
        return None

    def _fetch_item(
        self: ImapSession,
        view: SelectedView,
        content: MessageContent,
        item: fetching.FetchItem,
        response: FetchResponse,
    ) -> None:
        plain = self._plain_item(view, content.info, item)
        if plain is not None:
            response.add(plain)
            return
        name = item.name
        if name == "BINARY":
            decoded = content.binary(item.section or "")
            response.add(fetch_more.binary_item(item.label, decoded, item.partial))
        elif name == "BINARY.SIZE":
            response.add(b"%s %d" % (item.label.encode(), len(content.binary(item.section or ""))))
        elif name == "PREVIEW":
            response.add(fetch_more.preview_item(content.preview()))
        elif item.section is not None:
            response.add_literal(item.label.encode(), content.literal(item.section, item.partial))
        elif name in LITERAL_SECTIONS:
            response.add_literal(name.encode(), content.literal(LITERAL_SECTIONS[name], None))
        elif name == "RFC822.SIZE":
            response.add(b"RFC822.SIZE %d" % content.rfc822_size())
        elif name == "ENVELOPE":
            response.add(b"ENVELOPE " + fetching.envelope_bytes(content.envelope()))
        elif name == "BODYSTRUCTURE":
            structure = fetching.body_structure(content.parsed().body, True)
            response.add(b"BODYSTRUCTURE " + structure)
        else:
            assert name == "BODY"
            response.add(b"BODY " + fetching.body_structure(content.parsed().body, False))

    @answers_disk_full
    async def do_store(self: ImapSession, command: Command, by_uid: bool = False) -> str:
        args = list(command.args)
        unchanged_since = None
        if len(args) == 4:
            unchanged_since = modifiers(args.pop(1), ("UNCHANGEDSINCE",), "STORE")["UNCHANGEDSINCE"]
        if len(args) != 3:
            raise ProtocolError("STORE takes a sequence set, an action and flags")
        command = Command(command.tag, command.name, args)
        view = self.selected
        assert view is not None
        action = as_text(command.args[1]).upper()
        silent = action.endswith(".SILENT")
        mode = action.removesuffix(".SILENT")
        if mode not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise ProtocolError("STORE action must be FLAGS, +FLAGS or -FLAGS")
        system, keywords = split_flags(flag_list(command.args[2]))
        if view.readonly:
            return "NO [READ-ONLY] Mailbox is read-only"
        uids = [u for u in self._targets(as_text(command.args[0]), by_uid) if u not in view.gone]
        if unchanged_since is not None:
            await self.enable_condstore()
            return await self._store_conditional(
                view, uids, unchanged_since, mode, system, keywords, silent, by_uid
            )

        def store() -> list[bytes]:
            infos: list[MessageInfo] = []
            change = STORE_MODES[mode]
            for uid in uids:
                try:
                    infos.append(view.folder.change_flags(uid, change, system, keywords))
                except KeyError:
                    continue
            # A keyword new to the folder is named in FLAGS before a FETCH shows it.
            lines = view.announce_keywords(view.folder.keyword_names()) if keywords else []
            for info in infos:
                view.note_flags(info)
            changed = [info.uid for info in infos]
            if view.condstore:  # the FETCH responses then carry the new MODSEQ
                view.note_modseqs(view.folder.modseqs(), changed)
            if silent:
                return lines
            return lines + [view.fetch_flags_line(uid, with_uid=by_uid) for uid in changed]

        try:
            lines = await self.blocking(store)
        except TooManyKeywords as error:
            return f"NO [LIMIT] {error}; nothing was changed"
        await self.send_lines(lines)
        return f"OK {'UID ' if by_uid else ''}STORE completed"

    async def _store_conditional(
        self: ImapSession,
        view: SelectedView,
        uids: list[int],
        since: int,
        mode: str,
        system: list[str],
        keywords: list[str],
        silent: bool,
        by_uid: bool,
    ) -> str:
        """STORE (UNCHANGEDSINCE n), RFC 7162 §3.1.3: messages modified after n are left alone
        and named in [MODIFIED]; the others answer with FETCH and MODSEQ even when .SILENT."""

        def store() -> tuple[list[bytes], list[int]]:
            done, failed, modseqs = view.folder.change_flags_unchanged_since(
                uids, since, STORE_MODES[mode], system, keywords
            )
            lines = view.announce_keywords(view.folder.keyword_names()) if keywords else []
            for info in done:
                view.note_flags(info)
            view.note_modseqs(modseqs, [info.uid for info in done])
            lines += [
                view.fetch_flags_line(info.uid, with_uid=by_uid, flags=not silent) for info in done
            ]
            return lines, failed

        try:
            lines, failed = await self.blocking(store)
        except TooManyKeywords as error:
            return f"NO [LIMIT] {error}; nothing was changed"
        await self.send_lines(lines)
        if failed:
            numbers = failed if by_uid else [view.seq_of(uid) or 0 for uid in failed]
            return f"OK [MODIFIED {format_sequence_set(numbers)}] Conditional STORE failed"
        return f"OK {'UID ' if by_uid else ''}STORE completed"

    async def do_search(self: ImapSession, command: Command, by_uid: bool = False) -> str:
        args = list(command.args)
        saving = saves_result(args)
        try:
            result = await self._search(command.tag, args, by_uid)
        except ProtocolError:
            raise  # BAD leaves `$` as it was (RFC 9051 §6.4.4.1)
        except BaseException:
            if saving:
                self.saved_result = frozenset()
            raise
        if saving and not result.startswith("OK"):
            self.saved_result = frozenset()  # a NO with SAVE empties `$`
        return result

    async def _search(self: ImapSession, tag: str, args: list[Value], by_uid: bool) -> str:
        options, partial, args = return_options(args)
        args, charset_refusal = search_charset(args, self.utf8)
        if charset_refusal is not None:
            return charset_refusal
        view = self.selected
        assert view is not None
        used: set[str] = set()
        predicate = parse_search(args, used)
        with_modseq = "MODSEQ" in used
        if with_modseq:
            await self.enable_condstore()
        # Header keys (FROM, SUBJECT…) need only the header block, kept in memory; BODY and
        # TEXT the whole file. Any atom or string spelled BODY or TEXT counts (a needle too):
        # reading the whole file is always right, only slower.
        whole = _mentions(args, ("BODY", "TEXT"))
        matches = await self.blocking(self.search_matches, view, predicate, with_modseq, whole)
        numbers = [uid if by_uid else seq for seq, uid, _ in matches]
        modseq_of = {(uid if by_uid else seq): modseq for seq, uid, modseq in matches}
        done = f"OK {'UID ' if by_uid else ''}SEARCH completed"
        if options is None:
            # RFC 7162 §3.1.6: a MODSEQ search appends the highest modseq of what it found.
            top = max(modseq_of.values(), default=0)
            suffix = f" (MODSEQ {top})" if with_modseq and numbers else ""
            line = "* SEARCH" + "".join(f" {n}" for n in numbers) + suffix + "\r\n"
            await self.send(line.encode())
            return done
        returned = saved_part(options, numbers)
        modseq = max((modseq_of[n] for n in returned), default=0) if with_modseq else None
        line = esearch_line(tag, by_uid, options, numbers, modseq, partial=partial)
        if line is not None:
            await self.send(line)
        if "UPDATE" in options:
            await self._keep_context(tag, by_uid, predicate, with_modseq, whole, matches)
        if "SAVE" in options:
            kept = set(returned)
            self.saved_result = frozenset(
                uid for seq, uid, _ in matches if (uid if by_uid else seq) in kept
            )
            return done + ", result saved"
        return done

    async def _keep_context(
        self: ImapSession,
        tag: str,
        by_uid: bool,
        predicate: Predicate,
        with_modseq: bool,
        whole: bool,
        matches: list[tuple[int, int, int]],
    ) -> None:
        """RETURN (UPDATE): keep the search live (RFC 5267 §4.3), or say NOUPDATE past the
        limit. A tag used again replaces its earlier search."""
        view = self.selected
        assert view is not None
        if tag not in view.contexts and len(view.contexts) >= MAX_CONTEXTS:
            await self.send(noupdate_line(tag))
            return
        view.contexts[tag] = SearchContext(
            tag,
            by_uid,
            predicate,
            with_modseq,
            whole,
            {uid for _, uid, _ in matches},
            view.changes,
        )

    async def do_cancelupdate(self: ImapSession, command: Command) -> str:
        """CANCELUPDATE "tag" … (RFC 5267 §4.3.5): those searches are no longer kept."""
        if not command.args:
            raise ProtocolError("CANCELUPDATE takes the tags of the searches to stop")
        view = self.selected
        assert view is not None
        tags = [as_text(arg) for arg in command.args]
        unknown = [tag for tag in tags if tag not in view.contexts]
        for tag in tags:
            view.contexts.pop(tag, None)
        if unknown:
            return f"NO No live search with the tag {unknown[0]}"
        return "OK Updates cancelled"

    async def update_search_contexts(self: ImapSession) -> None:
        """ADDTO and REMOVEFROM for every live search whose result the folder's changes may
        have moved (evaluated again whole, in a thread). Messages expunged but not yet reported
        stay in a result until their EXPUNGE, which removes them (SelectedView.remove)."""
        view = self.selected
        if view is None or not view.contexts:
            return
        stale = [c for c in view.contexts.values() if c.seen != view.changes]
        if not stale:
            return
        changes = view.changes

        def evaluate() -> list[bytes]:
            out = []
            for context in stale:
                found = {
                    uid
                    for _, uid, _ in self.search_matches(
                        view, context.predicate, context.with_modseq, context.whole
                    )
                }
                found |= context.matched & view.gone
                left = context.matched - found
                joined = found - context.matched
                if left or joined:
                    numbers = functools.partial(view.numbers, by_uid=context.by_uid)
                    out.append(update_line(context, numbers(left), numbers(joined)))
                context.matched, context.seen = found, changes
            return out

        await self.send_lines(await self.blocking(evaluate))

    async def do_sort(self: ImapSession, command: Command, by_uid: bool = False) -> str:
        """SORT (RFC 5256) and, with RETURN, ESORT (RFC 5267 §3.2; SAVE as RFC 5182)."""
        args = list(command.args)
        saving = saves_result(args)
        try:
            result = await self._sort(command.tag, args, by_uid)
        except ProtocolError:
            raise
        except BaseException:
            if saving:
                self.saved_result = frozenset()
            raise
        if saving and not result.startswith("OK"):
            self.saved_result = frozenset()
        return result

    async def _sort(self: ImapSession, tag: str, args: list[Value], by_uid: bool) -> str:
        options, partial, args = return_options(args)
        if options is not None and "UPDATE" in options:
            # Live sorted results are CONTEXT=SORT, which is not offered.
            raise ProtocolError("SORT cannot RETURN (UPDATE): only searches stay live")
        if len(args) < 3:
            raise ProtocolError("SORT takes sort criteria, a charset and search keys")
        criteria = parse_sort_criteria(args[0])
        keys = await self._charset_and_keys(args[1:])
        if isinstance(keys, str):
            return keys
        predicate, with_modseq, view = keys

        def sorted_messages() -> list[SortMessage]:
            found = self._sort_messages(
                view, predicate, with_modseq, needs_content(criteria), references=False
            )
            sort_messages(found, criteria)
            return found

        found = await self.blocking(sorted_messages)
        numbers = [m.uid if by_uid else m.seq for m in found]
        done = f"OK {'UID ' if by_uid else ''}SORT completed"
        if options is None:
            top = max((m.modseq for m in found), default=0)
            suffix = f" (MODSEQ {top})" if with_modseq and found else ""
            await self.send(
                ("* SORT" + "".join(f" {n}" for n in numbers) + suffix + "\r\n").encode()
            )
            return done
        kept = found
        if found and not options & {"ALL", "COUNT"} and options & {"MIN", "MAX"}:
            kept = [found[0]] if "MIN" in options else []
            if "MAX" in options and found[-1] is not found[0]:
                kept.append(found[-1])
        modseq = max((m.modseq for m in kept), default=0) if with_modseq else None
        line = esort_line(tag, by_uid, options, numbers, modseq, partial)
        if line is not None:
            await self.send(line)
        if "SAVE" in options:
            self.saved_result = frozenset(m.uid for m in kept)
            return done + ", result saved"
        return done

    async def do_thread(self: ImapSession, command: Command, by_uid: bool = False) -> str:
        """THREAD ORDEREDSUBJECT / REFERENCES (RFC 5256)."""
        args = list(command.args)
        if len(args) < 3 or not isinstance(args[0], Atom):
            raise ProtocolError("THREAD takes an algorithm, a charset and search keys")
        algorithm = args[0].upper()
        if algorithm not in THREAD_ALGORITHMS:
            raise ProtocolError(f"unknown threading algorithm {args[0]}")
        keys = await self._charset_and_keys(args[1:])
        if isinstance(keys, str):
            return keys
        predicate, with_modseq, view = keys

        def threads() -> str:
            references = algorithm == "REFERENCES"
            found = self._sort_messages(view, predicate, with_modseq, True, references)
            roots = references_threads(found) if references else ordered_subject_threads(found)
            return format_threads(roots, (lambda m: m.uid) if by_uid else (lambda m: m.seq))

        data = await self.blocking(threads)
        await self.send(f"* THREAD{' ' if data else ''}{data}\r\n".encode())
        return f"OK {'UID ' if by_uid else ''}THREAD completed"

    async def _charset_and_keys(
        self: ImapSession, args: list[Value]
    ) -> str | tuple[Predicate, bool, SelectedView]:
        """SORT's and THREAD's shared tail, a charset then search keys: the predicate, whether
        it asks for MODSEQ (CONDSTORE turned on then) and the selected view; or the tagged NO
        for a charset we do not support."""
        refusal = sort_charset(args[0])
        if refusal is not None:
            return refusal
        used: set[str] = set()
        predicate = parse_search(args[1:], used)
        with_modseq = "MODSEQ" in used
        if with_modseq:
            await self.enable_condstore()
        view = self.selected
        assert view is not None
        return predicate, with_modseq, view

    def _sort_messages(
        self: ImapSession,
        view: SelectedView,
        predicate: Predicate,
        with_modseq: bool,
        content: bool,
        references: bool,
    ) -> list[SortMessage]:
        """The found messages with what sorting or threading needs of them (blocking): the
        parsed header only when a criterion needs more than the file name, the References
        field only for REFERENCES threading. A message that vanished meanwhile is left out."""
        matches = self.search_matches(view, predicate, with_modseq)
        cache = shared_cache(view.folder.path) if content else None
        found = []
        for seq, uid, modseq in matches:
            info = view.infos[uid]
            size = fetching.rfc822_size(info.basename, None) or info.size
            parsed = None
            header = None
            if cache is not None:
                try:
                    parsed = cache.get(info.basename, info.path)
                    if references:
                        header = header_reader(view, info, parsed)
                except (OSError, KeyError, MessageNotFound):
                    continue
            message = sort_message(seq, info, size, parsed, header)
            message.modseq = modseq
            found.append(message)
        return found

    def search_matches(
        self: ImapSession,
        view: SelectedView,
        predicate: Predicate,
        with_modseq: bool,
        whole: bool = True,
    ) -> list[tuple[int, int, int]]:
        """(sequence number, UID, modseq) of the messages the predicate holds for, in order
        (blocking). A message that vanished or cannot be read is left out. Without `whole`
        (no BODY or TEXT key: see _mentions) a message is loaded as its header block only,
        which the folder's shared cache keeps in memory."""
        cache = shared_cache(view.folder.path)
        found = []
        saved = self.saved_result
        largest_uid = view.uids[-1] if view.uids else 0
        for seq, uid in enumerate(view.uids, 1):
            info = view.infos.get(uid)
            if info is None or uid in view.gone:
                continue

            def load(info: MessageInfo = info) -> tuple[bytes, ParsedMessage | MessageHeader]:
                if whole:
                    return view.folder.read(info.uid), cache.get(info.basename, info.path)
                try:
                    header = cache.header(info.basename, info.path)
                except FileNotFoundError:
                    raise KeyError(info.uid) from None  # expunged meanwhile: left out
                return header.block, header

            candidate = Candidate(
                seq, info, uid in view.recent, len(view.uids), largest_uid, load, saved=saved
            )
            if with_modseq:
                candidate.modseq = view.modseqs.get(uid, 0)
            try:
                if predicate(candidate):
                    found.append((seq, uid, candidate.modseq))
            except (OSError, KeyError):
                continue
        return found

    def _copy(
        self: ImapSession, view: SelectedView, uids: list[int], target: str, move: bool
    ) -> tuple[str, list[int], list[bytes]]:
        """(a NO text, or the COPYUID code), the source UIDs copied, and warnings to send."""
        messages = []
        sources = []
        for uid in uids:
            info = view.infos[uid]
            try:
                data = view.folder.read(uid)
            except KeyError:
                continue
            messages.append(
                IncomingMessage(
                    data,
                    info.flags,
                    info.keywords,
                    info.internal_date,
                    info.zone_minutes,
                    source=info.path,
                )
            )
            sources.append(uid)
        if not messages:
            return "OK Nothing to copy", [], []
        result = self._store_moved(target, messages) if move else self._store_new(target, messages)
        if isinstance(result, str):
            return result, [], []
        code = (
            f"[COPYUID {result[0].uidvalidity} {format_sequence_set(sources)} "
            f"{format_sequence_set(s.uid for s in result)}]"
        )
        return code, sources, dropped_keywords_notice(result)

    def _store_moved(
        self: ImapSession, target: str, messages: list[IncomingMessage]
    ) -> list[StoredMessage] | str:
        """MOVE keeps the bytes inside the mailbox, so the usage does not change (the copies
        are stored, then the originals expunged without releasing their quota)."""
        from provider.mailstore import FolderNotFound, InvalidFolderName

        try:
            folder: Folder = self._maildir().folder(target)
        except (FolderNotFound, InvalidFolderName):
            return "NO [TRYCREATE] Mailbox does not exist"
        return folder.deliver_many(messages)

    @answers_disk_full
    async def do_copy(self: ImapSession, command: Command, by_uid: bool = False) -> str:
        if len(command.args) != 2:
            raise ProtocolError("COPY takes a sequence set and a mailbox")
        view = self.selected
        assert view is not None
        uids = [u for u in self._targets(as_text(command.args[0]), by_uid) if u not in view.gone]
        target = wire_name(command.args[1], utf8=self.utf8)
        code, _, notice = await self.blocking(self._copy, view, uids, target, False)
        if code.startswith(("NO", "OK")):
            return code
        await self.send_lines(notice)
        return f"OK {code} COPY completed"

    @answers_disk_full
    async def do_move(self: ImapSession, command: Command, by_uid: bool = False) -> str:
        if len(command.args) != 2:
            raise ProtocolError("MOVE takes a sequence set and a mailbox")
        view = self.selected
        assert view is not None
        if view.readonly:
            return "NO [READ-ONLY] Mailbox is read-only"
        uids = [u for u in self._targets(as_text(command.args[0]), by_uid) if u not in view.gone]
        target = wire_name(command.args[1], utf8=self.utf8)
        code, sources, notice = await self.blocking(self._copy, view, uids, target, True)
        if code.startswith(("NO", "OK")):
            return code
        await self.send_lines(notice)
        # RFC 6851 §4.3: COPYUID comes in an untagged OK before the EXPUNGEs.
        await self.send(f"* OK {code} Moved\r\n")

        def remove() -> list[int]:
            removed = view.folder.expunge(sources)
            shared_cache(view.folder.path).forget(info.basename for info in removed)
            return [info.uid for info in removed]

        removed = await self.blocking(remove)
        await self.send_lines(view.remove(set(removed)))
        view.highest_due = view.highest_due or bool(removed and view.condstore)
        return "OK MOVE completed"


def _mentions(args: list[Value], words: tuple[str, ...]) -> bool:
    """Whether any atom or string in `args` (nested lists too) is one of `words`."""
    for arg in args:
        if isinstance(arg, list):
            if _mentions(arg, words):
                return True
        else:
            text = arg.decode("latin-1") if isinstance(arg, bytes) else arg
            if text.upper() in words:
                return True
    return False


def sort_charset(value: Value) -> str | None:
    """SORT's and THREAD's mandatory charset (RFC 5256 §3): the NO for one not supported."""
    if isinstance(value, list):
        raise ProtocolError("expected a charset")
    if as_text(value).upper() not in ("UTF-8", "US-ASCII"):
        return "NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset"
    return None


def header_reader(
    view: SelectedView, info: MessageInfo, parsed: ParsedMessage
) -> Callable[[str], str | None]:
    """A function giving the first value of a header field of this message (unfolded), which
    reads only the header block of the file, once."""
    header: bytes | None = None

    def value(name: str) -> str | None:
        nonlocal header
        if header is None:
            try:
                with open(info.path, "rb") as file:
                    header = file.read(parsed.header_size)
            except FileNotFoundError:
                header = view.folder.read(info.uid)[: parsed.header_size]
        for field_name, start, end in parsed.headers:
            if field_name == name:
                raw = header[start:end].partition(b":")[2]
                return raw.replace(b"\r\n", b"").replace(b"\n", b"").decode("utf-8", "replace")
        return None

    return value


AppendGroup = tuple[list[str], str | None, bytes | list[catenating.CatenatePart]]


def append_groups(args: list[Value]) -> list[AppendGroup]:
    """APPEND's messages after the mailbox (RFC 3502 MULTIAPPEND): each `[flags] [date-time]
    message`, the message a literal, a literal8 (RFC 3516 §4.4), `UTF8 (literal8)` (RFC 6855
    §4) or `CATENATE (parts)` (RFC 4469 §5); BAD for anything else or for no message at all."""
    groups: list[AppendGroup] = []
    position = 0
    while position < len(args):
        flags: list[str] = []
        when: str | None = None
        if isinstance(args[position], list):
            flags = flag_list(args[position])
            position += 1
        date = args[position] if position < len(args) else None
        if isinstance(date, bytes) and not isinstance(date, LiteralArg):
            when = as_text(date)
            position += 1
        if position >= len(args):
            raise ProtocolError("APPEND needs a message literal")
        data = args[position]
        position += 1
        if isinstance(data, Atom) and data.upper() == "UTF8":
            inner = args[position] if position < len(args) else None
            position += 1
            if not isinstance(inner, list) or len(inner) != 1 or not isinstance(inner[0], Literal8):
                raise ProtocolError("UTF8 takes a parenthesised literal8: UTF8 (~{n}…)")
            data = inner[0]
        elif isinstance(data, Atom) and data.upper() == "CATENATE":
            parts = catenating.parse_catenate(args[position] if position < len(args) else None)
            position += 1
            groups.append((flags, when, parts))
            continue
        elif not isinstance(data, LiteralArg):
            raise ProtocolError("the message must be a literal")
        groups.append((flags, when, catenating.checked_literal(data)))
    if not groups:
        raise ProtocolError("APPEND needs a message literal")
    return groups


def status_line(name: str, items: list[str], values: dict[str, int], utf8: bool = False) -> bytes:
    """`* STATUS name (ITEM n …)` in the order the items were asked for."""
    body = " ".join(f"{item} {values[item]}" for item in items)
    return b"* STATUS " + encode_mailbox(name, utf8=utf8) + f" ({body})\r\n".encode()


def parse_internal_date(text: str) -> tuple[float, int]:
    """RFC 3501 date-time `17-Jul-1996 02:44:25 -0700` → (timestamp, zone minutes: -420).
    ProtocolError (BAD) for a date the store cannot keep as it is, rather than a changed one."""
    try:
        moment = datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        raise ProtocolError(f"bad date-time {text!r}") from None
    offset = moment.utcoffset()
    timestamp = moment.timestamp()
    try:
        check_internal_date(timestamp)
    except InvalidDate as error:
        raise ProtocolError(f"date-time {text!r} out of range: {error}") from None
    return timestamp, int(offset.total_seconds() // 60) if offset else 0


# --- FETCH: responses built one message at a time, big literals streamed from the file -------

# Response octets built per trip to a worker thread before they are sent (issue 11 item 2).
FETCH_BATCH_BYTES = 256 * 1024
# A message file bigger than this is never read whole for a literal: it is streamed.
STREAM_THRESHOLD = 256 * 1024
# The fetch-atts that are BODY[section] under another name (RFC 3501 §6.4.5).
LITERAL_SECTIONS = {"RFC822": "", "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}
_PARSED_ITEMS = frozenset({"ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.HEADER", "RFC822.TEXT"})


class FetchRun:
    """One FETCH command in progress: what it asks for, how far it got, what went wrong."""

    def __init__(
        self, view: SelectedView, uids: list[int], items: list[fetching.FetchItem]
    ) -> None:
        self.view = view
        self.uids = uids
        self.items = items
        self.position = 0
        self.missing = 0
        self.broken = 0
        self.sets_seen = not view.readonly and any(i.sets_seen for i in items)
        self.seen_now: set[int] = set()
        self.unknown_cte = 0
        # BODY[] (the whole message) needs only the file; any other section its structure.
        # PREVIEW needs both only when it was not made before (MessageContent.preview).
        parsing = [
            i
            for i in items
            if (i.name in _PARSED_ITEMS and i.section is None)
            or i.section not in (None, "")
            or (i.name == "PREVIEW" and not i.lazy)
        ]
        # ENVELOPE alone (a client's message list) needs only the header block, as Dovecot's
        # cache keeps the envelope apart from the body structure: no MIME walk of the body.
        self.envelope_from_header = bool(parsing) and all(
            i.name == "ENVELOPE" and i.section is None for i in parsing
        )
        self.needs_parse = bool(parsing) and not self.envelope_from_header
        self.needs_file = any(
            i.section is not None
            or i.name in LITERAL_SECTIONS
            or (i.name == "PREVIEW" and not i.lazy)
            for i in items
        )
        self.needs_content = self.needs_file or self.needs_parse or self.envelope_from_header
        self.wants_size = any(i.name == "RFC822.SIZE" for i in items)
        self.wants_flags = any(i.name == "FLAGS" for i in items)
        self.wants_modseq = any(i.name == "MODSEQ" for i in items)
        self.cache = (
            shared_cache(view.folder.path)
            if self.needs_parse or self.envelope_from_header
            else None
        )

    def close(self) -> None:
        """Nothing to release: the folder's cache stays open for the next command."""


class MessageContent:
    """A message's file for one FETCH response, opened once and read only as far as needed:
    whole when it is small, in chunks (FileLiteral) when it is not."""

    def __init__(self, view: SelectedView, info: MessageInfo, run: FetchRun) -> None:
        self.view = view
        self.info = info
        self.run = run
        self.file: BinaryIO | None = None
        self.size = 0
        self._data: bytes | None = None
        self._parsed: ParsedMessage | None = None
        self._header: MessageHeader | None = None
        self._binary: dict[str, bytes] = {}

    def prepare(self) -> None:
        """Open the file (it may have been renamed since the listing: looked up again) and
        read what the items need; the errors are those of a message gone or unreadable."""
        run = self.run
        if run.needs_file or (
            run.wants_size and fetching.rfc822_size(self.info.basename, None) is None
        ):
            self.file = self._open()
            self.size = os.fstat(self.file.fileno()).st_size
        if run.needs_parse:
            self.parsed()
        elif run.envelope_from_header:
            assert run.cache is not None
            self._header = run.cache.header(self.info.basename, self.info.path)

    def _open(self) -> BinaryIO:
        try:
            return open(self.info.path, "rb")
        except FileNotFoundError:
            self.info = self.view.folder.get(self.info.uid)
            return open(self.info.path, "rb")

    def envelope(self) -> Envelope:
        if self._parsed is None and self._header is not None:
            return self._header.envelope
        return self.parsed().envelope

    def parsed(self) -> ParsedMessage:
        if self._parsed is None:
            assert self.run.cache is not None
            self._parsed = self.run.cache.get(self.info.basename, self.info.path)
        return self._parsed

    def data(self) -> bytes:
        """The whole file (only ever asked of a small one)."""
        if self._data is None:
            assert self.file is not None
            self.file.seek(0)
            self._data = self.file.read()
        return self._data

    @property
    def pure_crlf(self) -> bool:
        """Every line end is CRLF already (the W= size in the name equals the file's)."""
        return fetching.rfc822_size(self.info.basename, None) == self.size

    def rfc822_size(self) -> int:
        size = fetching.rfc822_size(self.info.basename, None)
        if size is None:
            assert self.file is not None
            size = fetching.crlf_length(self.file, 0, self.size)
        return size

    def literal(
        self, section: str, partial: tuple[int, int] | None
    ) -> bytes | fetching.FileLiteral:
        """BODY[section]<partial>: the encoded literal, or a FileLiteral to stream."""
        assert self.file is not None
        if self.size <= STREAM_THRESHOLD:
            data = self.data()
            if section:
                data = section_bytes(data, self.parsed(), section)
            return encode_literal(fetching.partial_of(fetching.to_crlf(data), partial))
        if section:
            start, end, contiguous = fetching.section_span(self.parsed(), section)
        else:
            start, end, contiguous = 0, self.size, True
        if not contiguous or end - start <= STREAM_THRESHOLD:
            # Small, or picked from the header: read just those octets.
            self.file.seek(0 if not contiguous else start)
            octets = self.file.read(end if not contiguous else end - start)
            if not contiguous:
                octets = section_bytes(octets, self.parsed(), section)
            return encode_literal(fetching.partial_of(fetching.to_crlf(octets), partial))
        return fetching.FileLiteral(self.file, start, end, partial, crlf=self.pure_crlf)

    def binary(self, section: str) -> bytes:
        """BINARY[section] decoded (RFC 3516), kept for a BINARY.SIZE of the same section."""
        if section not in self._binary:
            assert self.file is not None
            parsed = self.parsed() if section else None
            self._binary[section] = fetch_more.binary_content(self.file, self.size, parsed, section)
        return self._binary[section]

    def preview(self) -> str:
        """The PREVIEW text (RFC 8970), made from the file once and kept in the folder's cache."""
        cache = self.run.cache
        assert cache is not None and self.file is not None
        text = cache.preview(self.info.basename)
        if text is None:
            text = fetch_more.compute_preview(self.file, self.parsed())
            cache.put_preview(self.info.basename, text)
        return text

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class FetchResponse:
    """`* n FETCH (item item …)` as octets, cut where a literal streams from its file."""

    __slots__ = ("head", "parts", "pieces", "size", "streams")

    def __init__(self, number: int) -> None:
        self.head = b"* %d FETCH (" % number
        self.parts: list[bytes] = []
        self.pieces: list[bytes | fetching.FileLiteral] = []
        self.size = 0
        self.streams = False

    def add(self, item: bytes) -> None:
        self.parts.append(item)

    def add_literal(self, label: bytes, literal: bytes | fetching.FileLiteral) -> None:
        if isinstance(literal, bytes):
            self.parts.append(label + b" " + literal)
            return
        self.parts.append(label + b" {%d}\r\n" % literal.size)
        self._flush(b"")
        self.pieces.append(literal)
        # What follows the literal continues the list: a space before the next item.
        self.head = b" "
        self.streams = True

    def _flush(self, end: bytes) -> None:
        if self.parts or end:
            head = self.head if self.parts else b""
            octets = head + b" ".join(self.parts) + end
            self.pieces.append(octets)
            self.size += len(octets)
            self.parts = []

    def finish(self) -> None:
        self._flush(b")\r\n")

    def close(self) -> None:
        for piece in self.pieces:
            if isinstance(piece, fetching.FileLiteral):
                piece.close()
