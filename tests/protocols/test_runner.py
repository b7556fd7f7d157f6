"""The protocol runner: bound ports, a port in use, and a shutdown that lets deliveries finish."""

from __future__ import annotations

import socket
import threading

import pytest

from provider.protocols.server import ProtocolRunner
from provider.services import delivery
from tests.conftest import make_mailbox, wait_until
from tests.protocols.conftest import RawClient


def test_port_in_use_is_reported_by_start(app, app_config):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app.config["LMTP_PORT"] = taken.getsockname()[1]
        runner = ProtocolRunner(app, ["lmtp"])
        with pytest.raises(OSError):
            runner.start()


def test_shutdown_waits_for_a_delivery_in_progress(app, session, monkeypatch):
    make_mailbox(session, "alice@example.test")
    inside, release = threading.Event(), threading.Event()
    real_store = delivery.store_message

    def slow_store(*args, **kwargs):
        inside.set()
        assert release.wait(30)
        return real_store(*args, **kwargs)

    monkeypatch.setattr(delivery, "store_message", slow_store)
    runner = ProtocolRunner(app, ["lmtp"])
    [bound] = runner.start()
    replies: list[tuple[int, str]] = []

    def transaction() -> None:
        with RawClient((bound.host, bound.port)) as raw:
            raw.reply()
            raw.command("LHLO mta.test")
            raw.command("MAIL FROM:<s@outside.test>")
            raw.command("RCPT TO:<alice@example.test>")
            raw.command("DATA")
            raw.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
            replies.append(raw.reply())

    client = threading.Thread(target=transaction)
    client.start()
    assert inside.wait(30)
    stopper = threading.Thread(target=runner.stop)
    stopper.start()

    # The listener stops accepting at once, while the delivery is still being written.
    def refused() -> bool:
        try:
            socket.create_connection((bound.host, bound.port), timeout=1).close()
        except OSError:
            return True
        return False

    assert wait_until(refused, timeout=10)
    assert stopper.is_alive()
    release.set()
    client.join(30)
    stopper.join(30)
    assert not stopper.is_alive()
    assert replies and replies[0][0] == 250
