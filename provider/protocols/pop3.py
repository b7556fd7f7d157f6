"""POP3 server (RFC 1939, CAPA and response codes of RFC 2449/3206, AUTH PLAIN of RFC 5034)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from flask import Flask

from provider.errors import AccessRefused, AuthenticationFailed, ProviderError
from provider.extensions import db
from provider.mailstore import (
    INBOX,
    Folder,
    FolderNotFound,
    IncomingMessage,
    MailboxMissing,
    Maildir,
    MailstoreBusy,
    MailstoreError,
    MessageInfo,
)
from provider.mailstore.message import MessageCache
from provider.models.mailbox import Pop3Action
from provider.protocols import streams
from provider.services import mail_access, quota
from provider.services.storage import mail_store

log = logging.getLogger(__name__)

# RFC 2449 §4 limits commands to 255 octets, but an AUTH PLAIN initial response carrying a long
# password is longer; RELIABILITY P1 asks that lines of 8192 octets still be accepted.
MAX_LINE = 16384
BAD_BEFORE_LOGIN = 3
BAD_AFTER_LOGIN = 20
LOCK_FILE = "provider-pop3.lock"
ARCHIVE = "Archive"
UIDL_MAX = 70
MAX_TOP_LINES = 2**63 - 1
# No argument of ours needs more digits than 2**63 has; longer ones are refused unparsed.
MAX_NUMBER_DIGITS = len(str(MAX_TOP_LINES))
# Messages up to this size are read on the event loop: from the page cache that costs less
# than the hop to a worker thread; bigger files leave the loop (CONVENTIONS: big file reads).
INLINE_READ = 256 * 1024
# Wait for the client to take data only once this much is queued for it.
WRITE_HIGH_WATER = 256 * 1024
# Bigger messages are sent by RETR and TOP a chunk at a time, never read whole.
STREAM_CHUNK = 64 * 1024
IMPLEMENTATION = "provider"

AUTHORIZATION = frozenset({"USER", "PASS", "AUTH", "STLS", "APOP"})
TRANSACTION = frozenset({"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL"})
ANY_STATE = frozenset({"CAPA", "QUIT"})


class Disconnect(Exception):
    """End the session (after QUIT, a timeout, too many errors, or the client going away)."""


# --- pure helpers --------------------------------------------------------------------------------


def uidl_for(basename: str) -> str:
    """A UIDL that never changes for the message (RFC 1939 §7: 1 to 70 characters, 0x21 to 0x7E).

    The Maildir basename (the file name before ``:2,``) is fixed when the message is delivered
    and survives flag changes (renames), new/ → cur/ and a rebuilt dovecot-uidlist, unlike
    UID+UIDVALIDITY. It is used as it is when it qualifies (as Dovecot's
    ``pop3_uidl_format = %f`` does); otherwise a fixed-length SHA-256 digest of it, marked
    with a ``~`` that no delivery agent puts first in a basename.
    """
    if 0 < len(basename) <= UIDL_MAX and all(0x21 <= ord(c) <= 0x7E for c in basename):
        return basename
    return "~" + hashlib.sha256(basename.encode("utf-8", "surrogateescape")).hexdigest()[:48]


def wire_form(data: bytes, *, crlf_only: bool = False) -> bytes:
    """The message as sent by RETR (RFC 1939 §3): CRLF line ends whatever the file holds, lines
    starting with "." dot-stuffed, ending in CRLF, without the terminating ".\\r\\n".

    `crlf_only`: the caller knows the file has no bare LF (its size equals its CRLF size), which
    saves a scan of the whole message.
    """
    if not crlf_only and data.count(b"\n") != data.count(b"\r\n"):
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if b"\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data


def read_file(path: Path) -> bytes:
    """The whole file, unbuffered (a plain read is all a message needs; pathlib's buffered
    reader costs more than the read itself for small files)."""
    with open(path, "rb", buffering=0) as file:
        return file.readall()


def top_form(data: bytes, lines: int) -> bytes:
    """TOP (RFC 1939 §7): the header, the blank line, then at most `lines` body lines, in wire
    form. A message without a body separator is all header."""
    wire = wire_form(data)
    head, separator, body = wire.partition(b"\r\n\r\n")
    if not separator:
        return wire
    # Each body line with its CRLF (the wire form ends in CRLF), empty lines counted too.
    position = 0
    for _ in range(lines):
        found = body.find(b"\r\n", position)
        if found < 0:
            break
        position = found + 2
    return head + b"\r\n\r\n" + body[:position]


class WireStream:
    """`wire_form` of a message file a chunk at a time (RETR of a big message is never read
    whole: issue 11 item 2). Line ends become CRLF across chunk boundaries (a CR at the end of
    a chunk waits for the next), lines starting with "." are dot-stuffed, and the end is CRLF.
    `next_chunk()` blocks (call it in a worker thread); b"" at the end."""

    def __init__(self, file: BinaryIO, chunk: int = STREAM_CHUNK) -> None:
        self.file = file
        self.chunk = chunk
        self.carry = b""  # a CR that may start a CRLF
        self.line_start = True  # the next octet starts a line
        self.ends_crlf = False  # what was given so far ends in CRLF
        self.ended = False

    def next_chunk(self) -> bytes:
        while not self.ended:
            raw = self.file.read(self.chunk)
            data = self.carry + raw
            self.carry = b""
            if not raw:
                self.ended = True
                if not (data.endswith(b"\r\n") if data else self.ends_crlf):
                    data += b"\r\n"
            elif data.endswith(b"\r"):
                data, self.carry = data[:-1], b"\r"
            if data.count(b"\n") != data.count(b"\r\n"):
                data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            if not data:
                continue
            if b"\n." in data:
                data = data.replace(b"\r\n.", b"\r\n..")
            if self.line_start and data.startswith(b"."):
                data = b"." + data
            self.line_start = self.ends_crlf = data.endswith(b"\r\n")
            return data
        return b""


class TopStream:
    """`top_form` of a message file a chunk at a time: the header, the blank line, then at most
    `lines` body lines of the wire form (the whole message when it has no blank line)."""

    def __init__(self, wire: WireStream, lines: int) -> None:
        self.wire = wire
        self.lines = lines
        self.in_header = True
        self.tail = b""  # the last octets of the header so far (a separator may straddle)
        self.done = False

    def next_chunk(self) -> bytes:
        while not self.done:
            data = self.wire.next_chunk()
            if not data:
                self.done = True
                return b""
            if self.in_header:
                seen = self.tail + data
                found = seen.find(b"\r\n\r\n")
                if found < 0:
                    self.tail = seen[-3:]
                    return data
                self.in_header = False
                cut = found + 4 - len(self.tail)  # the separator's end within `data`
                head, body = data[:cut], data[cut:]
                return head + self._body(body)
            body = self._body(data)
            if body:
                return body
        return b""

    def _body(self, data: bytes) -> bytes:
        """As much of `data` (body octets) as the line count allows."""
        if self.lines <= 0:
            self.done = True
            return b""
        position = 0
        while self.lines > 0:
            found = data.find(b"\r\n", position)
            if found < 0:
                return data
            position = found + 2
            self.lines -= 1
        self.done = True
        return data[:position]


def _virtual_size(info: MessageInfo) -> int:
    """The size on the wire before dot-stuffing (what LIST and STAT report): Dovecot's and our
    own deliveries record it as ``W=`` in the name; otherwise the file is read once."""
    for part in info.basename.split(",")[1:]:
        if part.startswith("W=") and part[2:].isdigit():
            return int(part[2:])
    data = info.path.read_bytes()
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def parse_sasl_plain(response: bytes) -> tuple[str, str, str]:
    """RFC 4616 message ``authzid NUL authcid NUL passwd``, base64-encoded (RFC 5034 §4: "="
    is an empty initial response). ValueError when it is malformed."""
    try:
        decoded = base64.b64decode(response, validate=True) if response != b"=" else b""
        authzid, user, password = decoded.decode("utf-8").split("\0")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("Invalid SASL PLAIN response") from None
    return authzid, user, password


# --- the maildrop lock ---------------------------------------------------------------------------


class MaildropLock:
    """One POP3 session per mailbox (RFC 1939 §8, RFC 2449 [IN-USE]), also across processes.

    An in-process set answers quickly for sessions of this server; an ``flock`` on
    ``provider-pop3.lock`` in the Maildir root covers other processes on the same data
    directory. The kernel drops the flock when its descriptor closes, so a session or process
    that dies never leaves the mailbox locked.
    """

    _held: set[str] = set()
    _guard = threading.Lock()

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = str(root)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False if another session holds it."""
        with self._guard:
            if self.key in self._held:
                return False
            self._held.add(self.key)
        try:
            fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except BaseException:
            self._forget()
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            self._forget()
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        except BaseException:
            os.close(fd)
            self._forget()
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
            self._forget()

    def _forget(self) -> None:
        with self._guard:
            self._held.discard(self.key)


# --- the maildrop -------------------------------------------------------------------------------


@dataclass
class Message:
    """One message of the maildrop as listed at login (RFC 1939 numbers from 1)."""

    basename: str
    path: Path
    size: int  # on the wire, before dot-stuffing
    stored_size: int  # what quota counted (the file's S= size)
    uidl: str
    deleted: bool = False
    retrieved: bool = False


@dataclass
class Maildrop:
    """INBOX (new/ and cur/) as it was when the session logged in; fixed for the session."""

    messages: list[Message] = field(default_factory=list)

    def live(self) -> list[tuple[int, Message]]:
        return [(n, m) for n, m in enumerate(self.messages, 1) if not m.deleted]


@dataclass(frozen=True)
class Account:
    address: str
    mailbox_id: int
    action: str
    # Messages RETR'd are marked \Seen at QUIT for the mailbox's IMAP clients (issue 5 §2):
    # with the "seen" action, and with "keep" when the mailbox also has IMAP.
    marks_seen: bool = False


@dataclass
class UpdateResult:
    removed: int = 0
    missing: int = 0
    acted_on: int = 0
    failures: list[str] = field(default_factory=list)


def load_maildrop(folder: Folder) -> Maildrop:
    return Maildrop(
        [
            Message(
                info.basename, info.path, _virtual_size(info), info.size, uidl_for(info.basename)
            )
            for info in folder.messages()
        ]
    )


def _current(folder: Folder, basenames: set[str]) -> dict[str, MessageInfo]:
    """The folder's messages now, by basename: UIDs may have changed since login (a rebuilt
    uidlist), basenames never do."""
    return {info.basename: info for info in folder.messages() if info.basename in basenames}


def apply_update(
    account: Account, maildir: Maildir, folder: Folder, maildrop: Maildrop
) -> UpdateResult:
    """The UPDATE state (RFC 1939 §6): remove the messages marked deleted and release their
    quota; then apply the mailbox's download action to those retrieved and kept."""
    result = UpdateResult()
    deleted = {m.basename for m in maildrop.messages if m.deleted}
    kept = {m.basename for m in maildrop.messages if m.retrieved and not m.deleted}
    if deleted:
        now = _current(folder, deleted)
        result.missing = len(deleted) - len(now)
        removed = folder.expunge(info.uid for info in now.values())
        result.removed = len(removed)
        total = sum(info.size for info in removed)
        if total:
            quota.release(db.session, account.mailbox_id, total)
            db.session.commit()
        with MessageCache(folder.path) as cache:
            cache.forget(info.basename for info in removed)
        result.missing += len(now) - len(removed)
    if kept and (account.action != Pop3Action.KEEP.value or account.marks_seen):
        try:
            result.acted_on = _download_action(account, maildir, folder, kept)
        except (MailstoreError, OSError) as error:
            # The messages stay in INBOX as they were: nothing is lost, so QUIT still succeeds.
            log.warning("POP3 download action for %s failed: %s", account.address, error)
            result.failures.append(str(error))
    return result


def _download_action(
    account: Account, maildir: Maildir, folder: Folder, basenames: set[str]
) -> int:
    infos = _current(folder, basenames)
    if account.action != Pop3Action.ARCHIVE.value:
        for info in infos.values():
            if "\\Seen" not in info.flags:
                folder.change_flags(info.uid, "add", {"\\Seen"})
        return len(infos)
    # Move to Archive: stored there first, then taken out of INBOX without releasing quota
    # (the bytes stay in the mailbox), as IMAP MOVE does.
    try:
        archive = maildir.folder(ARCHIVE)
    except FolderNotFound:
        archive = maildir.create_folder(ARCHIVE)
    ordered = sorted(infos.values(), key=lambda info: info.uid)
    incoming = []
    sources = []
    for info in ordered:
        try:
            data = info.path.read_bytes()
        except FileNotFoundError:
            continue
        incoming.append(
            IncomingMessage(
                data, info.flags | {"\\Seen"}, info.keywords, info.internal_date, info.zone_minutes
            )
        )
        sources.append(info)
    if not incoming:
        return 0
    archive.deliver_many(incoming)
    removed = folder.expunge(info.uid for info in sources)
    with MessageCache(folder.path) as cache:
        cache.forget(info.basename for info in removed)
    return len(removed)


# --- the session --------------------------------------------------------------------------------


class Pop3Session(streams.StreamSession):
    """One client connection: AUTHORIZATION → TRANSACTION → UPDATE (RFC 1939 §3)."""

    def __init__(
        self,
        app: Flask,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        implicit_tls: bool,
        tls_context: ssl.SSLContext,
    ) -> None:
        super().__init__(app, reader, writer, implicit_tls=implicit_tls, tls_context=tls_context)
        config = app.config
        self.login_timeout = float(config["POP3_LOGIN_TIMEOUT_SECONDS"])
        self.idle_timeout = max(float(config["POP3_AUTOLOGOUT_SECONDS"]), 0.001)
        self.pending_user: str | None = None
        self.account: Account | None = None
        self.lock: MaildropLock | None = None
        self.maildir: Maildir | None = None
        self.folder: Folder | None = None
        self.maildrop: Maildrop | None = None
        # True while the session waits for the next command (nothing half-answered).
        self.between_commands = False

    # --- plumbing

    def say_goodbye(self) -> None:
        """Shutdown: `-ERR` (RFC 2449 has no unsolicited response, so only when the client is
        not waiting for the answer to a command: it reads this as the next one's)."""
        if self.between_commands and not self.writer.transport.is_closing():
            self.writer.write(b"-ERR server shutting down\r\n")

    @property
    def timeout(self) -> float:
        return self.login_timeout if self.account is None else self.idle_timeout

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.writer.write(data)
        transport = self.writer.transport
        if transport.is_closing():
            raise Disconnect
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            try:
                # A client that stops reading is dropped like an idle one (Dovecot's output
                # timeout).
                async with asyncio.timeout(self.timeout):
                    await self.writer.drain()
            except TimeoutError:
                # Closing gracefully would wait for the queued output the client never takes,
                # holding the socket and the buffer: abort (as IMAP's drain does).
                transport.abort()
                raise Disconnect from None

    async def ok(self, text: str) -> None:
        await self.send(f"+OK {text}\r\n")

    async def err(self, text: str) -> None:
        await self.send(f"-ERR {text}\r\n")

    async def bad(self, text: str) -> None:
        """An unknown, malformed or misplaced command; too many end the session (P1)."""
        self.bad_commands += 1
        await self.err(text)
        budget = BAD_BEFORE_LOGIN if self.account is None else BAD_AFTER_LOGIN
        if self.bad_commands >= budget:
            await self.err("Too many invalid commands, closing")
            raise Disconnect

    async def read_line(self) -> bytes | None:
        """One line without its line end; None if it was longer than MAX_LINE (answered at
        once and skipped in bounded chunks up to its end, RELIABILITY P1)."""
        too_long = False
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    line = await self.reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as error:
                await self.reader.readexactly(max(error.consumed, 1))
                if not too_long:
                    too_long = True
                    await self.bad("Line too long")
                continue
            except TimeoutError:
                with contextlib.suppress(ConnectionError, Disconnect):
                    await self.err("Autologout; idle for too long")
                raise Disconnect from None
            except (asyncio.IncompleteReadError, ConnectionError):
                raise Disconnect from None
            return None if too_long else line.rstrip(b"\r\n")

    # --- the loop

    async def run(self) -> None:
        try:
            await self.start_implicit_tls()
            if self.guards.bans.banned(self.peer):
                await self.err("[SYS/TEMP] Too many failed logins from your address")
                raise Disconnect
            await self.ok("POP3 ready")
            while True:
                self.between_commands = True
                try:
                    line = await self.read_line()
                finally:
                    self.between_commands = False
                if line is not None:
                    await self.handle(line)
        except (Disconnect, ConnectionError, ssl.SSLError, TimeoutError):
            pass
        except Exception:
            log.exception("POP3 session failed")
        finally:
            await self.close()

    async def close(self) -> None:
        # No UPDATE here: a session that ends without QUIT deletes nothing (RFC 1939 §6).
        await self.release()
        await self.close_connection()

    async def release(self) -> None:
        if self.account is not None:
            self.guards.pop3_connections.release(self.account.address, self.peer)
            self.account = None
        if self.lock is not None:
            lock, self.lock = self.lock, None
            await asyncio.to_thread(lock.release)

    async def handle(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            await self.bad("Command is not valid UTF-8")
            return
        name, _, rest = text.partition(" ")
        name = name.upper()
        if name in ANY_STATE:
            allowed = True
        elif name in AUTHORIZATION:
            allowed = self.account is None
        elif name in TRANSACTION:
            allowed = self.account is not None
        else:
            await self.bad("Unknown command")
            return
        if not allowed:
            await self.bad(f"{name} is not allowed in this state")
            return
        if self.account is not None and name != "QUIT":
            reason = await self.recheck_refusal(self.account.mailbox_id, "pop3")
            if reason is not None:
                # Ended without UPDATE: nothing marked for deletion is removed.
                log.info("ending POP3 session of %s: %s", self.account.address, reason)
                await self.err(f"[SYS/PERM] {reason}")
                raise Disconnect
        handler = getattr(self, f"pop3_{name}")
        try:
            await handler(rest)
        except ConnectionError:
            raise
        except ProviderError as error:
            await self.err(f"[SYS/TEMP] {error.message}")
        except MailstoreBusy:
            await self.err("[SYS/TEMP] Mailbox is busy; try again")
        except (MailboxMissing, MailstoreError, OSError):
            log.exception("mail store error")
            await self.err("[SYS/TEMP] Mail store unavailable; try again")

    # --- any state

    def capabilities(self) -> list[str]:
        words = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.account is None:
            if self.plaintext_allowed:
                words += ["USER", "SASL PLAIN"]
            if not self.tls_active:
                words.append("STLS")
        words.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        return words

    async def pop3_CAPA(self, argument: str) -> None:
        body = "".join(f"{word}\r\n" for word in self.capabilities())
        await self.send(f"+OK Capability list follows\r\n{body}.\r\n")

    async def pop3_QUIT(self, argument: str) -> None:
        if self.account is None:
            await self.ok("Logging out")
            raise Disconnect
        account, maildir, folder = self.account, self.maildir, self.folder
        maildrop = self.maildrop
        assert maildir is not None and folder is not None and maildrop is not None
        try:
            result: UpdateResult = await self.blocking(
                apply_update, account, maildir, folder, maildrop
            )
        except (MailstoreError, OSError, ProviderError):
            log.exception("POP3 UPDATE failed for %s", account.address)
            await self.err("[SYS/TEMP] Some deleted messages not removed; try again")
            raise Disconnect from None
        if result.missing:
            # Gone already (removed over IMAP meanwhile): what the client asked for holds.
            log.info("%s: %d deleted messages were already gone", account.address, result.missing)
        # Unlocked before the answer: a client may connect again the moment it reads it.
        await self.release()
        await self.ok(f"Logging out, {result.removed} messages deleted")
        raise Disconnect

    # --- authorization

    async def pop3_STLS(self, argument: str) -> None:
        if self.tls_active:
            await self.bad("TLS is already active")
            return
        await self.upgrade_to_tls(b"+OK Begin TLS negotiation now\r\n")
        self.pending_user = None

    async def pop3_APOP(self, argument: str) -> None:
        # APOP needs the password in clear on the server; hashes here are argon2id.
        await self.err("[AUTH] APOP is not supported")

    async def pop3_USER(self, argument: str) -> None:
        if not self.plaintext_allowed:
            self.pending_user = None
            await self.err("[AUTH] Plaintext authentication is not allowed without TLS")
            return
        user = argument.strip()
        if not user:
            await self.bad("USER takes a name")
            return
        self.pending_user = user
        await self.ok("Send your password")

    async def pop3_PASS(self, argument: str) -> None:
        user, self.pending_user = self.pending_user, None
        if user is None:
            await self.bad("Send USER first")
            return
        if not self.plaintext_allowed:
            await self.err("[AUTH] Plaintext authentication is not allowed without TLS")
            return
        # RFC 1939 §7: the password is the rest of the line, spaces and all.
        await self.authenticate(user, argument)

    async def pop3_AUTH(self, argument: str) -> None:
        words = argument.split()
        if not words:
            # The RFC 1734 listing some older clients still probe with.
            await self.send("+OK Mechanisms follow\r\nPLAIN\r\n.\r\n")
            return
        if words[0].upper() != "PLAIN" or len(words) > 2:
            await self.err("Unsupported authentication mechanism")
            return
        if not self.plaintext_allowed:
            await self.err("[AUTH] Plaintext authentication is not allowed without TLS")
            return
        if len(words) == 2:
            response = words[1].encode()
        else:
            await self.send("+ \r\n")
            line = await self.read_line()
            if line is None:
                return  # answered as too long
            response = line.strip()
        if response == b"*":
            await self.err("Authentication cancelled")
            return
        try:
            authzid, user, password = parse_sasl_plain(response)
        except ValueError as error:
            await self.bad(str(error))
            return
        if authzid and authzid.lower() != user.lower():
            await self.err("[AUTH] Authorization failed")
            return
        await self.authenticate(user, password)

    async def authenticate(self, user: str, password: str) -> None:
        # One shared turn per address, the failure delay served inside it (as for IMAP): parallel
        # connections cannot multiply a guesser's rate.
        async with self.guards.logins.turn(self.peer):
            try:
                account: Account = await self.blocking(_check_credentials, user, password)
            except AuthenticationFailed as error:
                # The shared ban and penalty file is written off the event loop.
                delay = await asyncio.to_thread(self.guards.login_failed, self.peer, user, password)
                if delay is None:
                    await self.err("[AUTH] Too many failed logins from your address")
                    raise Disconnect from None
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.err(f"[AUTH] {error.message}")
                return
            except AccessRefused as error:
                await self.err(f"[SYS/PERM] {error.message}")
                return
        await asyncio.to_thread(self.guards.failures.succeeded, self.peer)
        try:
            self.guards.pop3_connections.acquire(account.address, self.peer)
        except ProviderError as error:
            await self.err(f"[IN-USE] {error.message}")
            return
        try:
            opened = await self.blocking(self._open_maildrop, account.address)
        except BaseException:
            self.guards.pop3_connections.release(account.address, self.peer)
            raise
        if opened is None:
            self.guards.pop3_connections.release(account.address, self.peer)
            await self.err("[IN-USE] Mailbox is in use by another POP3 session")
            return
        self.account = account
        self.lock, self.maildir, self.folder, self.maildrop = opened
        self.bad_commands = 0
        self.logged_in_now()
        await self.ok(f"Logged in, {len(self.maildrop.messages)} messages")

    def _open_maildrop(self, address: str) -> tuple[MaildropLock, Maildir, Folder, Maildrop] | None:
        """Lock the maildrop and list INBOX; None when another session holds the lock."""
        maildir = mail_store().open(address)
        lock = MaildropLock(maildir.root)
        if not lock.acquire():
            return None
        try:
            folder = maildir.folder(INBOX)
            return lock, maildir, folder, load_maildrop(folder)
        except BaseException:
            lock.release()
            raise

    # --- transaction

    def _number(self, text: str) -> Message | str:
        """The live message a message-number argument names, or the -ERR text."""
        assert self.maildrop is not None
        text = text.strip()
        if not text.isdigit() or not text.isascii():
            return "Invalid message number"
        if len(text) > MAX_NUMBER_DIGITS:  # int() refuses over 4,300 digits (ValueError)
            return "No such message"
        number = int(text)
        if not 1 <= number <= len(self.maildrop.messages):
            return "No such message"
        message = self.maildrop.messages[number - 1]
        if message.deleted:
            return "Message is deleted"
        return message

    async def pop3_STAT(self, argument: str) -> None:
        assert self.maildrop is not None
        live = self.maildrop.live()
        await self.ok(f"{len(live)} {sum(m.size for _, m in live)}")

    async def _listing(self, argument: str, value: Callable[[Message], object]) -> None:
        assert self.maildrop is not None
        if argument.strip():
            message = self._number(argument)
            if isinstance(message, str):
                await self.err(message)
                return
            number = self.maildrop.messages.index(message) + 1
            await self.ok(f"{number} {value(message)}")
            return
        lines = [f"{n} {value(m)}\r\n" for n, m in self.maildrop.live()]
        await self.send("+OK Listing follows\r\n" + "".join(lines) + ".\r\n")

    async def pop3_LIST(self, argument: str) -> None:
        await self._listing(argument, lambda message: message.size)

    async def pop3_UIDL(self, argument: str) -> None:
        await self._listing(argument, lambda message: message.uidl)

    async def _open(self, message: Message) -> BinaryIO | None:
        """The message's file, open; it may have been renamed (flags) or removed over IMAP
        since login: looked up again by basename. None when it is gone."""
        try:
            return await asyncio.to_thread(open, message.path, "rb")
        except FileNotFoundError:
            pass
        assert self.folder is not None
        found = await self.blocking(_current, self.folder, {message.basename})
        info = found.get(message.basename)
        if info is None:
            return None
        message.path = info.path
        try:
            return await asyncio.to_thread(open, message.path, "rb")
        except FileNotFoundError:
            return None

    async def _content(self, message: Message) -> bytes | None:
        """A small message's bytes (read on the event loop: see INLINE_READ), None if gone."""
        try:
            return read_file(message.path)
        except FileNotFoundError:
            pass
        file = await self._open(message)
        if file is None:
            return None
        with file:
            return file.read()

    async def _send_message(
        self, number: str, first_line: bytes, form: Callable[[bytes], bytes], lines: int | None
    ) -> Message | None:
        """RETR (lines None) and TOP: `first_line`, the message in wire form (`form` for a
        small one, streamed from its file for a big one: issue 11 item 2), the end marker."""
        message = self._number(number)
        if isinstance(message, str):
            await self.err(message)
            return None
        if message.size <= INLINE_READ:
            data = await self._content(message)
            if data is None:
                await self.err("Message was removed by another session")
                return None
            await self.send(first_line + form(data) + b".\r\n")
            return message
        file = await self._open(message)
        if file is None:
            await self.err("Message was removed by another session")
            return None
        with file:
            wire = WireStream(file)
            stream: WireStream | TopStream = wire if lines is None else TopStream(wire, lines)
            await self.send(first_line)
            while chunk := await asyncio.to_thread(stream.next_chunk):
                await self.send(chunk)
            await self.send(b".\r\n")
        return message

    async def pop3_RETR(self, argument: str) -> None:
        def form(data: bytes) -> bytes:
            return wire_form(data, crlf_only=len(data) == size)

        message = self._number(argument)
        size = message.size if isinstance(message, Message) else 0
        sent = await self._send_message(argument, b"+OK %d octets\r\n" % size, form, None)
        if sent is not None:
            sent.retrieved = True

    async def pop3_TOP(self, argument: str) -> None:
        words = argument.split()
        if len(words) != 2 or not words[1].isdigit() or not words[1].isascii():
            await self.bad("TOP takes a message number and a line count")
            return
        lines = int(words[1]) if len(words[1]) <= MAX_NUMBER_DIGITS else MAX_TOP_LINES + 1
        if lines > MAX_TOP_LINES:
            # Dovecot's limit too (a 64-bit count).
            await self.err("Invalid number of lines")
            return
        await self._send_message(
            words[0],
            b"+OK Top of message follows\r\n",
            lambda data: top_form(data, lines),
            lines,
        )

    async def pop3_DELE(self, argument: str) -> None:
        message = self._number(argument)
        if isinstance(message, str):
            await self.err(message)
            return
        message.deleted = True  # only marked; removed at QUIT (RFC 1939 §6)
        await self.ok("Message deleted")

    async def pop3_RSET(self, argument: str) -> None:
        assert self.maildrop is not None
        for message in self.maildrop.messages:
            message.deleted = False
        live = self.maildrop.live()
        await self.ok(f"{len(live)} messages ({sum(m.size for _, m in live)} octets)")

    async def pop3_NOOP(self, argument: str) -> None:
        await self.ok("")


def _check_credentials(user: str, password: str) -> Account:
    mailbox = mail_access.login(db.session, user, password, "pop3")
    action = mailbox.pop3_action
    marks_seen = action == Pop3Action.SEEN.value or (
        action == Pop3Action.KEEP.value and mailbox.imap_enabled
    )
    return Account(mailbox.address, mailbox.id, action, marks_seen)


def protocol_factory(app: Flask, *, implicit_tls: bool) -> Callable[[], asyncio.Protocol]:
    """A factory for asyncio's create_server: one Pop3Session per connection."""
    return streams.session_factory(app, Pop3Session, implicit_tls=implicit_tls, line_limit=MAX_LINE)
