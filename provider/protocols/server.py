"""One asyncio runner for every protocol listener: start on the set ports, stop gracefully."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask

from provider.protocols import lmtp
from provider.tls import server_context

log = logging.getLogger(__name__)
BACKLOG = 1024  # pending connections per pre-bound listening socket


@dataclass(frozen=True)
class Listener:
    """A protocol the runner can serve: its port setting and how to build a session."""

    name: str
    port_setting: str
    make_factory: Callable[[Flask, lmtp.InFlight], Callable[[], asyncio.Protocol]]
    description: str


@dataclass(frozen=True)
class Bound:
    """Where a listener ended up (port 0 in the settings means "any free port")."""

    name: str
    host: str
    port: int
    description: str


def _lmtp(app: Flask, inflight: lmtp.InFlight) -> Callable[[], asyncio.Protocol]:
    # LMTP serves the local MTA; STARTTLS is offered all the same (TLS available everywhere).
    return lmtp.protocol_factory(app, "LMTP", inflight, server_context(app.config))  # type: ignore[no-any-return]


def _smtp(app: Flask, inflight: lmtp.InFlight) -> Callable[[], asyncio.Protocol]:
    return lmtp.protocol_factory(app, "ESMTP", inflight, server_context(app.config))  # type: ignore[no-any-return]


def _imap(app: Flask, inflight: lmtp.InFlight) -> Callable[[], asyncio.Protocol]:
    from provider.protocols.imap.session import protocol_factory

    return protocol_factory(app, implicit_tls=False)


def _imaps(app: Flask, inflight: lmtp.InFlight) -> Callable[[], asyncio.Protocol]:
    from provider.protocols.imap.session import protocol_factory

    return protocol_factory(app, implicit_tls=True)


def _pop3(app: Flask, inflight: lmtp.InFlight) -> Callable[[], asyncio.Protocol]:
    from provider.protocols.pop3 import protocol_factory

    return protocol_factory(app, implicit_tls=False)


def _pop3s(app: Flask, inflight: lmtp.InFlight) -> Callable[[], asyncio.Protocol]:
    from provider.protocols.pop3 import protocol_factory

    return protocol_factory(app, implicit_tls=True)


def _submission(app: Flask, inflight: lmtp.InFlight) -> Callable[[], asyncio.Protocol]:
    from provider.protocols import submission

    return submission.protocol_factory(  # type: ignore[return-value]
        app, inflight, server_context(app.config), implicit_tls=False
    )


def _submissions(app: Flask, inflight: lmtp.InFlight) -> Callable[[], asyncio.Protocol]:
    from provider.protocols import submission

    return submission.protocol_factory(  # type: ignore[return-value]
        app, inflight, server_context(app.config), implicit_tls=True
    )


def _managesieve(app: Flask, inflight: lmtp.InFlight) -> Callable[[], asyncio.Protocol]:
    from provider.protocols import managesieve

    return managesieve.protocol_factory(app)


# One service name may start several listeners (IMAP: STARTTLS and implicit TLS).
LISTENERS: dict[str, tuple[Listener, ...]] = {
    "lmtp": (Listener("lmtp", "LMTP_PORT", _lmtp, "LMTP (STARTTLS)"),),
    "smtp": (Listener("smtp", "SMTP_PORT", _smtp, "SMTP inbound (STARTTLS)"),),
    "imap": (
        Listener("imap", "IMAP_PORT", _imap, "IMAP (STARTTLS)"),
        Listener("imaps", "IMAPS_PORT", _imaps, "IMAP (implicit TLS)"),
    ),
    "pop3": (
        Listener("pop3", "POP3_PORT", _pop3, "POP3 (STLS)"),
        Listener("pop3s", "POP3S_PORT", _pop3s, "POP3 (implicit TLS)"),
    ),
    "submission": (
        Listener("submission", "SUBMISSION_PORT", _submission, "submission (STARTTLS, AUTH)"),
        Listener("submissions", "SUBMISSIONS_PORT", _submissions, "submission (implicit TLS)"),
    ),
    "managesieve": (
        Listener("managesieve", "MANAGESIEVE_PORT", _managesieve, "ManageSieve (STARTTLS)"),
    ),
}


class _ClosingProtocol(lmtp.SessionMixin, asyncio.Protocol):
    """Closes a connection the moment it is made (one accepted while shutting down)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        transport.close()


class ProtocolRunner:
    """Runs the chosen listeners on one event loop in a background thread.

    Without `sockets` it binds each listener's port setting itself; with `sockets` (listener
    name → listening sockets, bound by `provider serve`'s supervisor and inherited by this mail
    process) it serves those, so several processes can share one port."""

    def __init__(
        self,
        app: Flask,
        names: list[str],
        sockets: Mapping[str, Sequence[socket.socket]] | None = None,
    ) -> None:
        self.app = app
        self.names = [name for name in names if name in LISTENERS]
        self.sockets = sockets
        self.bound: list[Bound] = []
        self.finished = threading.Event()  # set once the loop has ended, for whatever reason
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self, timeout: float = 30) -> list[Bound]:
        """Start listening; return where. Raises what went wrong (e.g. a port in use)."""
        self._thread = threading.Thread(target=self._run, name="protocols", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("protocol listeners did not start in time")
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        return self.bound

    def stop(self) -> None:
        """Stop accepting, let deliveries in progress finish (SHUTDOWN_GRACE_SECONDS), close."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            if not self._ready.is_set():
                self._failure = exc
                self._ready.set()
            elif self._stop is not None and self._stop.is_set():
                # Shutting down anyway: one line, never a traceback (issue 11, item 17).
                log.warning("protocol runner: %s while stopping: %s", type(exc).__name__, exc)
            else:
                log.exception("protocol runner failed")
        finally:
            self.finished.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        inflight = lmtp.InFlight()
        sessions: set[Any] = set()  # every connection made, until it is closed
        servers: list[asyncio.AbstractServer] = []
        host = self.app.config["BIND_HOST"]
        try:
            chosen = [listener for name in self.names for listener in LISTENERS[name]]
            for listener in chosen:
                factory = listener.make_factory(self.app, inflight)

                def tracked(factory: Callable[[], asyncio.Protocol] = factory) -> asyncio.Protocol:
                    stopping = self._stop is not None and self._stop.is_set()
                    protocol = _ClosingProtocol() if stopping else factory()
                    sessions.add(protocol)
                    return protocol

                if self.sockets is None:
                    port_setting = int(self.app.config[listener.port_setting])
                    created = [
                        await self._loop.create_server(tracked, host=host, port=port_setting)
                    ]
                else:
                    created = [
                        # The backlog the supervisor chose (asyncio would listen() again
                        # with its default of 100).
                        await self._loop.create_server(tracked, sock=sock, backlog=BACKLOG)
                        for sock in self.sockets[listener.name]
                    ]
                for server in created:
                    _accept_late_connections(server)
                servers.extend(created)
                port = created[0].sockets[0].getsockname()[1]
                self.bound.append(Bound(listener.name, host, port, listener.description))
        except BaseException:
            for server in servers:
                server.close()
            raise
        self._ready.set()
        await self._stop.wait()

        for server in servers:
            server.close()
        grace = float(self.app.config["SHUTDOWN_GRACE_SECONDS"])
        try:
            await asyncio.wait_for(inflight.idle.wait(), grace)
        except TimeoutError:
            log.warning("%d deliveries still running after %.0f s; closing", inflight.count, grace)
        for protocol in list(sessions):
            _say_goodbye(protocol)  # * BYE, -ERR, 421: every client told before any closes
        for protocol in list(sessions):
            transport: Any = getattr(protocol, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()
        for server in servers:
            await server.wait_closed()
        await _wait_closed(sessions)


def _say_goodbye(protocol: Any) -> None:
    """Let a live session tell its client that the server is going away (IMAP `* BYE`, POP3
    `-ERR`, SMTP `421`) before its connection is closed. Sessions that have no such method,
    or whose connection is already closing, are simply closed."""
    goodbye = getattr(protocol, "say_goodbye", None)
    transport: Any = getattr(protocol, "transport", None)
    if goodbye is None or transport is None or transport.is_closing():
        return
    try:
        goodbye()
    except Exception as exc:  # a goodbye is a courtesy: it must never stop the shutdown
        log.warning("goodbye to a client failed: %s: %s", type(exc).__name__, exc)


def _transports(protocol: Any) -> list[Any]:
    """Every transport a session holds: the one it writes to, the socket's own, and the one
    aiosmtpd keeps aside after STARTTLS (`_original_transport`: the socket's, which closing
    the TLS layer alone leaves open while the client does not answer the TLS close)."""
    found = []
    for name in ("transport", "socket_transport", "_original_transport"):
        transport = getattr(protocol, name, None)
        if transport is not None and transport not in found:
            found.append(transport)
    return found


def _socket_open(protocol: Any) -> bool:
    """Whether one of the session's sockets is still open. A TLS transport torn down under
    its session can no longer be asked (AttributeError inside asyncio); its socket is closed
    by then."""
    for transport in _transports(protocol):
        try:
            sock = transport.get_extra_info("socket")
        except Exception:
            continue
        if sock is not None and sock.fileno() != -1:
            return True
    return False


def _accept_late_connections(server: asyncio.AbstractServer) -> None:
    """CPython 3.11: a connection accepted just before `Server.close()` gets its transport one
    loop turn later, and `Server._attach()` then fails an assertion (the server is closed), so
    the transport is never registered or closed and its socket is left for the garbage
    collector (about one shutdown in five under load here). Counting it in instead lets it
    reach its protocol, which closes it at once (`_ClosingProtocol`)."""
    if not all(hasattr(server, name) for name in ("_attach", "_detach", "_active_count")):
        return

    state: Any = server

    def attach() -> None:
        state._active_count += 1

    def detach() -> None:
        # The same as asyncio's, except that waiters already woken by close() are not woken
        # a second time (which would fail: they are None by then).
        state._active_count -= 1
        if state._active_count == 0 and state._sockets is None and state._waiters is not None:
            state._wakeup()

    state._attach, state._detach = attach, detach


async def _wait_closed(sessions: set[Any], timeout: float = 5.0) -> None:
    """Wait until every connection's socket is really closed (and every session task done), so
    that no socket is left for the garbage collector when the loop ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        # Sessions accepted at the very last moment appear once their accept task has run.
        live = [p for p in list(sessions) if hasattr(p, "closed")]
        pending = [p.closed for p in live if not p.closed.done()]
        open_sockets = [p for p in live if _socket_open(p)]
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not pending and not open_sockets and not tasks:
            return
        for protocol in live:
            for transport in _transports(protocol):
                if not transport.is_closing():
                    transport.close()
        if pending or tasks:
            await asyncio.wait([*pending, *tasks], timeout=0.05)
        else:
            await asyncio.sleep(0.01)  # the scheduled socket closes run on the next turns
