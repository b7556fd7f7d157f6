"""What IMAP and POP3 share per connection: the session's plumbing (threads, TLS, closing)
and the asyncio protocol that runs one session object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from flask import Flask

from provider.errors import ProviderError
from provider.extensions import db
from provider.models import Mailbox
from provider.protocols.lmtp import SessionMixin
from provider.services import mail_access
from provider.tls import server_context

log = logging.getLogger(__name__)

# Writers wait for the client (drain) once this much is queued for it: with output produced
# a chunk at a time, a session never holds much more than this for a client that stops
# reading (issue 11 item 2). asyncio's default is the same for plain sockets, 512 KiB for TLS.
WRITE_HIGH_WATER = 64 * 1024


class StreamSession:
    """The parts of an IMAP or POP3 session that do not depend on the protocol."""

    def __init__(
        self,
        app: Flask,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        implicit_tls: bool,
        tls_context: ssl.SSLContext,
    ) -> None:
        self.app = app
        self.reader = reader
        self.writer = writer
        self.implicit_tls = implicit_tls
        self.tls_context = tls_context
        self.tls_active = False
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        self.guards = mail_access.guards(app)
        self.bad_commands = 0
        self.recheck_interval = float(app.config["ACCOUNT_RECHECK_SECONDS"])
        self.next_recheck = 0.0
        self.limit_write_buffer()

    def limit_write_buffer(self) -> None:
        """Make drain() wait once WRITE_HIGH_WATER octets are queued (a new transport after
        TLS starts has its own limits)."""
        self.writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def _in_app(self, function: Callable[..., Any], *args: Any) -> Any:
        with self.app.app_context():
            try:
                return function(*args)
            finally:
                db.session.remove()

    async def blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        """The one way blocking work (hashing, database, files) leaves the event loop."""
        return await asyncio.to_thread(self._in_app, function, *args)

    @property
    def plaintext_allowed(self) -> bool:
        """DESIGN.md §6: a password in clear only over TLS or from loopback."""
        return mail_access.plaintext_login_allowed(self.tls_active, self.peer)

    async def start_implicit_tls(self) -> None:
        if self.implicit_tls:
            await self.writer.start_tls(self.tls_context)
            self.limit_write_buffer()
            self.tls_active = True

    async def upgrade_to_tls(self, go_ahead: bytes) -> None:
        """STARTTLS/STLS: answer `go_ahead`, then the handshake.

        Whatever the client pipelined after the command arrived in plaintext and must never
        run as if it came over TLS (RELIABILITY P4; asyncio has no public way to empty a
        StreamReader, CPython #118642). Reading stops first, so the buffer emptied here holds
        all the plaintext there will ever be: bytes sent later wait in the socket until the
        TLS layer reads them (plaintext among them fails the handshake). The buffer must never
        be emptied after the handshake: by then it may hold the client's first command, which
        came over TLS (the STARTTLS hangs of issue 11 item 15)."""
        self.writer.transport.pause_reading()
        self.reader._buffer.clear()  # type: ignore[attr-defined]
        self.writer.write(go_ahead)
        await self.writer.drain()
        # start_tls resumes reading once the TLS layer owns the socket.
        await self.writer.start_tls(self.tls_context)
        self.limit_write_buffer()
        self.tls_active = True

    def logged_in_now(self) -> None:
        """Start the clock for recheck_refusal (the login itself just checked everything)."""
        self.next_recheck = asyncio.get_running_loop().time() + self.recheck_interval

    async def recheck_refusal(self, mailbox_id: int, protocol: str) -> str | None:
        """Why the logged-in mailbox may no longer use `protocol` (suspended, expired, deleted,
        protocol taken away), looked up at most every ACCOUNT_RECHECK_SECONDS; the caller ends
        the session with it (RELIABILITY A6, ASVS 5.0 7.4.2)."""
        moment = asyncio.get_running_loop().time()
        if moment < self.next_recheck:
            return None
        self.next_recheck = moment + self.recheck_interval
        return await self.blocking(_refusal, mailbox_id, protocol)  # type: ignore[no-any-return]

    async def close_connection(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


def _refusal(mailbox_id: int, protocol: str) -> str | None:
    mailbox = db.session.get(Mailbox, mailbox_id)
    if mailbox is None:
        return "This mailbox no longer exists"
    try:
        mail_access.check_policy(mailbox, protocol)
    except ProviderError as error:
        return error.message
    return None


class LineSession(Protocol):
    """A session class: built per connection, `run()` serves it until it ends."""

    def __init__(
        self,
        app: Flask,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        implicit_tls: bool,
        tls_context: ssl.SSLContext,
    ) -> None: ...

    def run(self) -> Coroutine[Any, Any, None]: ...

    def say_goodbye(self) -> None: ...


class SessionProtocol(SessionMixin, asyncio.StreamReaderProtocol):
    """The asyncio protocol the runner creates per connection; runs one session object."""

    def __init__(
        self,
        start: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        line_limit: int,
    ) -> None:
        super().__init__(asyncio.StreamReader(limit=line_limit), start)
        self.session: LineSession | None = None  # set once the connection is made

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return self._transport  # type: ignore[attr-defined,no-any-return]

    def say_goodbye(self) -> None:
        """The server is shutting down: the session tells its client (IMAP `* BYE`, POP3
        `-ERR`) if it can without breaking a response; never raises."""
        if self.session is None:
            return
        try:
            self.session.say_goodbye()
        except Exception:  # a goodbye is a courtesy: never let it stop the shutdown
            log.debug("could not say goodbye to a client", exc_info=True)


def session_factory(
    app: Flask, session_class: type[LineSession], *, implicit_tls: bool, line_limit: int
) -> Callable[[], asyncio.Protocol]:
    """A factory for asyncio's create_server: one `session_class` session per connection."""
    tls_context = server_context(app.config)
    mail_access.guards(app)

    def make() -> asyncio.Protocol:
        def start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
            session = session_class(
                app, reader, writer, implicit_tls=implicit_tls, tls_context=tls_context
            )
            protocol.session = session
            return session.run()

        protocol = SessionProtocol(start, line_limit)
        return protocol

    return make


def ack_at_once(writer: asyncio.StreamWriter) -> None:
    """Have the kernel acknowledge what arrives next at once instead of up to 40 ms later.

    A client that sends a literal and then its closing CRLF in two writes (imaplib does, like
    many) holds the CRLF back under Nagle's rule until the literal is acknowledged, and Linux
    delays that acknowledgement when nothing goes back: every synchronizing APPEND took 40 ms
    more (48 ms against Dovecot's 1.7 ms, one client, quiet machine). TCP_QUICKACK is a one-off
    on Linux (the kernel may leave quick-ack mode again), so it is set each time; elsewhere,
    or on a socket that is not TCP, nothing happens.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    sock = writer.get_extra_info("socket")
    if quickack is None or sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
