"""Sending end to end through `provider serve --services submission,outbound` as processes:
smtplib submits over STARTTLS + AUTH to a local mailbox and to a remote address whose MX a real
DNS server (dnsmasq) names; both arrive, the remote copy with a DKIM signature that verifies,
nothing lands in Sent. Then a burst past the sending limit suspends the mailbox and the alert
e-mail reaches the INBOX of the domain admin, whose address is a local mailbox."""

from __future__ import annotations

import email
import json
import os
import smtplib
from collections.abc import Iterator
from contextlib import ExitStack
from email.message import EmailMessage, Message
from email.policy import SMTP, default
from pathlib import Path

import dkim as dkimpy
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.cli.test_entrypoint import environment, run
from tests.cli.test_supervisor import Served, supervised
from tests.conftest import _private_postgres_database, wait_until
from tests.dnszone import DnsZone
from tests.outbound.helpers import ScriptedMx
from tests.protocols.submission.conftest import insecure_context

# Reaches PostgreSQL through PROVIDER_TEST_DATABASE_URL itself (its own `provider serve`).
pytestmark = pytest.mark.database

__all__ = ["environment"]  # the fixture, shared with tests/cli
PROJECT = Path(__file__).resolve().parents[2]
PASSWORD = "a long passphrase"
SENDER = "alice@example.test"
LOCAL = "bob@example.test"
ADMIN = "boss@example.test"  # a domain admin whose e-mail address is a mailbox here
REMOTE = "carol@far.test"


def maildir(instance: Path, address: str, folder: str = "") -> Path:
    local, _, domain = address.partition("@")
    root = instance / "mail" / domain / local / "Maildir"
    return root / f".{folder}" if folder else root


def messages(instance: Path, address: str, folder: str = "") -> list[Message]:
    """The messages of a mailbox folder (INBOX when `folder` is empty), read from disk."""
    found = []
    for sub in ("new", "cur"):
        directory = maildir(instance, address, folder) / sub
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                found.append(email.message_from_bytes(path.read_bytes(), policy=default))
    return found


def mail(subject: str, to: str) -> bytes:
    message = EmailMessage()
    message["From"] = f"Alice <{SENDER}>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '-')}@example.test>"
    message.set_content(f"This is {subject}.\n")
    return message.as_bytes(policy=SMTP)  # CRLF: submission refuses bare LF


def login(served: Served) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", served.port("submission"), timeout=30)
    client.ehlo("client.example")
    client.starttls(context=insecure_context())
    client.ehlo("client.example")
    client.login(SENDER, PASSWORD)
    return client


@pytest.fixture
def far() -> Iterator[ScriptedMx]:
    with ScriptedMx() as mx:
        yield mx


@pytest.fixture
def instance(environment: dict[str, str], far: ScriptedMx, tmp_path: Path) -> Iterator[dict]:
    """An instance with example.test (sender, local recipient, the domain admin's mailbox),
    far.test's MX in dnsmasq pointing at `far`, low sending limits; `serve` not started yet.
    On a private PostgreSQL database when PROVIDER_TEST_DATABASE_URL names one, else SQLite."""
    with ExitStack() as stack:
        configured = os.environ.get("PROVIDER_TEST_DATABASE_URL", "")
        if configured.startswith("postgresql"):
            environment["PROVIDER_DATABASE_URL"] = stack.enter_context(
                _private_postgres_database(configured)
            )
        environment.update(
            PYTHONPATH=str(PROJECT),  # the code of this checkout, not an installed copy
            PROVIDER_SUBMISSION_PORT="0",
            PROVIDER_SUBMISSIONS_PORT="0",
            PROVIDER_OUTBOUND_MX_PORT=str(far.port),
            PROVIDER_HOSTNAME="smtp.provider.test",
            PROVIDER_LOGIN_FAILURE_DELAY_SECONDS="0",
            PROVIDER_SEND_LIMIT_PER_HOUR="4",
            PROVIDER_SEND_LIMIT_PER_DAY="100",
            PROVIDER_SEND_BURST_FACTOR="2",
        )
        assert run(environment, "init").returncode == 0
        assert run(environment, "domain", "add", "example.test").returncode == 0
        for address in (SENDER, LOCAL, ADMIN):
            created = run(
                environment,
                *("mailbox", "add", address, "--quota-gb", "8", "--protocols", "imap"),
                "--password-stdin",
                stdin=PASSWORD + "\n",
            )
            assert created.returncode == 0, created.stderr
        added = run(
            environment,
            *("admin", "add", ADMIN, "--domain", "example.test", "--password-stdin"),
            stdin="an admin passphrase\n",
        )
        assert added.returncode == 0, added.stderr
        records = json.loads(run(environment, "domain", "dns", "example.test", "--json").stdout)
        [dkim_record] = [r for r in records if r["type"] == "TXT" and "_domainkey" in r["name"]]
        zone = stack.enter_context(DnsZone(tmp_path / "dns"))
        zone.mx("far.test", "mx.far.test", 10)
        zone.a("mx.far.test", "127.0.0.1")
        zone.txt(dkim_record["name"].rstrip("."), dkim_record["value"])
        zone.reload()
        environment["PROVIDER_DNS_RESOLVER"] = zone.resolver
        yield {"env": environment, "zone": zone}


def test_submission_to_a_local_and_a_remote_recipient_through_serve(
    instance: dict, far: ScriptedMx
) -> None:
    environment, zone = instance["env"], instance["zone"]
    home = Path(environment["PROVIDER_INSTANCE_DIR"])
    with supervised(environment, "submission,outbound") as served:
        with login(served) as client:
            refused = client.sendmail(
                SENDER, [LOCAL, REMOTE], mail("hello both", f"{LOCAL}, {REMOTE}")
            )
            assert refused == {}
            client.quit()
        assert wait_until(lambda: len(far.received) == 1 and messages(home, LOCAL), timeout=60)

    [local] = messages(home, LOCAL)
    assert local["Subject"] == "hello both"
    assert "DKIM-Signature" not in local  # local mail is not signed
    [(mail_from, recipients, raw)] = far.received
    assert (mail_from, recipients) == (SENDER, [REMOTE])
    assert b"Subject: hello both" in raw and b"\r\nDKIM-Signature:" in b"\r\n" + raw

    def ask_dnsmasq(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode(), dns.rdatatype.TXT)
        answer = dns.query.udp(query, zone.host, port=zone.port, timeout=timeout)
        return b"".join(b"".join(rdata.strings) for rrset in answer.answer for rdata in rrset)

    assert dkimpy.verify(raw, dnsfunc=ask_dnsmasq)
    # Issue item 6: no server-side copy in Sent (the client APPENDs if it wants one).
    assert messages(home, SENDER, "Sent") == []
    assert maildir(home, SENDER, "Sent").is_dir()  # the folder exists; it is just empty
    assert messages(home, SENDER) == []  # and no DSN: everything was delivered


def test_a_burst_suspends_sending_and_the_alert_reaches_the_admins_mailbox(
    instance: dict, far: ScriptedMx
) -> None:
    environment = instance["env"]
    home = Path(environment["PROVIDER_INSTANCE_DIR"])
    with supervised(environment, "submission,outbound") as served:
        with login(served) as client:
            first = [f"r{n}@far.test" for n in range(2)]
            assert client.sendmail(SENDER, first, mail("before", "undisclosed-recipients:;")) == {}
            client.mail(SENDER)
            replies = [client.rcpt(f"r{n}@far.test") for n in range(2, 8)]
            # Limit 4 an hour: 2 sent + 2 more accepted, then 451 until sent + pending + refused
            # reaches 4 x 2 = 8, where that attempt suspends sending.
            assert [code for code, _text in replies] == [250] * 2 + [451] * 3 + [550]
            assert b"sending limit reached: 4 recipients per hour" in replies[2][1]
            assert replies[5][1].startswith(b"5.7.1 sending suspended")
            # The message of that transaction was never accepted: it is refused and nothing leaves.
            assert client.data(mail("burst", "undisclosed-recipients:;"))[0] == 550
            assert client.mail(SENDER)[0] == 550  # nor anything later
            client.quit()

        def alerted() -> list[Message]:
            return [m for m in messages(home, ADMIN) if "suspended" in str(m["Subject"])]

        assert wait_until(lambda: len(alerted()) == 1 and len(far.received) == 1, timeout=60)
    [alert] = alerted()
    assert SENDER in alert.get_content()
    assert alert["Auto-Submitted"]
    assert alert["Subject"] == f"Sending suspended for {SENDER}"
    [(_sender, delivered, _raw)] = far.received  # the message before the burst, only
    assert sorted(delivered) == ["r0@far.test", "r1@far.test"]
    shown = json.loads(run(environment, "mailbox", "show", SENDER, "--json").stdout)
    assert shown["sending"]["suspended"] is True
