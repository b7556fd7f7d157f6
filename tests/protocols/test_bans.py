"""RELIABILITY A2: failed logins from one address, over any protocol, ban it from all of them."""

from __future__ import annotations

import imaplib
import poplib
import socket

import pytest

from provider.protocols.server import ProtocolRunner
from provider.services.mail_access import BanList, guards
from tests.conftest import make_mailbox


def test_ban_after_the_limit_within_the_window_then_it_expires():
    moment = [0.0]
    bans = BanList(3, window=100, ban_seconds=50, clock=lambda: moment[0])
    assert not bans.failure("192.0.2.1") and not bans.failure("192.0.2.1")
    moment[0] = 150  # the first two are out of the window now
    assert not bans.failure("192.0.2.1")
    assert not bans.failure("192.0.2.1")
    assert bans.failure("192.0.2.1")  # three within 100 s
    assert bans.banned("192.0.2.1") and not bans.banned("192.0.2.2")
    assert bans.banned("::ffff:192.0.2.1")  # the same address, IPv4-mapped
    moment[0] = 200
    assert not bans.banned("192.0.2.1")


@pytest.fixture
def servers(app, app_config):
    app.config.update(IMAP_PORT=0, IMAPS_PORT=0, POP3_PORT=0, POP3S_PORT=0)
    app.config["LOGIN_FAILURE_DELAY_SECONDS"] = 0
    guards(app).bans = BanList(3)
    runner = ProtocolRunner(app, ["imap", "pop3"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound
    finally:
        runner.stop()


def test_a_ban_earned_on_pop3_closes_imap_and_the_admin_login(app, session, servers):
    make_mailbox(session, protocols="imap,pop3")
    guards(app).failures.base_seconds = 0
    client = poplib.POP3(*servers["pop3"], timeout=10)
    for attempt in range(2):
        client.user("alice@example.test")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_(f"wrong password {attempt}")
    client.user("alice@example.test")
    with pytest.raises(poplib.error_proto, match="Too many failed logins"):
        client.pass_("wrong password 3")
    client.close()
    # IMAP from the same address: refused at the greeting, even with the right password.
    with pytest.raises(imaplib.IMAP4.error, match="Too many failed logins"):
        imaplib.IMAP4(*servers["imap"], timeout=10)
    # POP3 again: refused before USER.
    with socket.create_connection(servers["pop3"], timeout=10) as sock:
        assert sock.makefile("rb").readline().startswith(b"-ERR [SYS/TEMP] Too many")
    # And the admin login from the same address.
    response = app.test_client().post(
        "/admin/login", data={"email": "root@example.com", "password": "whatever it is"}
    )
    assert response.status_code == 429
