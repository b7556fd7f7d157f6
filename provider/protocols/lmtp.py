"""LMTP and inbound SMTP delivery listeners (aiosmtpd): local mailboxes only, never a relay.

LMTP (RFC 2033) answers DATA once per recipient, so each recipient gets its own verdict. Inbound
SMTP can answer DATA only once for all recipients: its quota verdict is given at RCPT time
(using the SIZE the client declared), and a recipient accepted there is stored even if the
message then takes it past its quota by this one message (see services/delivery.store_message).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from flask import Flask

from provider.errors import ProviderError, TemporaryFailure
from provider.extensions import db
from provider.services import delivery
from provider.services.clock import now
from provider.services.delivery import Route
from provider.services.storage import mail_store

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 100
SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down\r\n"
BARE_LINE_ENDING = "550 5.6.0 Message refused: bare CR or LF line ending (RFC 5322 section 2.3)"
# aiosmtpd's own replies for size limits, given the enhanced status code RFC 3463 assigns.
REPLY_REWRITES = {
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message size exceeds fixed maximum message size"
    ),
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
}


@dataclass
class InFlight:
    """Counts deliveries being written, so shutdown can wait for them to finish."""

    count: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def begin(self) -> None:
        self.count += 1
        self.idle.clear()

    def end(self) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


def routes_of(envelope: Envelope) -> list[Route]:
    """The resolved recipients of this transaction, kept on its envelope (a new one per MAIL)."""
    if not hasattr(envelope, "routes"):
        envelope.routes = []  # type: ignore[attr-defined]
    return envelope.routes  # type: ignore[attr-defined,no-any-return]


def has_bare_line_ending(content: bytes) -> bool:
    """True if a CR or an LF appears anywhere except as part of CRLF (SMTP smuggling, P8)."""
    crlf = content.count(b"\r\n")
    return content.count(b"\r") != crlf or content.count(b"\n") != crlf


def declared_size(envelope: Envelope) -> int:
    """The SIZE= the client gave in MAIL FROM, or 0."""
    for option in envelope.mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


class DeliveryHandler:
    """aiosmtpd handler: resolves recipients at RCPT, stores the message at DATA."""

    def __init__(self, app: Flask, protocol: str, inflight: InFlight) -> None:
        self.app = app
        self.protocol = protocol  # "LMTP" or "ESMTP"
        self.inflight = inflight
        self.hostname = server_hostname(app)

    # Blocking work runs in a worker thread with its own app context (CONVENTIONS: blocking
    # work leaves the event loop).
    def _in_app(self, function: Any, *args: Any) -> Any:
        with self.app.app_context():
            try:
                return function(*args)
            finally:
                db.session.remove()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # No AUTH here: this listener only takes mail for local mailboxes.
        return [line for line in responses if not line.startswith("250-AUTH")]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        try:
            route = await asyncio.to_thread(
                self._in_app, self._accept_recipient, address, declared_size(envelope)
            )
        except ProviderError as exc:
            return f"{exc.smtp_reply} {exc.message}"
        except Exception:
            log.exception("resolving recipient %s failed", address)
            return "451 4.3.0 Temporary failure; try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        routes_of(envelope).append(route)
        return "250 2.1.5 OK"

    def _accept_recipient(self, address: str, size: int) -> Route:
        route = delivery.resolve_route(db.session, address)
        # Refuse now what cannot fit: saves the client sending the data at all.
        delivery.check_route(db.session, route, max(size, 1))
        return route

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        routes = routes_of(envelope)
        content = envelope.original_content or b""
        if has_bare_line_ending(content):
            replies = [BARE_LINE_ENDING] * len(routes)
        else:
            self.inflight.begin()
            try:
                replies = await asyncio.to_thread(
                    self._in_app, self._store_all, session, envelope, routes, content
                )
            finally:
                self.inflight.end()
        if self.protocol == "LMTP":
            return "\r\n".join(replies)
        return combine_smtp_replies(replies)

    def _store_all(
        self, session: Session, envelope: Envelope, routes: list[Route], content: bytes
    ) -> list[str]:
        """Store the message for each recipient and return one reply per recipient."""
        store = mail_store()
        queue_id = secrets.token_hex(6).upper()
        received_at = email.utils.format_datetime(now())
        # SMTP answers DATA once: a recipient it accepted at RCPT cannot be refused alone.
        promised = self.protocol != "LMTP" and len(routes) > 1
        replies = []
        for recipient, route in zip(envelope.rcpt_tos, routes, strict=True):

            def message_for(delivered_to: str, recipient: str = recipient) -> bytes:
                trace = self._trace_headers(
                    session, envelope, recipient, delivered_to, queue_id, received_at
                )
                return trace + content

            try:
                delivery.deliver_route(
                    db.session,
                    store,
                    route,
                    message_for,
                    promised=promised,
                    sender=envelope.mail_from or "",
                )
            except ProviderError as exc:
                replies.append(f"{exc.smtp_reply} {exc.message}")
                continue
            except Exception:
                log.exception("delivery to %s failed", route.address)
                failure = TemporaryFailure("temporary failure; try again later")
                replies.append(f"{failure.smtp_reply} {failure.message}")
                continue
            replies.append(f"250 2.0.0 <{route.address}> delivered as {queue_id}")
        return replies

    def _trace_headers(
        self,
        session: Session,
        envelope: Envelope,
        recipient: str,
        delivered_to: str,
        queue_id: str,
        received_at: str,
    ) -> bytes:
        """Return-Path, Delivered-To and Received, as the delivering MDA adds them."""
        peer_host, peer_ip = session.host_name or "unknown", "unknown"
        if isinstance(session.peer, tuple):
            peer_ip = str(session.peer[0])
        with_protocol = self.protocol
        if self.protocol == "ESMTP" and session.ssl:
            with_protocol = "ESMTPS"
        sender = envelope.mail_from or ""
        lines = [
            f"Return-Path: <{sender}>",
            f"Delivered-To: {delivered_to}",
            f"Received: from {peer_host} ([{peer_ip}])",
            f"\tby {self.hostname} (provider) with {with_protocol} id {queue_id}",
            f"\tfor <{recipient.strip('<>')}>; {received_at}",
        ]
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def combine_smtp_replies(replies: list[str]) -> str:
    """SMTP answers DATA once: success if anyone got the message, else the first refusal."""
    delivered = [reply for reply in replies if reply.startswith("250")]
    if delivered:
        return delivered[0]
    return replies[0] if replies else "554 5.5.1 No valid recipients"


class SessionMixin:
    """What the runner needs of every session: a `closed` future, done once the connection is
    gone (so shutdown can wait for sockets to be really closed)."""

    closed: asyncio.Future[None]
    socket_transport: asyncio.BaseTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this a second time after STARTTLS, with the TLS transport layered on
        # top of the socket's: keep the first. (Taking the TLS one made socket_open fail with
        # AttributeError '_get_extra_info' once shutdown had closed it twice: issue 11 item 17.)
        if not hasattr(self, "closed"):
            self.closed = asyncio.get_running_loop().create_future()
            # The transport on the socket itself (after STARTTLS the session talks to a TLS
            # transport layered on top of it, which can be closed while this one is not).
            self.socket_transport = transport
        super().connection_made(transport)  # type: ignore[misc]

    def socket_open(self) -> bool:
        sock = self.socket_transport.get_extra_info("socket")
        return sock is not None and sock.fileno() != -1

    def say_goodbye(self) -> None:
        """Tell the client the server is shutting down (the runner calls this before it
        closes the connection); synchronous, never raises. Nothing to say by default."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)  # type: ignore[misc]
        # After STARTTLS, aiosmtpd closes the raw transport here too; that close completes on
        # the next loop turn (call_soon is first in, first out), so report "closed" after it.
        asyncio.get_running_loop().call_soon(self._mark_closed)

    def _mark_closed(self) -> None:
        # A transport closed before connection_made ran (see server._close_orphans) has none.
        closed = getattr(self, "closed", None)
        if closed is not None and not closed.done():
            closed.set_result(None)


class RewritingMixin(SessionMixin):
    """Give aiosmtpd's built-in size replies their enhanced status codes; say 421 at shutdown."""

    def say_goodbye(self) -> None:
        """RFC 5321 §3.8: a server that must shut down answers 421 and closes."""
        transport: asyncio.WriteTransport | None = getattr(self, "transport", None)
        if transport is None or transport.is_closing():
            return
        try:
            transport.write(SHUTDOWN_REPLY)
        except Exception:  # a goodbye is a courtesy: never let it stop the shutdown
            log.debug("could not say goodbye to an SMTP client", exc_info=True)

    async def push(self, status: str | bytes) -> None:  # type: ignore[override]
        if isinstance(status, str):
            status = REPLY_REWRITES.get(status, status)
        await super().push(status)  # type: ignore[misc]


class DeliverySMTP(RewritingMixin, SMTP):
    """Inbound SMTP (MX-style)."""


class DeliveryLMTP(RewritingMixin, LMTP):
    """LMTP, for an MTA such as Postfix handing over local mail."""


def server_hostname(app: Flask) -> str:
    import socket

    return str(app.config.get("HOSTNAME") or socket.getfqdn())


def protocol_factory(
    app: Flask, protocol: str, inflight: InFlight, tls_context: ssl.SSLContext | None
) -> Any:
    """A factory for asyncio's create_server making one session object per connection."""
    handler = DeliveryHandler(app, protocol, inflight)
    cls = DeliveryLMTP if protocol == "LMTP" else DeliverySMTP
    max_bytes = int(float(app.config["MAX_MESSAGE_MB"]) * 1024 * 1024)

    def make() -> SMTP:
        return cls(
            handler,
            data_size_limit=max_bytes,
            hostname=handler.hostname,
            ident="provider",
            tls_context=tls_context,
            require_starttls=False,
            timeout=float(app.config["SMTP_TIMEOUT_SECONDS"]),
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            enable_SMTPUTF8=True,
        )

    return make
