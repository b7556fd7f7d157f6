"""IMAP4rev1 session: the read loop (limits, literals, timeouts), state machine and dispatcher."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

from flask import Flask

from provider.errors import ProviderError
from provider.extensions import db
from provider.mailstore import (
    FolderExists,
    FolderNotFound,
    FolderSnapshot,
    InvalidFolderName,
    MailboxMissing,
    Maildir,
    MailstoreBusy,
    MailstoreError,
    MessageNotFound,
)
from provider.protocols import streams
from provider.protocols.imap.commands import Commands
from provider.protocols.imap.parser import (
    Command,
    ProtocolError,
    TaggedError,
    as_text,
    parse_command,
    trailing_literal,
)
from provider.protocols.imap.selected import SelectedView
from provider.services import mail_access

log = logging.getLogger(__name__)

MAX_LINE = 65536  # Dovecot's imap_max_line_length; RFC 7162 asks for at least 8192
# RELIABILITY P2: before login nothing legitimate (a user name, a password) needs more.
MAX_LITERAL_BEFORE_LOGIN = 4096
BAD_BEFORE_LOGIN = 3
BAD_AFTER_LOGIN = 20
# MULTIAPPEND (RFC 3502): one APPEND holds at most this many messages, together at most
# APPEND_TOTAL_FACTOR times the one-message limit (they are held in memory until stored).
MAX_APPEND_MESSAGES = 1000
APPEND_TOTAL_FACTOR = 2
NO_EXPUNGE_COMMANDS = frozenset({"FETCH", "STORE", "SEARCH", "SORT", "THREAD", "UID"})

ANY_STATE = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
NOT_AUTHENTICATED = frozenset({"STARTTLS", "LOGIN", "AUTHENTICATE"})
AUTHENTICATED = frozenset(
    {
        "SELECT",
        "EXAMINE",
        "CREATE",
        "DELETE",
        "RENAME",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "LIST",
        "LSUB",
        "STATUS",
        "APPEND",
        "NAMESPACE",
        "ENABLE",
        "IDLE",
        "GETQUOTA",
        "GETQUOTAROOT",
        "COMPRESS",
    }
)
SELECTED = frozenset(
    {
        "CHECK",
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
        "SEARCH",
        "SORT",
        "THREAD",
        "FETCH",
        "STORE",
        "COPY",
        "MOVE",
        "UID",
        "CANCELUPDATE",
    }
)


class Disconnect(Exception):
    """End the session (after a BYE, a LOGOUT, or the client going away)."""


class ImapSession(Commands, streams.StreamSession):
    """One client connection. Commands live in `Commands` as `do_<verb>` methods."""

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
        self.login_timeout = float(config["IMAP_LOGIN_TIMEOUT_SECONDS"])
        self.idle_timeout = max(float(config["IMAP_AUTOLOGOUT_SECONDS"]), 0.001)
        self.poll_interval = float(config["IMAP_IDLE_POLL_SECONDS"])
        self.output_timeout = float(config["IMAP_OUTPUT_TIMEOUT_SECONDS"])
        self.append_limit = int(float(config["MAX_MESSAGE_MB"]) * 1024 * 1024)
        self.user: str | None = None
        self.mailbox_id: int | None = None
        self.selected: SelectedView | None = None
        self.maildir: tuple[str, Maildir] | None = None  # (user, mailbox): Commands._maildir
        # The selected folder as looked at in the same worker-thread trip as the command's
        # last blocking work (see `blocking`), for the sync after the command; or the error.
        self.looked: tuple[SelectedView, tuple[FolderSnapshot, int] | MailstoreError] | None = None
        self.current: str = ""
        # RFC 7162: set by the first CONDSTORE enabling command, for the rest of the session.
        self.condstore = False
        # RFC 7162 §3.2.3: set by ENABLE QRESYNC, for the rest of the session.
        self.qresync = False
        # RFC 5182: the UIDs of the last SEARCH RETURN (SAVE), for `$`.
        self.saved_result: frozenset[int] = frozenset()
        # RFC 6855: after ENABLE UTF8=ACCEPT mailbox names travel as UTF-8, not modified UTF-7.
        self.utf8 = False
        # True while a response is partly written (a chunked write, a FETCH streaming its
        # literals): nothing else may go out in between, not even a BYE.
        self.mid_response = False

    # --- plumbing

    async def blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        """streams.StreamSession.blocking; with a folder selected, the worker thread also
        looks at the folder once the work is done, so that the sync after the command needs
        no second trip to a thread. The look happens after the command's own changes, as a
        separate trip would: other sessions' changes are seen just as soon."""
        view = self.selected
        if view is None:
            return await super().blocking(function, *args)

        def work_then_look() -> tuple[Any, tuple[FolderSnapshot, int] | MailstoreError]:
            result = function(*args)
            try:
                return result, self._look_again(view)
            except MailstoreError as error:  # MailstoreBusy too: the sync decides
                return result, error

        result, looked = await super().blocking(work_then_look)
        self.looked = (view, looked)
        return result

    async def send(self, data: bytes | str) -> None:
        """Write `data`, a chunk at a time once it is big (a long SEARCH result): the transport
        never queues much more than WRITE_HIGH_WATER beyond what the caller holds."""
        if isinstance(data, str):
            data = data.encode()
        if len(data) <= streams.WRITE_HIGH_WATER:
            self.writer.write(data)
            await self.drain()
            return
        view = memoryview(data)
        within, self.mid_response = self.mid_response, True
        try:
            for start in range(0, len(data), streams.WRITE_HIGH_WATER):
                self.writer.write(view[start : start + streams.WRITE_HIGH_WATER])
                await self.drain()
        finally:
            self.mid_response = within

    def say_goodbye(self) -> None:
        """Shutdown: `* BYE` (RFC 3501 §7.1.5), unless it would land inside a response."""
        if self.mid_response or self.writer.transport.is_closing():
            return
        self.writer.write(b"* BYE Server shutting down\r\n")

    async def send_lines(self, lines: list[bytes]) -> None:
        """Untagged responses (EXPUNGE, FETCH FLAGS, LIST…), written in groups of about
        WRITE_HIGH_WATER octets, each group once the client took the one before."""
        group: list[bytes] = []
        size = 0
        for line in lines:
            group.append(line)
            size += len(line)
            if size >= streams.WRITE_HIGH_WATER:
                await self.send(b"".join(group))
                group, size = [], 0
        if group:
            await self.send(b"".join(group))

    async def drain(self) -> None:
        """Wait until the client takes what was written; a client that stops reading for
        IMAP_OUTPUT_TIMEOUT_SECONDS is dropped (RELIABILITY P3; Dovecot waits 5 minutes).
        Callers write at most a chunk at a time, so what is queued stays near
        streams.WRITE_HIGH_WATER (issue 11 item 2)."""
        transport = self.writer.transport
        if not transport.is_closing() and (
            transport.get_write_buffer_size() <= streams.WRITE_HIGH_WATER
        ):
            return  # nothing to wait for (and no timer to set)
        try:
            async with asyncio.timeout(self.output_timeout):
                await self.writer.drain()
        except TimeoutError:
            log.info("IMAP client %s stopped reading; closing", self.peer)
            self.writer.transport.abort()
            raise Disconnect from None

    @property
    def timeout(self) -> float:
        return self.login_timeout if self.user is None else self.idle_timeout

    async def read_line(self, timeout: float | None = None) -> bytes | None:
        """One line with its CRLF; None if it was longer than MAX_LINE. The untagged BAD for an
        overlong line goes out as soon as the limit is passed, not when the client finally
        sends its CRLF, and the rest of the line is skipped in bounded chunks (RELIABILITY P1).
        """
        too_long = False
        while True:
            try:
                # asyncio.timeout is a timer on this task; wait_for would make a task per line.
                async with asyncio.timeout(timeout or self.timeout):
                    line = await self.reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as error:
                # Drop what is buffered and keep looking for the end of this line.
                await self.reader.readexactly(max(error.consumed, 1))
                if not too_long:
                    too_long = True
                    await self.bad("*", "Line too long")
                continue
            except TimeoutError:
                await self.bye("Autologout; idle for too long")
                raise Disconnect from None
            except (asyncio.IncompleteReadError, ConnectionError):
                raise Disconnect from None
            return None if too_long else line

    async def read_exactly(self, size: int) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                return await self.reader.readexactly(size)
        except TimeoutError:
            await self.bye("Autologout; idle for too long")
            raise Disconnect from None
        except (asyncio.IncompleteReadError, ConnectionError):
            raise Disconnect from None

    async def bye(self, text: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self.send(f"* BYE {text}\r\n")

    async def read_command(self) -> bytes | None:
        """A whole command, its literals inline; None when it was refused on the way (a BAD or
        NO has then been sent). Literal sizes are checked before "+" is sent (RELIABILITY P2)."""
        line = await self.read_line()
        if line is None:
            return None  # read_line has answered BAD
        parts = [line]
        total = len(line)
        head = line.split(b" ", 2)
        tag = head[0].decode("ascii", "replace")
        # APPEND's own limit applies only once APPEND is allowed, so that a client that has not
        # logged in can never make the server read a message-sized literal.
        is_append = (
            self.user is not None and len(head) > 1 and head[1].upper().rstrip(b"\r\n") == b"APPEND"
        )
        literals = 0
        while (literal := trailing_literal(line)) is not None:
            size, non_sync = literal
            literals += 1
            if is_append:
                refusal = None
                if size > self.append_limit:
                    refusal = "[TOOBIG] Message too large"
                elif total + size > self.append_limit * APPEND_TOTAL_FACTOR:
                    refusal = "[TOOBIG] Messages of one APPEND too large together"
                elif literals > MAX_APPEND_MESSAGES:
                    refusal = f"[LIMIT] At most {MAX_APPEND_MESSAGES} messages in one APPEND"
                if refusal is not None:
                    if non_sync:
                        await self.bye(refusal)
                        raise Disconnect
                    await self.send(f"{tag} NO {refusal}\r\n")
                    return None
            elif total + size > MAX_LINE or (self.user is None and size > MAX_LITERAL_BEFORE_LOGIN):
                await self.bye("[TOOBIG] Literal too large")
                raise Disconnect
            if not non_sync:
                await self.send(b"+ Ready for literal data\r\n")
            # The literal and the line after it often come in separate writes (see ack_at_once).
            streams.ack_at_once(self.writer)
            parts.append(await self.read_exactly(size))
            total += size
            line = await self.read_line()
            if line is None:
                return None  # read_line has answered BAD
            if not is_append and total + len(line) > MAX_LINE:
                await self.bad(tag, "Line too long")
                return None
            parts.append(line)
            total += len(line)
        return b"".join(parts)

    async def bad(self, tag: str, text: str) -> None:
        self.bad_commands += 1
        await self.send(f"{tag} BAD {text}\r\n")
        budget = BAD_BEFORE_LOGIN if self.user is None else BAD_AFTER_LOGIN
        if self.bad_commands >= budget:
            await self.bye("Too many invalid commands")
            raise Disconnect

    # --- the loop

    async def run(self) -> None:
        try:
            await self.start_implicit_tls()
            if self.guards.bans.banned(self.peer):
                await self.bye("Too many failed logins from your address; try again tomorrow")
                raise Disconnect
            await self.send(f"* OK [CAPABILITY {self.capabilities()}] IMAP4rev1 ready\r\n")
            while True:
                data = await self.read_command()
                if data is None:
                    continue
                await self.handle(data)
        except (Disconnect, ConnectionError, ssl.SSLError, TimeoutError):
            pass
        except Exception:
            log.exception("IMAP session failed")
        finally:
            await self.close()

    async def close(self) -> None:
        if self.user is not None:
            self.guards.imap_connections.release(self.user, self.peer)
            self.user = None
        await self.close_connection()

    async def handle(self, data: bytes) -> None:
        try:
            command = parse_command(data)
        except TaggedError as error:
            await self.bad(error.tag, f"Invalid command: {error}")
            return
        except ProtocolError as error:
            await self.bad("*", f"Invalid command: {error}")
            return
        name = command.name
        if name in ANY_STATE:
            allowed = True
        elif name in NOT_AUTHENTICATED:
            allowed = self.user is None
        elif name in AUTHENTICATED:
            allowed = self.user is not None
        elif name in SELECTED:
            allowed = self.selected is not None
        else:
            await self.bad(command.tag, f"Unknown command {name}")
            return
        if not allowed:
            await self.bad(command.tag, f"{name} is not allowed in this state")
            return
        self.current = name
        self.looked = None  # a look from before this command is not "after" it
        await self.recheck_account()
        handler = getattr(self, f"do_{name.lower()}")
        try:
            result = await handler(command)
        except (TaggedError, ProtocolError) as error:
            await self.bad(command.tag, str(error))
            return
        except ProviderError as error:
            result = f"NO [{error.imap_code}] {error.message}"
        except FolderNotFound:
            result = "NO [NONEXISTENT] Mailbox does not exist"
        except FolderExists:
            result = "NO [ALREADYEXISTS] Mailbox already exists"
        except InvalidFolderName as error:
            result = f"NO [CANNOT] {error}"
        except MailstoreBusy:
            result = "NO [INUSE] Mailbox is busy; try again"
        except MessageNotFound:
            result = "NO Message no longer exists"
        except (MailboxMissing, MailstoreError):
            log.exception("mail store error")
            result = "NO [UNAVAILABLE] Mail store unavailable; try again"
        if result is None:
            return
        if self.selected is not None and name not in ("SELECT", "EXAMINE"):
            await self.sync_selected(allow_expunge=name not in NO_EXPUNGE_COMMANDS)
            result = await self.highest_modseq_for_qresync(result)
        await self.send(f"{command.tag} {result}\r\n")
        if self.bad_commands and result.startswith("OK"):
            pass

    async def sync_selected(self, allow_expunge: bool = True) -> None:
        view = self.selected
        if view is None:
            return
        looked, self.looked = self.looked, None
        try:
            if looked is not None and looked[0] is view:
                if isinstance(looked[1], MailstoreError):
                    raise looked[1]
                snapshot, recent_from = looked[1]
            else:
                snapshot, recent_from = await asyncio.to_thread(self._look_again, view)
        except MailstoreBusy:
            return  # the folder lock or the modseq file is busy: look again after the next command
        except MailstoreError:
            await self.bye("Mailbox no longer exists")
            raise Disconnect from None
        await self.send_lines(view.refresh(snapshot, allow_expunge, recent_from))
        await self.update_search_contexts()

    async def highest_modseq_for_qresync(self, result: str) -> str:
        """RFC 7162 §3.2 and §6: while expunges wait unreported, tell the modseq from before
        them (a client keeping the highest MODSEQ it saw would skip them after a disconnect);
        once a VANISHED went out (§3.2.7) or a MOVE moved messages (RFC 6851 §4.4), the
        tagged OK carries the new HIGHESTMODSEQ."""
        view = self.selected
        if view is None or not view.condstore:
            return result
        sent, view.highest_due = view.highest_due, False
        if view.qresync and view.gone and view.delayed_highest is not None:
            await self.send(
                f"* OK [HIGHESTMODSEQ {view.delayed_highest}] Expunges not yet reported\r\n"
            )
        elif sent and result.startswith("OK ") and not result.startswith("OK ["):
            return f"OK [HIGHESTMODSEQ {view.highest_modseq}] {result[3:]}"
        return result

    @staticmethod
    def _look_again(view: SelectedView) -> tuple[FolderSnapshot, int]:
        """The folder's state if it changed, and where \\Recent starts for new messages (a
        read-write session claims them: RFC 3501 §2.3.2)."""
        snapshot = view.folder.snapshot(view.version, modseqs=view.condstore)
        recent_from = 0
        if snapshot.messages and snapshot.messages[-1].uid > view.highest:
            top = snapshot.messages[-1].uid
            folder = view.folder
            recent_from = folder.recent_from() if view.readonly else folder.claim_recent(top)
        return snapshot, recent_from

    async def enable_condstore(self) -> None:
        """A CONDSTORE enabling command (RFC 7162 §3.1): the first one with a mailbox selected
        reports its HIGHESTMODSEQ, and FETCH responses carry MODSEQ from now on."""
        if self.condstore:
            return
        self.condstore = True
        view = self.selected
        if view is None:
            return
        modseqs = await self.blocking(view.folder.modseqs)
        # Only the values of messages this session knows; the rest come with the next sync.
        view.modseqs = {uid: m for uid, m in modseqs.by_uid.items() if uid in view.infos}
        view.highest_modseq = modseqs.highest
        view.condstore = True
        await self.send(f"* OK [HIGHESTMODSEQ {modseqs.highest}] Highest\r\n")

    async def recheck_account(self) -> None:
        """End the session (BYE) once its mailbox was suspended, expired, deleted or lost
        IMAP access: checked before a command and while idling."""
        if self.mailbox_id is None:
            return
        reason = await self.recheck_refusal(self.mailbox_id, "imap")
        if reason is not None:
            log.info("ending IMAP session of %s: %s", self.user, reason)
            await self.bye(reason)
            raise Disconnect

    # --- capability and the any-state commands

    def capabilities(self) -> str:
        words = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
        if self.user is None:
            if not self.tls_active and not self.implicit_tls:
                words.append("STARTTLS")
            if self.plaintext_allowed:
                words += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                words.append("LOGINDISABLED")
        else:
            words += [
                "NAMESPACE",
                "UIDPLUS",
                "MOVE",
                "UNSELECT",
                "CHILDREN",
                "SPECIAL-USE",
                "LIST-EXTENDED",
                "LIST-STATUS",
                "STATUS=SIZE",
                "UTF8=ACCEPT",
                "MULTIAPPEND",
                "SORT",
                "SORT=DISPLAY",
                "I18NLEVEL=1",
                "ESORT",
                "THREAD=ORDEREDSUBJECT",
                "THREAD=REFERENCES",
                "COMPRESS=DEFLATE",
                "QUOTA",
                "CONDSTORE",
                "QRESYNC",
                "ESEARCH",
                "SEARCHRES",
                "CONTEXT=SEARCH",
                "BINARY",
                "CATENATE",
                "URL-PARTIAL",
                "WITHIN",
                "SAVEDATE",
                "PREVIEW",
                f"APPENDLIMIT={self.append_limit}",
            ]
        return " ".join(words)

    async def do_capability(self, command: Command) -> str:
        await self.send(f"* CAPABILITY {self.capabilities()}\r\n")
        return "OK CAPABILITY completed"

    async def do_noop(self, command: Command) -> str:
        return "OK NOOP completed"

    async def do_logout(self, command: Command) -> None:
        await self.send(f"* BYE Logging out\r\n{command.tag} OK LOGOUT completed\r\n")
        raise Disconnect

    async def do_id(self, command: Command) -> str:
        await self.send('* ID ("name" "provider")\r\n')
        return "OK ID completed"

    # --- not authenticated

    async def do_starttls(self, command: Command) -> str | None:
        if self.tls_active or self.implicit_tls:
            await self.bad(command.tag, "TLS is already active")
            return None
        # CVE-2021-33515 style injection: see upgrade_to_tls.
        await self.upgrade_to_tls(f"{command.tag} OK Begin TLS negotiation now\r\n".encode())
        return None

    async def do_login(self, command: Command) -> str | None:
        if len(command.args) != 2:
            raise ProtocolError("LOGIN takes a user name and a password")
        user, password = as_text(command.args[0]), as_text(command.args[1])
        if not self.plaintext_allowed:
            return "NO [PRIVACYREQUIRED] Plaintext login is not allowed without TLS"
        return await self.authenticate(user, password)

    async def do_authenticate(self, command: Command) -> str | None:
        mechanism = as_text(command.args[0]).upper() if command.args else ""
        if mechanism not in ("PLAIN", "LOGIN"):
            return "NO [CANNOT] Unsupported authentication mechanism"
        if not self.plaintext_allowed:
            return "NO [PRIVACYREQUIRED] Plaintext authentication is not allowed without TLS"
        if len(command.args) > 2:
            raise ProtocolError("AUTHENTICATE takes a mechanism and an initial response")
        initial = as_text(command.args[1]).encode() if len(command.args) > 1 else None
        if mechanism == "LOGIN":
            return await self._authenticate_login(command.tag, initial)
        decoded = await self._sasl_step(command.tag, b"", initial)
        if decoded is None:
            return None
        try:
            authzid, user, password = decoded.decode("utf-8").split("\0")
        except ValueError:
            raise ProtocolError("Invalid SASL PLAIN response") from None
        if authzid and authzid.lower() != user.lower():
            return "NO [AUTHORIZATIONFAILED] Authorization failed"
        return await self.authenticate(user, password)

    async def _authenticate_login(self, tag: str, initial: bytes | None) -> str | None:
        """SASL LOGIN (draft-murchison-sasl-login; Outlook's mechanism): the user name, then
        the password, each base64 after its challenge; SASL-IR may carry the user name."""
        user = await self._sasl_step(tag, b"Username:", initial)
        if user is None:
            return None
        password = await self._sasl_step(tag, b"Password:", None)
        if password is None:
            return None
        try:
            return await self.authenticate(user.decode("utf-8"), password.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError("Invalid SASL LOGIN response") from None

    async def _sasl_step(self, tag: str, challenge: bytes, given: bytes | None) -> bytes | None:
        """One SASL client response (RFC 3501 §6.2.2), base64-decoded: `given` (an initial
        response, `=` for empty) or read after `+ challenge`; None when the client cancelled
        with `*` or the line was too long (BAD sent)."""
        response = given
        if response is None:
            await self.send(b"+ " + base64.b64encode(challenge) + b"\r\n")
            line = await self.read_line()
            if line is None:
                return None  # read_line has answered BAD
            response = line.rstrip(b"\r\n")
        if response == b"*":
            await self.bad(tag, "Authentication cancelled")
            return None
        try:
            return base64.b64decode(response, validate=True) if response != b"=" else b""
        except (binascii.Error, ValueError):
            raise ProtocolError("Invalid base64 in the SASL response") from None

    async def authenticate(self, user: str, password: str) -> str:
        async with self.guards.logins.turn(self.peer):
            try:
                address, mailbox_id = await self.blocking(self._check_credentials, user, password)
            except ProviderError as error:
                if error.imap_code == "AUTHENTICATIONFAILED":
                    # The shared ban and penalty file is written off the event loop.
                    delay = await asyncio.to_thread(
                        self.guards.login_failed, self.peer, user, password
                    )
                    if delay is None:
                        await self.bye("Too many failed logins from your address")
                        raise Disconnect from None
                    if delay > 0:
                        await asyncio.sleep(delay)
                return f"NO [{error.imap_code}] {error.message}"
        await asyncio.to_thread(self.guards.failures.succeeded, self.peer)
        try:
            self.guards.imap_connections.acquire(address, self.peer)
        except ProviderError as error:
            return f"NO [{error.imap_code}] {error.message}"
        self.user, self.mailbox_id = address, mailbox_id
        self.logged_in_now()
        self.bad_commands = 0
        return f"OK [CAPABILITY {self.capabilities()}] Logged in"

    def _check_credentials(self, user: str, password: str) -> tuple[str, int]:
        # A name with NUL is an unknown user in auth.authenticate_mailbox, for every protocol.
        mailbox = mail_access.login(db.session, user, password, "imap")
        return mailbox.address, mailbox.id


def protocol_factory(app: Flask, *, implicit_tls: bool) -> Callable[[], asyncio.Protocol]:
    """A factory for asyncio's create_server: one ImapSession per connection."""
    return streams.session_factory(app, ImapSession, implicit_tls=implicit_tls, line_limit=MAX_LINE)
