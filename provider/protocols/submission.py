"""Message submission (RFC 6409) on aiosmtpd: AUTH, identities, limits, then the outbound queue.

Two listeners share this code: `submission` (STARTTLS, RFC 3207) and `submissions` (implicit
TLS, RFC 8314). A client must authenticate (AUTH PLAIN or LOGIN, RFC 4954) with a mailbox's
password, through the same login service, failure delays and bans as IMAP and POP3; it may then
send as the mailbox's identities only (MAIL FROM and every From:/Sender: address). A message is
answered 250 only once the queue holds it durably (services/outbound.enqueue fsyncs and commits).
"""

from __future__ import annotations

import asyncio
import binascii
import email.utils
import logging
import re
import secrets
import ssl
import time
from base64 import b64decode
from collections.abc import Callable
from dataclasses import dataclass
from email.errors import NonASCIILocalPartDefect, ObsoleteHeaderDefect
from email.parser import HeaderParser
from email.policy import compat32
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax
from flask import Flask

from provider.errors import (
    AccessRefused,
    AuthenticationFailed,
    ProviderError,
    SenderNotAllowed,
    SendingSuspended,
    TemporaryFailure,
)
from provider.extensions import db
from provider.models import Mailbox
from provider.protocols import lmtp
from provider.services import identities, mail_access, outbound, sending
from provider.services.clock import now
from provider.services.outbound import QueuedRecipient

log = logging.getLogger(__name__)

SUBMISSION = mail_access.SUBMISSION
# RFC 5321 §4.5.3.1: 64 octets of local part, 256 of path (254 of address without <>).
MAX_LOCAL_PART = 64
MAX_ADDRESS = 254
# RFC 3461 §4.4 (ENVID: 100 characters) and the OutboundRecipient.orcpt column (400).
MAX_ENVID = 100
MAX_ORCPT = 400
# RFC 3461 §4.1/§4.2 allow 100 more octets on MAIL and 500 on RCPT for the DSN parameters.
MAIL_LINE_LIMIT = 512 + 26 + 10 + 100
RCPT_LINE_LIMIT = 1000
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
BANNED = "421 4.7.0 Too many failed logins from your address"
# How long a session trusts the sender addresses it read (identities and aliases change rarely;
# the mailbox's status and policy are read again at every MAIL FROM regardless).
IDENTITY_CACHE_SECONDS = 60.0
NOTIFY_KEYWORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")  # RFC 3461 §4: "+" and "=" only as +XX
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Header defects that change nothing about which address is meant (RFC 6532 allows UTF-8
# local parts; obsolete syntax such as a trailing comma in an address list is still clear).
HARMLESS_DEFECTS = (ObsoleteHeaderDefect, NonASCIILocalPartDefect)


@dataclass(frozen=True)
class Account:
    """The mailbox a session authenticated as."""

    mailbox_id: int
    address: str


class SubmissionEnvelope(Envelope):
    """One mail transaction, with the RFC 3461 (DSN) parameters the queue keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.recipients: list[QueuedRecipient] = []
        self.envid: str | None = None
        self.ret: str | None = None
        # The sender as MAIL FROM read it (policy checked then): RCPT and DATA reuse it, so
        # the mailbox is read once per transaction; a suspension applies from the next MAIL.
        self.sender: Mailbox | None = None
        # Set when a RCPT found (or the burst rule made) the sender's sending suspended: the
        # recipients already accepted do not leave either (the mailbox may be in a spammer's
        # hands); DATA is refused with the same reply.
        self.suspended: str | None = None


def address_problem(address: str, *, smtputf8: bool) -> str | None:
    """Why `address` (from MAIL FROM or RCPT TO, without <>) cannot be used, or None.
    RFC 5321 §4.1.2 (syntax, checked by aiosmtpd's parser before this), §4.5.3.1 (lengths),
    RFC 6531 §3.4 (non-ASCII only with SMTPUTF8)."""
    if CONTROL.search(address):
        return "control characters (NUL, CR, LF …) are not allowed in an address"
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "an address needs a local part, @ and a domain"
    if len(address.encode("utf-8", "surrogateescape")) > MAX_ADDRESS:
        return f"an address may be at most {MAX_ADDRESS} octets long (RFC 5321 4.5.3.1)"
    if len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL_PART:
        return f"a local part may be at most {MAX_LOCAL_PART} octets long (RFC 5321 4.5.3.1)"
    if not address.isascii() and not smtputf8:
        return "a non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM (RFC 6531)"
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return "an address must be valid UTF-8"
    return None


def parse_parameters(words: list[str]) -> dict[str, str | None] | None:
    """ESMTP parameters (RFC 5321 §4.1.2 esmtp-param): keyword upper-cased, value kept as
    given (ENVID and ORCPT are case-sensitive xtext); None if one is malformed or repeated."""
    found: dict[str, str | None] = {}
    for word in words:
        keyword, equals, value = word.partition("=")
        keyword = keyword.upper()
        if not keyword.replace("-", "").isalnum() or not keyword.isascii() or keyword in found:
            return None
        if equals and not value:
            return None
        found[keyword] = value if equals else None
    return found


def is_xtext(value: str) -> bool:
    return value.isascii() and XTEXT.fullmatch(value) is not None


def header_addresses(header_block: bytes, name: str) -> list[list[str]] | None:
    """The addresses of each `name` field in the header block (one list per field), or None
    when a field cannot be read without guessing; see header_addresses_of."""
    found = header_addresses_of(header_block, (name,))
    return None if found is None else found[0]


def header_addresses_of(
    header_block: bytes, names: tuple[str, ...]
) -> list[list[list[str]]] | None:
    """For each of `names`, the addresses of each such field in the header block (one list
    per field), or None when a field cannot be read without guessing (RFC 5322 §3.4 syntax
    errors, control characters). Both Python parsers are asked, each once for all names, and
    every address either finds is returned: where they disagree, one of them is reading
    something a mail program may display."""
    text = header_block.decode("utf-8", "replace")
    try:
        strict_message = HeaderParser(policy=default_policy).parsestr(text)
        lenient_message = HeaderParser(policy=compat32).parsestr(text)
        pairs = [
            (strict_message.get_all(name, []), lenient_message.get_all(name, [])) for name in names
        ]
    except Exception:
        return None
    result = []
    for strict, lenient in pairs:
        found = []
        for parsed, raw in zip(strict, lenient, strict=True):
            if CONTROL.search(str(raw).replace("\r\n", "").replace("\t", " ")):
                return None
            if any(not isinstance(defect, HARMLESS_DEFECTS) for defect in parsed.defects):
                return None
            addresses = [address.addr_spec for address in parsed.addresses]
            for _, address in email.utils.getaddresses([str(raw)]):
                if address and address not in addresses:
                    addresses.append(address)
            found.append(addresses)
        result.append(found)
    return result


def header_block_end(content: bytes) -> int:
    """Where the header block ends (the index of its empty line), or len(content)."""
    if content.startswith(b"\r\n"):
        return 0
    end = content.find(b"\r\n\r\n")
    return len(content) if end == -1 else end + 2


def has_header(content: bytes, name: str) -> bool:
    block = content[: header_block_end(content)]
    wanted = name.lower().encode()
    for line in block.split(b"\r\n"):
        field_name, colon, _ = line.partition(b":")
        # Continuation lines start with white space, so they never match a field name.
        if colon and field_name.rstrip(b" \t").lower() == wanted:
            return True
    return False


END_OF_DATA = b".\r\n"
TOO_MUCH_DATA = "552 5.3.4 Message size exceeds fixed maximum message size"
LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's own words


async def read_data(
    reader: asyncio.StreamReader, size_limit: int | None, line_limit: int
) -> tuple[bytes, str | None]:
    """The message after DATA, read in blocks rather than line by line: (content, None), or
    (b"", reply) when it was too big or had a line over `line_limit` octets (with its CRLF);
    either way the input is read up to the end of the data, so the session goes on in step.

    RFC 5321 §4.1.1.4: the data ends at the line ".", i.e. at CRLF "." CRLF, the CRLF being
    the previous line's end (for an empty message, that of the DATA command itself). A bare
    LF before "." ends nothing (SMTP smuggling; such a message is refused later anyway).
    §4.5.2: a leading "." of a line is removed. The size counts the data as sent (stuffed),
    without the final ".", as aiosmtpd does; past `size_limit` nothing more is kept."""
    pieces: list[bytes] = []
    size = 0
    previous = b"\r\n"  # the last two octets before the unread input
    line = 0  # octets of the current, unfinished line
    problem: str | None = None
    while True:
        try:
            chunk = await reader.readuntil(END_OF_DATA)
            found = True
        except asyncio.LimitOverrunError as overrun:
            # No "." CRLF within the stream's limit: take what surely holds no end marker
            # (asyncio leaves the last octets, where one may begin, in the buffer).
            chunk = await reader.read(overrun.consumed)
            found = False
        ends = found and (previous + chunk[:-3])[-2:] == b"\r\n"
        if ends:
            chunk = chunk[:-3]
        if chunk:
            size += len(chunk)
            if problem is None:
                line, too_long = _line_lengths(line, previous, chunk, line_limit)
                if too_long:
                    problem = LINE_TOO_LONG
                elif size_limit and size > size_limit:
                    problem = TOO_MUCH_DATA
                if problem is None:
                    pieces.append(chunk)
                else:
                    pieces.clear()  # nothing more is kept of a refused message
            previous = (previous + chunk)[-2:]
        if ends:
            break
    if problem is not None:
        return b"", problem
    content = b"".join(pieces)
    if content.startswith(b"."):
        content = content[1:]
    return content.replace(b"\r\n.", b"\r\n"), None


def _line_lengths(line: int, previous: bytes, chunk: bytes, line_limit: int) -> tuple[int, bool]:
    """Line lengths over the next `chunk` of data: (the length of the line left unfinished,
    whether any line, with its CRLF, is longer than `line_limit`). `line` is the length of
    the unfinished line before it, `previous` the two octets before it (a CR there and an LF
    first in the chunk end that line). Lines end at CRLF only, as for aiosmtpd."""
    too_long = False
    if previous.endswith(b"\r") and chunk.startswith(b"\n"):
        too_long = line + 1 > line_limit
        line, chunk = 0, chunk[1:]
    lines = chunk.split(b"\r\n")
    if len(lines) == 1:
        line += len(chunk)
    else:
        longest = max([line + len(lines[0]), *map(len, lines[1:-1])]) + 2
        too_long = too_long or longest > line_limit
        line = len(lines[-1])
    # An unfinished line only grows: past the limit now, it is too long already.
    return line, too_long or line > line_limit


class SubmissionHandler:
    """aiosmtpd hooks: EHLO's extension list and DATA (checks, trace headers, queue)."""

    def __init__(self, app: Flask, inflight: lmtp.InFlight) -> None:
        self.app = app
        self.inflight = inflight
        self.hostname = lmtp.server_hostname(app)

    async def handle_EHLO(
        self,
        server: SubmissionSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        kept = [line for line in responses if not line.startswith(("250-AUTH", "250 HELP"))]
        kept += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN"]
        if server.auth_allowed:
            kept.append("250-AUTH PLAIN LOGIN")
        kept.append("250 HELP")
        return kept

    async def handle_DATA(
        self, server: SubmissionSMTP, session: Session, envelope: SubmissionEnvelope
    ) -> str:
        account = server.account
        content = envelope.original_content or b""
        if account is None:  # AUTH was checked at MAIL; a reset in between is not possible
            return AUTH_REQUIRED
        if envelope.suspended is not None:
            return envelope.suspended
        if lmtp.has_bare_line_ending(content):
            return lmtp.BARE_LINE_ENDING
        try:
            check_header_senders(server.sender_addresses, content)
        except ProviderError as exc:
            return f"{exc.smtp_reply} {exc.message}"
        trace = self.trace_headers(session, server, content)
        self.inflight.begin()
        try:
            reply: str = await asyncio.to_thread(
                server.in_app, self._queue, account, envelope, trace + content
            )
            # Where it came from stays in our log (for abuse reports), not in the message.
            log.info(
                "%s: from %s <%s> at %s, %d recipient(s)",
                reply,
                account.address,
                envelope.mail_from,
                server.peer_address,
                len(envelope.recipients),
            )
            return reply
        except ProviderError as exc:
            return f"{exc.smtp_reply} {exc.message}"
        except Exception:
            log.exception("queueing a message from %s failed", account.address)
            failure = TemporaryFailure("temporary failure queueing the message; try again later")
            return f"{failure.smtp_reply} {failure.message}"
        finally:
            # A shutdown waiting for the count to drop wakes on a later loop turn; aiosmtpd
            # writes the reply in this one, as soon as this returns: the client hears 250
            # before its connection is closed (test_shutdown_waits_for_a_message_being_queued).
            self.inflight.end()

    def _queue(self, account: Account, envelope: SubmissionEnvelope, content: bytes) -> str:
        message = outbound.enqueue(
            db.session,
            sender=envelope.mail_from or "",
            recipients=envelope.recipients,
            content=content,
            mailbox_id=account.mailbox_id,
            envid=envelope.envid,
            ret=envelope.ret,
        )
        return f"250 2.0.0 Ok: queued as {message.queue_id}"

    def trace_headers(self, session: Session, server: SubmissionSMTP, content: bytes) -> bytes:
        """Received (RFC 5321 §4.4, "with ESMTPSA" from RFC 3848), plus Message-ID and Date
        when the client left them out (RFC 6409 §8.2, §8.3). The Received field names neither
        the client's address nor its HELO name: the customer's home IP address is nobody's
        business (our logs keep it for abuse reports)."""
        with_protocol = "ESMTPSA" if server.tls_active else "ESMTPA"
        tls = server.tls_description()
        moment = email.utils.format_datetime(now())
        received = f"Received: by {self.hostname} (provider) with {with_protocol}"
        lines = [f"{received}\r\n\t{tls}; {moment}" if tls else f"{received}; {moment}"]
        if not has_header(content, "Message-ID"):
            lines.append(f"Message-ID: <{secrets.token_hex(12)}@{self.hostname}>")
        if not has_header(content, "Date"):
            lines.append(f"Date: {moment}")
        return "".join(f"{line}\r\n" for line in lines).encode()


def load_sender(account: Account) -> Mailbox:
    """The authenticated mailbox, as it is now: it may have been suspended, its trial may have
    ended, or sending may have been stopped since the session logged in."""
    mailbox = db.session.get(Mailbox, account.mailbox_id)
    if mailbox is None:
        raise AccessRefused("This mailbox no longer exists")
    mail_access.check_policy(mailbox, SUBMISSION)
    if mailbox.sending_suspended_at is not None:
        raise SendingSuspended("sending suspended for this mailbox; contact your provider")
    return mailbox


def check_envelope_sender(
    account: Account, address: str, known: frozenset[str] | None
) -> tuple[Mailbox, frozenset[str]]:
    """At MAIL FROM: the sender mailbox as it is now (policy re-read) and its sender
    addresses (`known`, the session's cached set, or read now when None); raises unless
    `address` is one of them."""
    mailbox = load_sender(account)
    addresses = known if known is not None else identities.sender_address_set(db.session, mailbox)
    if address.strip().lower() not in addresses:
        raise SenderNotAllowed(
            f"Sender address not allowed: <{address}> is not one of your identities"
        )
    return mailbox, addresses


def check_header_senders(addresses: frozenset[str], content: bytes) -> None:
    """RFC 6409 §8.1 lets the MSA check the originator fields: exactly one From: (RFC 5322
    §3.6), and every address in it and in Sender: one of the mailbox's identities
    (`addresses`, lower-case). Sender: is checked too: it names who sent the message, so an
    unchecked one would forge that."""
    header_block = content[: header_block_end(content)]
    fields = header_addresses_of(header_block, ("From", "Sender"))
    if fields is None:
        raise SenderNotAllowed(
            "Sender address not allowed: the From: or Sender: header cannot be read "
            "(RFC 5322 section 3.6.2)"
        )
    froms, senders = fields
    if len(froms) != 1 or not froms[0]:
        raise SenderNotAllowed(
            "Sender address not allowed: the message needs exactly one From: header "
            "naming one of your identities (RFC 5322 section 3.6)"
        )
    for header, found in [("From", froms[0])] + [("Sender", a) for a in senders]:
        for address in found:
            if not address or address.strip().lower() not in addresses:
                raise SenderNotAllowed(
                    f"Sender address not allowed: {header}: <{address}> is not one of your "
                    "identities"
                )


def _check_credentials(user: str, password: str) -> Account:
    mailbox = mail_access.login(db.session, user, password, SUBMISSION)
    return Account(mailbox.id, mailbox.address)


class SubmissionSMTP(lmtp.RewritingMixin, SMTP):
    """One submission connection. Overrides AUTH, MAIL and RCPT (aiosmtpd's authenticator is
    synchronous, and its MAIL/RCPT know neither the DSN parameters nor the null sender)."""

    def __init__(
        self,
        handler: SubmissionHandler,
        *,
        app: Flask,
        implicit_tls: ssl.SSLContext | None,
        **options: Any,
    ) -> None:
        super().__init__(handler, **options)
        self.app = app
        self.implicit_tls = implicit_tls
        self.implicit_tls_active = False
        self.guards = mail_access.guards(app)
        self.account: Account | None = None
        self.max_recipients = int(app.config["SEND_MAX_RECIPIENTS"])
        # aiosmtpd keeps these on the class (shared by every session, grown by each EHLO).
        self.command_size_limits = _Limits({"MAIL": MAIL_LINE_LIMIT, "RCPT": RCPT_LINE_LIMIT})
        self.peer_address = "unknown"
        # The sender addresses of the authenticated mailbox, read at a MAIL FROM and kept for
        # IDENTITY_CACHE_SECONDS (an identity deleted meanwhile stops working by then).
        self.sender_addresses: frozenset[str] = frozenset()
        self._addresses_read_at: float | None = None

    # --- plumbing

    async def push(self, status: str | bytes) -> None:  # type: ignore[override]
        if isinstance(status, str):
            status = with_enhanced_code(lmtp.REPLY_REWRITES.get(status, status))
        await super().push(status)

    def in_app(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work in this worker thread with an app context of its own."""
        with self.app.app_context():
            try:
                return function(*args)
            finally:
                db.session.remove()

    def _create_envelope(self) -> SubmissionEnvelope:
        return SubmissionEnvelope()

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None or self.implicit_tls_active

    @property
    def auth_allowed(self) -> bool:
        """DESIGN.md §6: a password in clear only over TLS or from loopback."""
        return mail_access.plaintext_login_allowed(self.tls_active, self.peer_address)

    def tls_description(self) -> str:
        transport = self.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return ""
        cipher = ssl_object.cipher()
        name = cipher[0] if cipher else "unknown"
        return f"(using {ssl_object.version()} with cipher {name})"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_address = str(peer[0])
        if self.implicit_tls is not None and not hasattr(self, "closed"):
            # Implicit TLS (RFC 8314): the SMTP session starts once the handshake is done.
            self.closed = asyncio.get_running_loop().create_future()
            self.socket_transport = transport
            self._handshake = asyncio.get_running_loop().create_task(
                self._start_implicit_tls(transport, self.implicit_tls)
            )
            return
        if self.account is not None:
            # RFC 3207 §4.2: after STARTTLS the client starts again, unauthenticated.
            self._release_account()
        super().connection_made(transport)
        if self.implicit_tls_active and self.session is not None:
            self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}

    async def _start_implicit_tls(
        self, transport: asyncio.BaseTransport, context: ssl.SSLContext
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls_transport = await loop.start_tls(
                transport,  # type: ignore[arg-type]
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=min(self._timeout_duration, 60.0),
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, EOFError) as exc:
            log.debug("implicit TLS handshake with %s failed: %s", self.peer_address, exc)
            transport.close()
            loop.call_soon(self._mark_closed)
            return
        if tls_transport is None:
            transport.close()
            loop.call_soon(self._mark_closed)
            return
        self.implicit_tls_active = True
        self.connection_made(tls_transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release_account()
        super().connection_lost(exc)

    def _release_account(self) -> None:
        if self.account is not None:
            self.guards.submission_connections.release(self.account.address, self.peer_address)
            self.account = None

    async def _handle_client(self) -> None:
        if self.guards.bans.banned(self.peer_address):
            await self.push(BANNED)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def check_auth_needed(self, caller_method: str) -> bool:
        if caller_method in ("MAIL", "RCPT", "DATA") and self.account is None:
            await self.push(AUTH_REQUIRED)
            return True
        return False

    async def read_response(self) -> bytes | None:
        """One line of an AUTH exchange, without its line end; None (answered) if too long."""
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as error:
            await self._reader.read(error.consumed)
            while True:
                try:
                    await self._reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    await self._reader.read(more.consumed)
            await self.push("500 5.5.6 Authentication exchange line too long")
            return None
        return line.rstrip(b"\r\n")

    async def challenge(self, text: bytes) -> bytes | None:
        """Send a 334 challenge; the client's decoded answer, or None once answered (cancel,
        bad base64, a line too long)."""
        await self.push(b"334 " + text)
        line = await self.read_response()
        if line is None:
            return None
        return await self.decode_response(line)

    async def decode_response(self, line: bytes) -> bytes | None:
        line = line.strip()
        if line == b"*":
            await self.push("501 5.7.0 Authentication cancelled")
            return None
        if line == b"=":  # RFC 4954 §4: an empty initial response
            return b""
        try:
            return b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Cannot decode the base64 answer")
            return None

    # --- commands

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the message read in blocks (read_data) instead of a loop over
        its lines: a fifth of the CPU a message cost."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, problem = await read_data(
                self._reader, self.data_size_limit, self.line_length_limit
            )
        except asyncio.IncompleteReadError:
            log.info("connection closed during DATA")
            if self.transport is not None:
                self.transport.close()
            return
        if problem is not None:
            self._set_post_data_state()
            await self.push(problem)
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.tls_active:
            await self.push("503 5.5.1 TLS is already active")
            return
        await super().smtp_STARTTLS(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        """RFC 4954 AUTH with PLAIN (RFC 4616) or LOGIN, checked like an IMAP login."""
        if await self.check_helo_needed("EHLO"):
            return
        assert self.session is not None and self.envelope is not None
        if not self.session.extended_smtp:
            await self.push("503 5.5.1 Send EHLO first")
            return
        if not self.auth_allowed:
            await self.push(ENCRYPTION_REQUIRED)
            return
        if self.account is not None:
            await self.push("503 5.5.1 Already authenticated")
            return
        words = (arg or "").split()
        if not words or len(words) > 2:
            await self.push("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        mechanism = words[0].upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            await self.push("504 5.5.4 Unrecognized authentication type")
            return
        initial = words[1].encode() if len(words) == 2 else None
        if mechanism == "PLAIN":
            if initial is not None:
                answer = await self.decode_response(initial)
            else:
                answer = await self.challenge(b"")
            if answer is None:
                return
            parts = answer.split(b"\0")
            if len(parts) != 3:
                await self.push("501 5.5.2 AUTH PLAIN needs authzid NUL user NUL password")
                return
            authzid, user, password = parts
        else:
            if initial is not None:
                user_answer = await self.decode_response(initial)
            else:
                user_answer = await self.challenge(b"VXNlcm5hbWU6")  # "Username:"
            if user_answer is None:
                return
            password_answer = await self.challenge(b"UGFzc3dvcmQ6")  # "Password:"
            if password_answer is None:
                return
            authzid, user, password = b"", user_answer, password_answer
        try:
            texts = [part.decode("utf-8") for part in (authzid, user, password)]
        except UnicodeDecodeError:
            await self.push("501 5.5.2 Credentials must be UTF-8")
            return
        if any("\0" in text for text in texts) or not texts[1] or not texts[2]:
            await self.push(AUTH_INVALID)
            return
        if texts[0] and texts[0].lower() != texts[1].lower():
            # Sending as someone else is what identities are for, not an authzid.
            await self.push("535 5.7.8 Authorization identity must be empty or the user")
            return
        await self.authenticate(texts[1], texts[2])

    async def authenticate(self, user: str, password: str) -> None:
        guards = self.guards
        peer = self.peer_address
        # One turn per address at a time, the failure delay served inside it (as for IMAP and
        # POP3): parallel connections cannot multiply a guesser's rate.
        async with guards.logins.turn(peer):
            try:
                account: Account = await asyncio.to_thread(
                    self.in_app, _check_credentials, user, password
                )
            except AuthenticationFailed:
                # The shared ban and penalty file is written off the event loop.
                delay = await asyncio.to_thread(guards.login_failed, peer, user, password)
                if delay is None:
                    await self.push(BANNED)
                    if self.transport is not None:
                        self.transport.close()
                    return
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.push(AUTH_INVALID)
                return
            except AccessRefused as error:
                # The right password: say why (suspended, trial expired), never "bad password".
                await self.push(f"535 5.7.1 {error.message}")
                return
        await asyncio.to_thread(guards.failures.succeeded, peer)
        try:
            guards.submission_connections.acquire(account.address, peer)
        except ProviderError as error:
            await self.push(f"454 4.7.0 {error.message}")
            return
        self.account = account
        assert self.session is not None
        self.session.authenticated = True
        self.session.auth_data = account
        await self.push("235 2.7.0 Authentication successful")

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("MAIL"):
            return
        assert self.session is not None and self.account is not None
        envelope = self.envelope
        assert isinstance(envelope, SubmissionEnvelope)
        syntax_error = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
        rest = self._strip_command_keyword("FROM:", arg or "")
        if rest is None:
            await self.push(syntax_error)
            return
        if envelope.mail_from is not None:
            await self.push("503 5.5.1 Nested MAIL command")
            return
        if rest.startswith("<>"):
            await self.push(
                "553 5.7.1 Sender address not allowed: the null sender <> is for bounces, "
                "not for clients"
            )
            return
        address, params_text = self._getaddr(rest)
        if not address or params_text is None:
            await self.push("501 5.1.7 Bad sender address syntax")
            return
        params = parse_parameters(params_text.split())
        if params is None:
            await self.push(syntax_error)
            return
        smtputf8 = "SMTPUTF8" in params
        problem = address_problem(address, smtputf8=smtputf8)
        if problem is not None:
            await self.push(f"501 5.1.7 Bad sender address: {problem}")
            return
        refusal = self._mail_parameters(params, envelope)
        if refusal is not None:
            await self.push(refusal)
            return
        known = None
        read_at = self._addresses_read_at
        if read_at is not None and time.monotonic() - read_at < IDENTITY_CACHE_SECONDS:
            known = self.sender_addresses
        try:
            mailbox, addresses = await asyncio.to_thread(
                self.in_app, check_envelope_sender, self.account, address, known
            )
        except ProviderError as exc:
            reply = exc.smtp_reply
            if isinstance(exc, AccessRefused):
                reply = "550 5.7.1"
            await self.push(f"{reply} {exc.message}")
            return
        except Exception:
            log.exception("checking sender %s failed", address)
            await self.push("451 4.3.0 Temporary failure; try again later")
            return
        if known is None:
            self.sender_addresses, self._addresses_read_at = addresses, time.monotonic()
        envelope.sender = mailbox
        envelope.mail_from = address
        envelope.smtp_utf8 = smtputf8
        envelope.mail_options.extend(params_text.split())
        await self.push("250 2.1.0 Ok")

    def _mail_parameters(
        self, params: dict[str, str | None], envelope: SubmissionEnvelope
    ) -> str | None:
        """Check MAIL FROM's parameters (RFC 1870 SIZE, 6152 BODY, 6531 SMTPUTF8, 3461 RET and
        ENVID, 4954 AUTH) and keep the DSN ones; a refusal reply, or None."""
        for keyword, value in params.items():
            if keyword == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    return "501 5.5.4 SIZE takes a number of octets"
                if self.data_size_limit and int(value) > self.data_size_limit:
                    return "552 5.3.4 Message size exceeds fixed maximum message size"
            elif keyword == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return "501 5.5.4 BODY can only be 7BIT or 8BITMIME"
            elif keyword == "SMTPUTF8":
                if value is not None:
                    return "501 5.5.4 SMTPUTF8 takes no value"
            elif keyword == "RET":
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    return "501 5.5.4 RET can only be FULL or HDRS (RFC 3461 section 4.3)"
                envelope.ret = value.upper()
            elif keyword == "ENVID":
                if value is None or len(value) > MAX_ENVID or not is_xtext(value):
                    return "501 5.5.4 ENVID must be xtext of at most 100 characters (RFC 3461)"
                envelope.envid = value
            elif keyword == "AUTH":
                pass  # RFC 4954 §5: we are the first hop, so there is no one to trust
            else:
                return f"555 5.5.4 MAIL FROM parameter {keyword} not recognized"
        return None

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("RCPT"):
            return
        assert self.session is not None and self.account is not None
        envelope = self.envelope
        assert isinstance(envelope, SubmissionEnvelope)
        if envelope.mail_from is None:
            await self.push("503 5.5.1 Need MAIL command first")
            return
        rest = self._strip_command_keyword("TO:", arg or "")
        if rest is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address> [parameters]")
            return
        address, params_text = self._getaddr(rest)
        if not address or params_text is None:
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        problem = address_problem(address, smtputf8=envelope.smtp_utf8)
        if problem is not None:
            code = "553 5.6.7" if "SMTPUTF8" in problem else "501 5.1.3"
            await self.push(f"{code} Bad recipient address: {problem}")
            return
        params = parse_parameters(params_text.split())
        if params is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address> [parameters]")
            return
        notify, orcpt, refusal = self._rcpt_parameters(params)
        if refusal is not None:
            await self.push(refusal)
            return
        if len(envelope.recipients) >= self.max_recipients:
            await self.push("452 4.5.3 Too many recipients")
            return
        try:
            assert envelope.sender is not None
            await asyncio.to_thread(
                self.in_app, _check_recipient, envelope.sender, len(envelope.recipients)
            )
        except ProviderError as exc:
            reply = f"{exc.smtp_reply} {exc.message}"
            if isinstance(exc, SendingSuspended):
                envelope.suspended = reply
            await self.push(reply)
            return
        except Exception:
            log.exception("checking the sending limits of %s failed", self.account.address)
            await self.push("451 4.3.0 Temporary failure; try again later")
            return
        envelope.rcpt_tos.append(address)
        envelope.recipients.append(QueuedRecipient(address, notify, orcpt))
        await self.push("250 2.1.5 Ok")

    @staticmethod
    def _rcpt_parameters(
        params: dict[str, str | None],
    ) -> tuple[str | None, str | None, str | None]:
        """RFC 3461 §4.1 NOTIFY and §4.2 ORCPT: (notify, orcpt, refusal)."""
        notify = orcpt = None
        for keyword, value in params.items():
            if keyword == "NOTIFY":
                words = (value or "").upper().split(",")
                if words == ["NEVER"]:
                    notify = "NEVER"
                elif words and set(words) <= NOTIFY_KEYWORDS and len(set(words)) == len(words):
                    notify = ",".join(words)
                else:
                    return (
                        None,
                        None,
                        ("501 5.5.4 NOTIFY is NEVER or a list of SUCCESS, FAILURE, DELAY"),
                    )
            elif keyword == "ORCPT":
                kind, semicolon, text = (value or "").partition(";")
                if (
                    not semicolon
                    or not kind.isascii()
                    or not kind.replace("-", "").isalnum()
                    or not is_xtext(text)
                    or len(value or "") > MAX_ORCPT
                ):
                    return None, None, "501 5.5.4 ORCPT must be addr-type;xtext (RFC 3461)"
                orcpt = value
            else:
                return None, None, f"555 5.5.4 RCPT TO parameter {keyword} not recognized"
        return notify, orcpt, None


# RFC 2034 §3: with ENHANCEDSTATUSCODES every reply but the greeting, HELO/EHLO's and a few
# others carries one; aiosmtpd's own replies (syntax errors, NOOP, RSET) do not.
ENHANCED_CODES = {
    "250": "2.0.0",
    "252": "2.5.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "552": "5.3.4",
    "554": "5.7.0",
}
ENHANCED = re.compile(r"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}\b")


def with_enhanced_code(reply: str) -> str:
    """`reply` with an RFC 3463 code after its number if it has none (and should have one)."""
    code, space, text = reply.partition(" ")
    if not space or code not in ENHANCED_CODES or ENHANCED.match(reply):
        return reply
    if code == "250" and text not in ("OK", "Ok"):
        return reply  # HELO's answer and HELP's list keep their form
    return f"{code} {ENHANCED_CODES[code]} {text}"


class _Limits(dict[str, int]):
    """Command line limits: the defined ones, else aiosmtpd's 512."""

    def __missing__(self, key: str) -> int:
        return SMTP.command_size_limit

    def __setitem__(self, key: str, value: int) -> None:
        # aiosmtpd's EHLO adds to MAIL's limit each time it runs; ours is fixed.
        if key not in self:
            super().__setitem__(key, value)


def _check_recipient(sender: Mailbox, pending: int) -> None:
    # The snapshot MAIL FROM read, attached to this thread's session without a query.
    mailbox = db.session.merge(sender, load=False)
    sending.check_recipient(db.session, mailbox, pending)


def protocol_factory(
    app: Flask, inflight: lmtp.InFlight, tls_context: ssl.SSLContext, *, implicit_tls: bool
) -> Callable[[], SMTP]:
    """A factory for asyncio's create_server making one session per connection: STARTTLS
    offered on the submission port, the whole connection TLS on the submissions port."""
    handler = SubmissionHandler(app, inflight)
    mail_access.guards(app)
    max_bytes = int(float(app.config["MAX_MESSAGE_MB"]) * 1024 * 1024)

    def make() -> SMTP:
        return SubmissionSMTP(
            handler,
            app=app,
            implicit_tls=tls_context if implicit_tls else None,
            data_size_limit=max_bytes,
            hostname=handler.hostname,
            ident="provider ESMTP submission",
            tls_context=None if implicit_tls else tls_context,
            require_starttls=False,
            timeout=float(app.config["SMTP_TIMEOUT_SECONDS"]),
            auth_require_tls=False,
            enable_SMTPUTF8=True,
        )

    return make
