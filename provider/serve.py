"""`provider serve`: check the database, bind every port, then supervise the web, mail and
scheduler processes until SIGINT/SIGTERM (docs/DESIGN-NOTES.md, "Processes")."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click
from flask import Flask

from provider.dbcheck import DatabaseUnavailable, check_database
from provider.extensions import db
from provider.protocols.server import LISTENERS, ProtocolRunner
from provider.services import dkim, quota
from provider.supervisor import (
    ChildContext,
    ChildFailed,
    Service,
    StopRequested,
    Supervisor,
    raise_open_file_limit,
    remove_stale_status_files,
    status_path,
)

KNOWN_SERVICES = (
    "web",
    "imap",
    "pop3",
    "lmtp",
    "smtp",
    "submission",
    "managesieve",
    "outbound",
    "scheduler",
)
# Services that later parts of the product add; asked for now, they are reported and skipped.
NOT_YET_AVAILABLE: frozenset[str] = frozenset()
MAIL_SERVICES = ("imap", "pop3", "lmtp", "smtp", "submission", "managesieve")
# Processes per kind of service. Mail (IMAP, POP3, LMTP, SMTP-in, ManageSieve) runs
# MAIL_WORKERS processes (0: one per core) and submission one per core, each kind's workers
# accepting on the same inherited listening sockets; what must hold for the whole installation
# is shared through INSTANCE_DIR/run/ (login failure delays and bans in logins.sqlite3, login
# turns and connection limits as record locks in slots.lock) or the mail store's own files
# (\Recent, UIDs, flags), docs/DESIGN-NOTES.md "Several mail workers". The web is one gunicorn
# arbiter (one child of ours) with WEB_WORKERS processes of WEB_THREADS threads; its login,
# signup and API counters are shared in logins.sqlite3 too ("Several web workers").
WORKERS = {
    "web": 1,
    "mail": 0,  # MAIL_WORKERS
    "submission": os.cpu_count() or 1,
    "outbound": 1,
    "scheduler": 1,
}
WEB_THREADS = 8
MAIL_SWITCH_INTERVAL_SECONDS = 0.0005
"""How long a mail process thread may hold the GIL while another waits (Python's default is
5 ms). The event loop waits behind handler threads that parse, search and compress; at 0.5 ms
the mixed IMAP load ran 836 against 704-774 commands/s, with lower medians (bench/RESULTS.md)."""
LISTEN_BACKLOG = 1024
# How long a stopping service may take beyond the delivery grace period before it is killed.
STOP_MARGIN_SECONDS = 15.0

# Tasks run once, in the supervisor, after the database check and before any port is opened
# or any service starts: each takes the app (call it inside `app.app_context()` as needed).
# A task that fails is reported on one line and start-up goes on.
BEFORE_SERVING: list[Callable[[Flask], object]] = [
    quota.settle_interrupted,
    dkim.give_keys_to_domains_without,
]


@dataclass
class Listening:
    """A port `serve` opened: for the web app, or for one mail listener."""

    name: str  # web, imap, imaps, pop3, …
    service: str  # web or the mail service it belongs to (imap for imaps)
    port_setting: str
    description: str
    sockets: list[socket.socket]

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])


class CannotListen(Exception):
    """A port could not be opened; the message says which and which setting to change."""


def _label(name: str) -> str:
    return "web" if name == "web" else name.upper()


def bind_port(name: str, host: str, port: int, port_setting: str) -> list[socket.socket]:
    """Listening sockets on every address `host` stands for (one port for all, even when the
    port setting is 0), or CannotListen saying what to change."""
    where = f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CannotListen(
            f"cannot listen on {where} for {_label(name)}: {exc.strerror}; "
            "set PROVIDER_BIND_HOST to an address of this machine"
        ) from None
    sockets: list[socket.socket] = []
    seen: set[Any] = set()
    try:
        for family, kind, proto, _, address in addresses:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if len(sockets) > 1:  # port 0: the port the first address got, for all of them
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(
                f"{_label(name)} port {where} is already in use; "
                f"set PROVIDER_{port_setting} to another port"
            ) from None
        if exc.errno == errno.EACCES:
            raise CannotListen(
                f"{_label(name)} port {where} needs privileges this user lacks; "
                f"set PROVIDER_{port_setting} to a port above 1023"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise CannotListen(
                f"cannot listen on {where} for {_label(name)}: no such address on this "
                "machine; set PROVIDER_BIND_HOST to one of its addresses"
            ) from None
        raise CannotListen(f"cannot listen on {where} for {_label(name)}: {exc.strerror}") from None
    return sockets


def open_ports(app: Flask, services: list[str]) -> list[Listening]:
    """Bind every port the chosen services need, before any process starts: a taken port
    stops start-up at once, and port 0 is resolved here, once, for every worker."""
    host = str(app.config["BIND_HOST"])
    wanted: list[tuple[str, str, str, str]] = []
    if "web" in services:
        wanted.append(("web", "web", "WEB_PORT", "web UI"))
    for service in services:
        for listener in LISTENERS.get(service, ()):
            wanted.append((listener.name, service, listener.port_setting, listener.description))
    opened: list[Listening] = []
    try:
        for name, service, setting, description in wanted:
            sockets = bind_port(name, host, int(app.config[setting]), setting)
            opened.append(Listening(name, service, setting, description, sockets))
    except CannotListen:
        for listening in opened:
            for sock in listening.sockets:
                sock.close()
        raise
    return opened


def public_notes(app: Flask, opened: list[Listening]) -> tuple[dict[str, str], list[str]]:
    """What customers are told (PUBLIC_* settings) where it is set: a note per listener name,
    and a line for SMTP submission when it is not served here."""
    config = app.config
    notes: dict[str, str] = {}
    lines: list[str] = []
    ports = {listening.name: listening.port for listening in opened}

    def told(prefix: str, listener: str | None) -> str | None:
        host = str(config.get(f"PUBLIC_{prefix}_HOST") or "")
        port = int(config.get(f"PUBLIC_{prefix}_PORT") or 0)
        if not host and not port:
            return None
        host = host or str(config.get("HOSTNAME") or socket.getfqdn())
        shown = port or (ports.get(listener) if listener else None)
        return f"{host}:{shown}" if shown else host

    for prefix, listener in (("IMAP", "imaps"), ("POP3", "pop3s"), ("SMTP", "submissions")):
        if listener in ports and (public := told(prefix, listener)):
            notes[listener] = f"customers are told {public}"
    if (
        "submissions" not in ports
        and any(listening.service in MAIL_SERVICES for listening in opened)
        and (public := told("SMTP", None))
    ):
        lines.append(f"submission: not served here  — customers are told {public}")
    return notes, lines


def run_before_serving(app: Flask) -> None:
    for task in BEFORE_SERVING:
        try:
            task(app)
        except Exception as exc:  # one line; serving matters more than the task
            click.echo(f"warning: start-up task {task.__name__} failed: {exc}", err=True)


def run(app: Flask, services: list[str]) -> None:
    """Start the chosen services, print where they listen, and block until SIGINT/SIGTERM."""
    raise_open_file_limit()
    try:
        check_database(app, migrated=True)
    except DatabaseUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    run_before_serving(app)
    try:
        opened = open_ports(app, services)
    except CannotListen as exc:
        raise click.ClickException(str(exc)) from None

    # Autoconfig and the client-settings pages name the bundled submission server only when
    # it runs (the web process is forked below and inherits this).
    if "submission" in services:
        app.config["SUBMISSION_SERVED"] = True
    host = app.config["BIND_HOST"]
    notes, extra_lines = public_notes(app, opened)
    for listening in opened:
        if listening.name == "web":
            click.echo(f"web: http://{host}:{listening.port}/admin/login", color=False)
        else:
            note = f"  — {notes[listening.name]}" if listening.name in notes else ""
            click.echo(f"{listening.name}: {host}:{listening.port}  {listening.description}{note}")
    for line in extra_lines:
        click.echo(line)
    for name in services:
        if name in NOT_YET_AVAILABLE:
            click.echo(f"{name}: not available in this version, skipped")

    children = build_services(app, services, opened)
    run_dir = os.path.join(app.config["INSTANCE_DIR"], "run")
    os.makedirs(run_dir, exist_ok=True)
    status_file = status_path(app.config["INSTANCE_DIR"], os.getpid())
    remove_stale_status_files(Path(run_dir))
    # Read by /healthz and the dashboard in the web process (forked from here, so it sees it).
    app.config["SERVICE_STATUS_FILE"] = str(status_file)
    with app.app_context():
        db.engine.dispose()  # no connection of this process may be shared with a child

    supervisor = Supervisor(children, status_file, echo=click.echo)
    supervisor.install_signal_handlers()
    grace = float(app.config["SHUTDOWN_GRACE_SECONDS"]) + STOP_MARGIN_SECONDS
    try:
        try:
            for line in supervisor.start():
                click.echo(line)
            click.echo("ready; Ctrl-C to stop")
            signum = supervisor.run()
            click.echo(f"{signal.Signals(signum).name} received, stopping…")
        except StopRequested as stop:
            click.echo(f"{stop} received, stopping…")
        except ChildFailed as exc:
            supervisor.stop(grace)
            raise click.ClickException(str(exc)) from None
        for listening in opened:  # new connections are refused from now on
            for sock in listening.sockets:
                sock.close()
        supervisor.stop(grace)
    finally:
        supervisor.close()
        supervisor.restore_signal_handlers()
        for listening in opened:
            for sock in listening.sockets:
                sock.close()
    click.echo("stopped")


def build_services(app: Flask, services: list[str], opened: list[Listening]) -> list[Service]:
    """The child processes for the chosen services: web, mail (every mail listener), the
    outbound queue runner and the scheduler, in that order."""
    children: list[Service] = []
    web = [sock for listening in opened if listening.name == "web" for sock in listening.sockets]
    if web:

        def run_web(context: ChildContext) -> None:
            serve_web(app, web, context)

        children.append(Service("web", "web", run_web, WORKERS["web"], web))
    # Submission runs in processes of its own (WORKERS["submission"], sharing its listening
    # sockets): it is CPU-bound (TLS, parsing, the queue's commit); the other mail listeners
    # share MAIL_WORKERS processes (every worker serves every one of them).
    for kind in ("mail", "submission"):
        group = [
            listening
            for listening in opened
            if listening.service in MAIL_SERVICES
            and (listening.service == "submission") == (kind == "submission")
        ]
        if group:
            children.append(_mail_service(app, kind, services, group))
    if "outbound" in services:

        def run_outbound(context: ChildContext) -> None:
            serve_outbound(app, context)

        children.append(Service("outbound", "outbound", run_outbound, WORKERS["outbound"]))
    if "scheduler" in services:

        def run_scheduler(context: ChildContext) -> None:
            serve_scheduler(app, context)

        children.append(Service("scheduler", "scheduler", run_scheduler, WORKERS["scheduler"]))
    return children


def _mail_service(app: Flask, kind: str, services: list[str], group: list[Listening]) -> Service:
    names = [
        name for name in MAIL_SERVICES if name in services and name in {g.service for g in group}
    ]
    sockets = {listening.name: listening.sockets for listening in group}

    def run_mail(context: ChildContext) -> None:
        serve_mail(app, names, sockets, context)

    label = f"{kind} ({', '.join(names)})"
    all_sockets = [sock for listening in group for sock in listening.sockets]
    workers = mail_workers(app) if kind == "mail" else WORKERS[kind]
    return Service(kind, label, run_mail, workers, all_sockets)


def _processes(app: Flask, setting: str, default_max: int | None = None) -> int:
    """A process count setting: as given, or one per core (at most `default_max`) when 0."""
    wanted = int(app.config.get(setting) or 0)
    if wanted > 0:
        return wanted
    cores = os.cpu_count() or 1
    return cores if default_max is None else min(cores, default_max)


def mail_workers(app: Flask) -> int:
    """How many mail processes to run: MAIL_WORKERS, or one per core when it is 0."""
    return _processes(app, "MAIL_WORKERS")


DEFAULT_WEB_WORKERS_MAX = 4
"""WEB_WORKERS = 0 means one per core up to this many: each worker's 8 threads may each hold a
database connection, and 8 per core on a big machine would pass PostgreSQL's default
max_connections (100) before the mail workers take theirs. A setting above it is taken as given."""


def web_workers(app: Flask) -> int:
    """How many web processes gunicorn runs: WEB_WORKERS, or one per core (at most
    DEFAULT_WEB_WORKERS_MAX) when it is 0."""
    return _processes(app, "WEB_WORKERS", DEFAULT_WEB_WORKERS_MAX)


# --- what each child process runs --------------------------------------------------------------


def log_to_stderr(name: str) -> None:
    """Warnings and errors of a child's libraries, marked with the service and its pid."""
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s",
    )


def settle_after_a_crash(app: Flask, context: ChildContext) -> None:
    """A child that replaces one that died settles the quota reservations it may have left
    (killed mid-delivery or mid-restore); on the first start the supervisor already did it
    (BEFORE_SERVING). Live writers are left alone."""
    if not context.restarted:
        return
    try:
        quota.settle_interrupted(app)
    except Exception:  # serving matters more; the nightly recount settles them too
        logging.getLogger(__name__).warning(
            "%s: quota settling failed", context.name, exc_info=True
        )


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM, SIGINT or SIGHUP (the supervisor sends SIGTERM)."""
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, request_stop)
    return stop


def serve_mail(
    app: Flask, names: list[str], sockets: dict[str, list[socket.socket]], context: ChildContext
) -> None:
    """The mail process: every mail listener on one event loop, on the inherited sockets."""
    log_to_stderr("mail")
    sys.setswitchinterval(MAIL_SWITCH_INTERVAL_SECONDS)
    stop = stop_on_signals()
    runner = ProtocolRunner(app, names, sockets=sockets)
    runner.start()
    context.ready()
    settle_after_a_crash(app, context)
    while not stop.wait(1.0):
        if runner.finished.is_set():
            raise RuntimeError("the protocol listeners stopped unexpectedly")
    runner.stop()


def serve_outbound(app: Flask, context: ChildContext) -> None:
    """The outbound process: the queue runner delivering queued mail (its deliveries run in
    threads; a runner killed mid-delivery leaves claims the next one takes back), and the
    webhook deliverer posting due webhook deliveries (claims with a lease, likewise)."""
    from provider.protocols.outbound.runner import QueueRunner, describe
    from provider.services.webhooks import WebhookDeliverer

    log_to_stderr("outbound")
    stop = stop_on_signals()
    runner = QueueRunner(app)
    runner.start()
    # Webhook deliveries leave from here too: a loop of seconds, like the queue's.
    deliverer = WebhookDeliverer(app)
    deliverer.start()
    context.ready([describe(app)])
    settle_after_a_crash(app, context)
    while not stop.wait(1.0):
        if runner.thread is not None and not runner.thread.is_alive():
            raise RuntimeError("the queue runner stopped unexpectedly")
        if deliverer.died():
            raise RuntimeError("the webhook deliverer stopped unexpectedly")
    deliverer.stop()
    runner.stop()


def serve_scheduler(app: Flask, context: ChildContext) -> None:
    """The scheduler process: runs the jobs while it holds the installation's lease."""
    from jobs.scheduler import build_scheduler

    log_to_stderr("scheduler")
    stop = stop_on_signals()
    scheduler = build_scheduler(app)
    scheduler.start()
    if scheduler.active:
        context.ready([f"scheduler: {len(scheduler.get_jobs())} job(s)"])
    else:
        context.ready(["scheduler: standing by (another process runs the jobs)"])
    settle_after_a_crash(app, context)
    while not stop.wait(1.0):
        pass
    scheduler.shutdown(wait=True)


def serve_web(app: Flask, sockets: list[socket.socket], context: ChildContext) -> None:
    """The web process: gunicorn's arbiter with gthread workers (epoll, not select(), so the
    number of descriptors never matters) on the inherited listening sockets."""
    from gunicorn.app.base import BaseApplication

    settle_after_a_crash(app, context)
    with app.app_context():
        db.engine.dispose()  # the arbiter forks its workers: none may inherit a connection
    # gunicorn closes the descriptors it is given, so it gets copies of ours.
    descriptors = [os.dup(sock.fileno()) for sock in sockets]
    for sock in sockets:
        sock.close()

    def when_ready(_server: Any) -> None:
        context.ready()

    options: dict[str, Any] = {
        "bind": [f"fd://{fd}" for fd in descriptors],
        "workers": web_workers(app),
        "worker_class": "gthread",
        "threads": WEB_THREADS,
        "graceful_timeout": 10,
        "keepalive": 5,
        "loglevel": "warning",
        # No X-Forwarded-* header is trusted (as waitress was set up): a proxy in front of
        # the panel must be configured explicitly.
        "forwarded_allow_ips": "",
        "control_socket_disable": True,  # no gunicornc socket in the user's home
        "when_ready": when_ready,
    }

    class WebServer(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    WebServer().run()
