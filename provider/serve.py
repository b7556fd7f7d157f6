"""`provider serve`: run the web app and the mail services in one process until a signal."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import click
from flask import Flask
from waitress.server import create_server

from provider.protocols.server import LISTENERS, ProtocolRunner

KNOWN_SERVICES = ("web", "imap", "pop3", "lmtp", "smtp", "scheduler")
# Services that later parts of the product add; asked for now, they are reported and skipped.
NOT_YET_AVAILABLE: frozenset[str] = frozenset()


def run(app: Flask, services: list[str], stop: threading.Event | None = None) -> None:
    """Start the chosen services, print where they listen, and block until SIGINT/SIGTERM."""
    stop = stop or threading.Event()
    stoppers: list[tuple[str, object]] = []

    if threading.current_thread() is threading.main_thread():

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            click.echo(f"{signal.Signals(signum).name} received, stopping…")
            stop.set()

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    threads: list[threading.Thread] = []
    try:
        if "web" in services:
            server = create_server(
                app,
                host=app.config["BIND_HOST"],
                port=int(app.config["WEB_PORT"]),
                threads=8,
                ident="provider",
                clear_untrusted_proxy_headers=True,
            )
            web_thread = threading.Thread(target=server.run, name="web", daemon=True)
            web_thread.start()
            threads.append(web_thread)
            stoppers.append(("web", server))
            host = app.config["BIND_HOST"]
            click.echo(f"web: http://{host}:{server.effective_port}/admin/login", color=False)

        if "scheduler" in services:
            from jobs.scheduler import build_scheduler

            scheduler = build_scheduler(app)
            scheduler.start()
            stoppers.append(("scheduler", scheduler))
            if scheduler.active:
                click.echo(f"scheduler: {len(scheduler.get_jobs())} job(s)")
            else:
                click.echo("scheduler: standing by (another process runs the jobs)")

        protocol_names = [name for name in services if name in LISTENERS]
        if protocol_names:
            runner = ProtocolRunner(app, protocol_names)
            for bound in runner.start():
                click.echo(f"{bound.name}: {bound.host}:{bound.port}  {bound.description}")
            stoppers.append(("protocols", runner))

        for name in services:
            if name in NOT_YET_AVAILABLE:
                click.echo(f"{name}: not available in this version, skipped")

        click.echo("ready; Ctrl-C to stop")
        stop.wait()
    finally:
        for name, component in reversed(stoppers):
            if name == "web":
                component.close()  # type: ignore[attr-defined]
            elif name == "scheduler":
                component.shutdown(wait=True)  # type: ignore[attr-defined]
            elif name == "protocols":
                component.stop()  # type: ignore[attr-defined]
        for thread in threads:
            thread.join(timeout=10)
        click.echo("stopped")
