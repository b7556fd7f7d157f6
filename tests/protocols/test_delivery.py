"""LMTP and inbound SMTP on real sockets: verdicts per recipient, quota, headers, safety."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import smtplib
import ssl
import threading
from multiprocessing.connection import Connection

import pytest
from sqlalchemy import func, select

from provider.mailstore import Maildir
from provider.models import Mailbox, QuotaReservation
from provider.services import delivery, provisioning, quota
from provider.services.storage import mail_store
from tests.conftest import TEST_ACTOR, make_admin, make_domain, make_mailbox
from tests.protocols.conftest import RawClient


def message(subject: str = "Hello", body: str = "Hi there.\r\n", size: int = 0) -> bytes:
    text = f"From: sender@outside.test\r\nTo: someone\r\nSubject: {subject}\r\n\r\n{body}"
    while len(text) < size:  # filler in 78-character lines, as real mail has
        text += "x" * min(76, max(0, size - len(text) - 2)) + "\r\n"
    return text.encode()


def inbox(address: str) -> list[bytes]:
    folder = mail_store().open(address).folder("INBOX")
    return [folder.read(info.uid) for info in folder.messages()]


def usage(session, address: str) -> int:
    session.expire_all()
    return session.scalar(select(Mailbox.used_bytes).where(Mailbox.address == address))


def disk_bytes(address: str) -> int:
    return mail_store().open(address).usage_bytes()


def set_quota_bytes(session, address: str, quota_bytes: int, used_bytes: int = 0) -> None:
    mailbox = provisioning.get_mailbox(session, address)
    mailbox.quota_bytes = quota_bytes
    mailbox.used_bytes = used_bytes
    session.commit()


# --- SMTP ----------------------------------------------------------------------------------


def test_smtp_delivers_with_trace_headers_and_counts_usage(session, listeners):
    make_mailbox(session, "alice@example.test")
    with smtplib.SMTP(*listeners.smtp) as client:
        refused = client.sendmail("sender@outside.test", ["Alice@Example.test"], message())
    assert refused == {}
    [stored] = inbox("alice@example.test")
    assert stored.startswith(
        b"Return-Path: <sender@outside.test>\r\nDelivered-To: alice@example.test\r\n"
    )
    assert (
        b"Received: from " in stored and b"by mx.provider.test (provider) with ESMTP id " in stored
    )
    assert b"for <Alice@Example.test>;" in stored
    assert stored.endswith(message())
    assert usage(session, "alice@example.test") == len(stored) == disk_bytes("alice@example.test")


def test_smtp_resolves_aliases_and_plus_addresses(session, listeners):
    alice = make_mailbox(session, "alice@example.test")
    provisioning.create_alias(session, "info@example.test", alice, actor=TEST_ACTOR)
    session.commit()
    with smtplib.SMTP(*listeners.smtp) as client:
        client.sendmail(
            "s@outside.test", ["INFO@example.test", "alice+lists@example.test"], message()
        )
    stored = inbox("alice@example.test")
    assert len(stored) == 2
    assert all(b"Delivered-To: alice@example.test\r\n" in m for m in stored)


@pytest.mark.parametrize(
    ("recipient", "code", "enhanced"),
    [
        ("nobody@example.test", 550, "5.1.1"),
        ("someone@elsewhere.test", 550, "5.7.1"),
        ("not-an-address", 550, "5.1.1"),
    ],
)
def test_smtp_refuses_unknown_and_foreign_recipients(session, listeners, recipient, code, enhanced):
    make_mailbox(session, "alice@example.test")
    with RawClient(listeners.smtp) as raw:
        assert raw.reply()[0] == 220
        assert raw.command("EHLO client.test")[0] == 250
        assert raw.command("MAIL FROM:<s@outside.test>")[0] == 250
        reply_code, text = raw.command(f"RCPT TO:<{recipient}>")
    assert reply_code == code and text.startswith(enhanced)


def test_suspended_mailbox_is_refused_and_expired_trial_still_receives(session, listeners):
    make_mailbox(session, "gone@example.test")
    make_mailbox(session, "late@example.test", plan="trial")
    provisioning.update_mailbox(
        session,
        provisioning.get_mailbox(session, "gone@example.test"),
        actor=TEST_ACTOR,
        status="suspended",
    )
    provisioning.get_mailbox(session, "late@example.test").status = "expired"
    session.commit()
    with smtplib.SMTP(*listeners.smtp) as client:
        refused = client.sendmail(
            "s@outside.test", ["gone@example.test", "late@example.test"], message()
        )
    assert refused["gone@example.test"][0] == 550 and b"5.2.1" in refused["gone@example.test"][1]
    assert len(inbox("late@example.test")) == 1 and inbox("gone@example.test") == []


def test_smtp_refuses_at_rcpt_a_declared_size_that_does_not_fit(session, listeners):
    make_mailbox(session, "full@example.test")
    make_mailbox(session, "roomy@example.test")
    body = message(size=2000)
    set_quota_bytes(session, "full@example.test", 10_000, used_bytes=10_000 - len(body) + 1)
    with smtplib.SMTP(*listeners.smtp) as client:
        refused = client.sendmail(
            "s@outside.test", ["full@example.test", "roomy@example.test"], body
        )
    assert refused["full@example.test"][0] == 552 and b"5.2.2" in refused["full@example.test"][1]
    assert inbox("full@example.test") == [] and len(inbox("roomy@example.test")) == 1
    assert usage(session, "full@example.test") == 10_000 - len(body) + 1


def test_message_over_the_size_limit_is_refused_with_5_3_4(session, listeners):
    make_mailbox(session, "alice@example.test")
    with RawClient(listeners.smtp) as raw:
        raw.reply()
        raw.command("EHLO client.test")
        code, text = raw.command(f"MAIL FROM:<s@outside.test> SIZE={2 * 1024 * 1024}")
        assert (code, text[:5]) == (552, "5.3.4")
        assert raw.command("MAIL FROM:<s@outside.test>")[0] == 250
        assert raw.command("RCPT TO:<alice@example.test>")[0] == 250
        assert raw.command("DATA")[0] == 354
        line = b"x" * 998 + b"\r\n"
        raw.send(line * 1100 + b".\r\n")
        code, text = raw.reply()
    assert (code, text[:5]) == (552, "5.3.4")
    assert inbox("alice@example.test") == []


@pytest.mark.parametrize(
    "content", [b"Subject: x\r\n\r\nbare\nLF\r\n", b"Subject: x\r\n\r\nbare\rCR\r\n"]
)
def test_bare_cr_or_lf_in_data_is_refused(session, listeners, content):
    make_mailbox(session, "alice@example.test")
    with RawClient(listeners.smtp) as raw:
        raw.reply()
        raw.command("EHLO client.test")
        raw.command("MAIL FROM:<s@outside.test>")
        raw.command("RCPT TO:<alice@example.test>")
        raw.command("DATA")
        raw.send(content + b".\r\n")
        code, text = raw.reply()
    assert code == 550 and text.startswith("5.6.0")
    assert inbox("alice@example.test") == [] and usage(session, "alice@example.test") == 0


def test_smtp_smuggling_with_lf_dot_crlf_does_not_end_data(session, listeners):
    """`\\n.\\r\\n` is not the end of DATA, so a smuggled second message never becomes one."""
    make_mailbox(session, "alice@example.test")
    smuggled = (
        b"Subject: first\r\n\r\nhello\n.\r\nMAIL FROM:<evil@outside.test>\r\n"
        b"RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nboo\r\n.\r\n"
    )
    with RawClient(listeners.smtp) as raw:
        raw.reply()
        raw.command("EHLO client.test")
        raw.command("MAIL FROM:<s@outside.test>")
        raw.command("RCPT TO:<alice@example.test>")
        raw.command("DATA")
        raw.send(smuggled)
        code, _text = raw.reply()
        assert code == 550
        assert raw.command("NOOP")[0] == 250
    assert inbox("alice@example.test") == []


def test_starttls_discards_commands_pipelined_before_the_handshake(session, listeners):
    """RELIABILITY P4: bytes after STARTTLS's CRLF must never run as if they were encrypted."""
    make_mailbox(session, "alice@example.test")
    with RawClient(listeners.smtp) as raw:
        raw.reply()
        raw.command("EHLO client.test")
        raw.send(b"STARTTLS\r\nMAIL FROM:<injected@outside.test>\r\n")
        assert raw.reply()[0] == 220
        raw.start_tls()
        raw.send(b"EHLO client.test\r\n")
        ehlo = raw.reply_lines()
        assert ehlo[0].startswith("250")
        assert not any("AUTH" in line or "STARTTLS" in line for line in ehlo)
        # The injected MAIL FROM never ran, so RCPT has no sender yet: 503.
        assert raw.command("RCPT TO:<alice@example.test>")[0] == 503


def test_smtp_with_tls_is_recorded_as_esmtps(session, listeners):
    make_mailbox(session, "alice@example.test")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(*listeners.smtp) as client:
        client.starttls(context=context)
        client.sendmail("s@outside.test", ["alice@example.test"], message())
    assert b"with ESMTPS id " in inbox("alice@example.test")[0]


# --- LMTP ----------------------------------------------------------------------------------


def lmtp_transaction(
    address, sender: str, recipients: list[str], content: bytes
) -> list[tuple[int, str]]:
    """LHLO, MAIL, RCPT…, DATA over a raw socket; return the RCPT replies then the DATA replies."""
    with RawClient(address) as raw:
        assert raw.reply()[0] == 220
        assert raw.command("LHLO mta.test")[0] == 250
        assert raw.command(f"MAIL FROM:<{sender}>")[0] == 250
        rcpt_replies = [raw.command(f"RCPT TO:<{r}>") for r in recipients]
        accepted = sum(1 for code, _ in rcpt_replies if code == 250)
        if not accepted:
            return rcpt_replies
        assert raw.command("DATA")[0] == 354
        raw.send(content + b".\r\n")
        data_replies = [raw.reply() for _ in range(accepted)]
        assert raw.command("QUIT")[0] == 221
    return rcpt_replies + data_replies


def test_lmtp_gives_each_recipient_its_own_verdict_after_data(app, session, listeners):
    """Done-when: two recipients, one 1 byte short of quota: 552 5.2.2 for it, 250 for the other."""
    app.config["QUOTA_WARNING_PERCENTS"] = ""
    make_mailbox(session, "fullx@example.test")
    make_mailbox(session, "roomy@example.test")  # same length: same trace headers, same size
    body = message(size=3000)
    lmtp_transaction(listeners.lmtp, "s@outside.test", ["roomy@example.test"], body)
    [probe] = inbox("roomy@example.test")
    stored_size = len(probe)
    set_quota_bytes(session, "fullx@example.test", 100_000, used_bytes=100_000 - stored_size + 1)
    replies = lmtp_transaction(
        listeners.lmtp, "s@outside.test", ["fullx@example.test", "roomy@example.test"], body
    )
    assert [code for code, _ in replies[:2]] == [250, 250]
    (full_code, full_text), (roomy_code, _) = replies[2:]
    assert (full_code, full_text[:5]) == (552, "5.2.2")
    assert roomy_code == 250
    assert inbox("fullx@example.test") == []
    assert usage(session, "fullx@example.test") == 100_000 - stored_size + 1
    stored = inbox("roomy@example.test")
    assert len(stored) == 2 and all(len(m) == stored_size for m in stored)
    assert stored[1].endswith(body) and b"with LMTP id" in stored[1]
    assert usage(session, "roomy@example.test") == 2 * stored_size


def test_smtplib_lmtp_with_declared_size_refuses_the_full_recipient_at_rcpt(session, listeners):
    make_mailbox(session, "fullx@example.test")
    make_mailbox(session, "roomy@example.test")
    body = message(size=3000)
    set_quota_bytes(session, "fullx@example.test", 100_000, used_bytes=100_000 - len(body) + 1)
    with smtplib.LMTP(*listeners.lmtp) as client:
        refused = client.sendmail(
            "s@outside.test", ["fullx@example.test", "roomy@example.test"], body
        )
    assert refused["fullx@example.test"][0] == 552
    assert refused["fullx@example.test"][1].startswith(b"5.2.2")
    assert inbox("fullx@example.test") == [] and len(inbox("roomy@example.test")) == 1


def test_a_full_mailbox_is_refused_at_rcpt_even_without_a_declared_size(session, listeners):
    make_mailbox(session, "full@example.test")
    set_quota_bytes(session, "full@example.test", 100_000, used_bytes=100_000)
    with RawClient(listeners.smtp) as raw:
        raw.reply()
        raw.command("EHLO client.test")
        raw.command("MAIL FROM:<s@outside.test>")
        code, text = raw.command("RCPT TO:<full@example.test>")
    assert (code, text[:5]) == (552, "5.2.2")


def test_lmtp_message_exactly_filling_the_quota_is_accepted(app, session, listeners):
    app.config["QUOTA_WARNING_PERCENTS"] = ""  # no warning message on top of the exact fill
    make_mailbox(session, "exact@example.test")
    body = message(size=1500)
    lmtp_transaction(listeners.lmtp, "s@outside.test", ["exact@example.test"], body)
    [first] = inbox("exact@example.test")
    # Room for exactly one more copy of the same size (trace headers have a fixed length).
    set_quota_bytes(session, "exact@example.test", 2 * len(first), used_bytes=len(first))
    replies = lmtp_transaction(listeners.lmtp, "s@outside.test", ["exact@example.test"], body)
    assert replies[-1][0] == 250
    assert usage(session, "exact@example.test") == 2 * len(first)
    assert len(inbox("exact@example.test")) == 2


def test_lmtp_stores_one_copy_per_recipient(session, listeners):
    for name in ("a", "b", "c"):
        make_mailbox(session, f"{name}@example.test")
    replies = lmtp_transaction(
        listeners.lmtp,
        "s@outside.test",
        ["a@example.test", "b@example.test", "c@example.test"],
        message(),
    )
    assert [code for code, _ in replies] == [250] * 6
    for name in ("a", "b", "c"):
        [stored] = inbox(f"{name}@example.test")
        assert f"Delivered-To: {name}@example.test".encode() in stored


def test_internal_error_answers_451_and_leaves_nothing(session, listeners, monkeypatch):
    make_mailbox(session, "alice@example.test")
    from provider.mailstore import maildir

    def broken(*_args, **_kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(maildir.Folder, "deliver", broken)
    replies = lmtp_transaction(listeners.lmtp, "s@outside.test", ["alice@example.test"], message())
    assert replies[-1][0] == 451 and replies[-1][1].startswith("4.3.0")
    monkeypatch.undo()
    assert inbox("alice@example.test") == [] and usage(session, "alice@example.test") == 0


# --- quota warnings ------------------------------------------------------------------------


def warnings_in(address: str) -> list[bytes]:
    return [m for m in inbox(address) if b"Subject: Your mailbox is " in m]


def test_quota_warnings_once_per_crossing_and_rearmed_below(session, listeners):
    make_mailbox(session, "alice@example.test")
    set_quota_bytes(session, "alice@example.test", 100_000)
    chunk = message(size=3_000)  # ~3.2 % of the quota per delivery, trace headers included

    def deliver_until(percent: int) -> None:
        while usage(session, "alice@example.test") * 100 < percent * 100_000:
            replies = lmtp_transaction(
                listeners.lmtp, "s@outside.test", ["alice@example.test"], chunk
            )
            assert replies[-1][0] == 250

    deliver_until(80)
    assert [b"80% full" in w for w in warnings_in("alice@example.test")] == [True]
    deliver_until(90)
    assert len(warnings_in("alice@example.test")) == 1
    deliver_until(95)
    assert sorted(b"95% full" in w for w in warnings_in("alice@example.test")) == [False, True]

    # Clean up below 80 %: both thresholds re-arm, and crossing 80 % again warns again.
    folder = mail_store().open("alice@example.test").folder("INBOX")
    removed = folder.expunge([info.uid for info in folder.messages()][:6])
    mailbox_id = provisioning.get_mailbox(session, "alice@example.test").id
    quota.release(session, mailbox_id, sum(info.size for info in removed))
    session.commit()
    assert usage(session, "alice@example.test") * 100 < 80 * 100_000
    deliver_until(80)
    assert sum(b"80% full" in w for w in warnings_in("alice@example.test")) == 2
    assert usage(session, "alice@example.test") == disk_bytes("alice@example.test")


# --- concurrency ---------------------------------------------------------------------------


def test_300_messages_over_10_parallel_connections(session, listeners):
    """Done-when: all arrive with distinct increasing UIDs; usage equals the bytes on disk."""
    make_mailbox(session, "busy@example.test", quota_gb=1)
    failures: list[BaseException] = []

    def sender(worker: int) -> None:
        try:
            with smtplib.SMTP(*listeners.smtp, timeout=60) as client:
                for number in range(30):
                    body = message(subject=f"w{worker} n{number}", size=20_000)
                    assert client.sendmail("s@outside.test", ["busy@example.test"], body) == {}
        except BaseException as exc:  # collected and re-raised in the test thread
            failures.append(exc)

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    infos = mail_store().open("busy@example.test").folder("INBOX").messages()
    uids = [info.uid for info in infos]
    assert len(uids) == 300 and len(set(uids)) == 300 and uids == sorted(uids)
    subjects = {f"w{w} n{n}".encode() for w in range(10) for n in range(30)}
    found = {m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in inbox("busy@example.test")}
    assert found == subjects
    assert usage(session, "busy@example.test") == disk_bytes("busy@example.test")
    assert disk_bytes("busy@example.test") == sum(info.size for info in infos)


# --- kill -9 in the middle of a delivery (issue 11, item 11) -------------------------------


def _lmtp_server_killed_mid_delivery(config: dict, stall_at: str, channel: Connection) -> None:
    """Child process: the real LMTP listener on port 0, stalling (forever) at `stall_at` of the
    first delivery, so the parent can SIGKILL it there."""
    from provider import create_app
    from provider.mailstore import diskio
    from provider.protocols.server import ProtocolRunner

    def stall() -> None:
        channel.send("stalled")
        threading.Event().wait()

    if stall_at == "writing the message":
        real_write = diskio.write_all

        def half_then_stall(fd: int, data: bytes) -> None:
            real_write(fd, data[: len(data) // 2])
            stall()

        diskio.write_all = half_then_stall
    else:  # "message on disk, reservation not confirmed"
        quota.QuotaHold.confirm = lambda self: stall()
    app = create_app(config)
    runner = ProtocolRunner(app, ["lmtp"])
    [bound] = runner.start()
    channel.send(bound.port)
    threading.Event().wait()


@pytest.mark.parametrize(
    ("stall_at", "landed"),
    [("writing the message", False), ("message on disk, reservation not confirmed", True)],
)
def test_delivery_killed_mid_write_is_settled_at_start(
    app, app_config, session, listeners, stall_at, landed
):
    make_mailbox(session, "alice@example.test")
    with smtplib.LMTP(*listeners.lmtp) as client:
        client.sendmail("s@outside.test", ["alice@example.test"], message("before"))
    before = disk_bytes("alice@example.test")
    doomed = message("doomed", size=2000)
    # Room for one message of this size (with its trace headers) besides the doomed one if
    # it lands, not for two.
    room = 2600 + (2300 if landed else 0)
    set_quota_bytes(session, "alice@example.test", before + room, used_bytes=before)

    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("spawn").Process(
        target=_lmtp_server_killed_mid_delivery, args=(app_config, stall_at, child_end)
    )
    child.start()
    try:
        assert parent_end.poll(60), "the child LMTP server did not start"
        port = parent_end.recv()
        with RawClient(("127.0.0.1", port)) as raw:
            raw.reply()
            raw.command("LHLO mta.test")
            raw.command("MAIL FROM:<s@outside.test>")
            assert raw.command("RCPT TO:<alice@example.test>")[0] == 250
            assert raw.command("DATA")[0] == 354
            raw.send(doomed + b".\r\n")
            assert parent_end.poll(60) and parent_end.recv() == "stalled"
            os.kill(child.pid, signal.SIGKILL)
            child.join(30)
            with pytest.raises(ConnectionError):
                raw.reply()
    finally:
        if child.is_alive():
            child.kill()
            child.join(30)
    assert child.exitcode == -signal.SIGKILL

    # The defect: the reservation outlived its process, so the mailbox counts more than it
    # holds (when the message never landed) and the next message near the quota is refused.
    on_disk = disk_bytes("alice@example.test")
    assert (on_disk > before) is landed
    if not landed:
        assert usage(session, "alice@example.test") > on_disk
        # (smtplib declares SIZE, so the refusal comes at RCPT.)
        with (
            smtplib.LMTP(*listeners.lmtp) as client,
            pytest.raises(smtplib.SMTPRecipientsRefused) as full,
        ):
            client.sendmail("s@outside.test", ["alice@example.test"], message(size=2000))
        assert full.value.recipients["alice@example.test"][0] == 552

    assert quota.settle_interrupted(app) == 1
    assert usage(session, "alice@example.test") == on_disk
    assert session.scalar(select(func.count()).select_from(QuotaReservation)) == 0
    assert quota.settle_interrupted(app) == 0  # nothing left: a cheap no-op at every start

    with smtplib.LMTP(*listeners.lmtp) as client:
        assert client.sendmail("s@outside.test", ["alice@example.test"], message(size=2000)) == {}
    assert usage(session, "alice@example.test") == disk_bytes("alice@example.test")


def test_settling_leaves_the_reservations_of_live_writers_alone(app, session):
    mailbox = make_mailbox(session, "alice@example.test")
    held = quota.hold(session, mailbox.id, 500)
    assert held is not None
    assert quota.settle_interrupted(app) == 0
    assert usage(session, "alice@example.test") == 500
    held.cancel()
    assert usage(session, "alice@example.test") == 0
    assert session.scalar(select(func.count()).select_from(QuotaReservation)) == 0


# --- postmaster@ (RFC 5321 §4.5.1; issue 11, item 10) -----------------------------------------


def send_smtp(listeners, recipients: list[str], content: bytes) -> dict:
    with smtplib.SMTP(*listeners.smtp) as client:
        return client.sendmail("", recipients, content)  # bounces come with a null sender


def send_lmtp(listeners, recipients: list[str], content: bytes) -> dict:
    with smtplib.LMTP(*listeners.lmtp) as client:
        return client.sendmail("", recipients, content)


SENDERS = {"smtp": send_smtp, "lmtp": send_lmtp}


@pytest.mark.parametrize("protocol", SENDERS)
def test_postmaster_without_a_mailbox_reaches_the_domain_admins(session, listeners, protocol):
    domain = make_domain(session, "example.test")
    make_mailbox(session, "ops@example.test")
    make_mailbox(session, "other@example.test")
    make_admin(session, "ops@example.test", superadmin=False, domains=[domain])
    make_admin(session, "root@outside.test")  # a superadmin without a mailbox here
    refused = SENDERS[protocol](listeners, ["PostMaster@Example.TEST"], message("bounce"))
    assert refused == {}
    [stored] = inbox("ops@example.test")
    assert b"for <PostMaster@Example.TEST>;" in stored and stored.endswith(message("bounce"))
    assert inbox("other@example.test") == []
    assert usage(session, "ops@example.test") == len(stored)


@pytest.mark.parametrize("protocol", SENDERS)
def test_postmaster_goes_to_the_domains_configured_addresses(session, listeners, protocol):
    domain = make_domain(session, "example.test")
    make_mailbox(session, "admin@example.test")
    helpdesk = make_mailbox(session, "helpdesk@other.test")
    provisioning.create_alias(session, "abuse@other.test", helpdesk, actor=TEST_ACTOR)
    make_mailbox(session, "noc@example.test")
    make_admin(session, "admin@example.test", superadmin=False, domains=[domain])
    provisioning.set_domain_postmaster(
        session, domain, "noc@example.test, ABUSE@other.test", actor=TEST_ACTOR
    )
    session.commit()
    assert SENDERS[protocol](listeners, ["postmaster@example.test"], message("report")) == {}
    assert len(inbox("noc@example.test")) == 1
    assert len(inbox("helpdesk@other.test")) == 1
    assert inbox("admin@example.test") == []  # the setting replaces the default


@pytest.mark.parametrize("protocol", SENDERS)
def test_an_existing_postmaster_mailbox_or_alias_wins(session, listeners, protocol):
    domain = make_domain(session, "example.test")
    make_mailbox(session, "postmaster@example.test")
    make_mailbox(session, "noc@example.test")
    provisioning.set_domain_postmaster(session, domain, "noc@example.test", actor=TEST_ACTOR)
    owner = make_mailbox(session, "owner@alias.test")
    provisioning.create_alias(session, "postmaster@alias.test", owner, actor=TEST_ACTOR)
    session.commit()
    for recipient in ("postmaster@example.test", "postmaster@alias.test"):
        assert SENDERS[protocol](listeners, [recipient], message()) == {}
    assert len(inbox("postmaster@example.test")) == 1
    assert len(inbox("owner@alias.test")) == 1
    assert inbox("noc@example.test") == []


def test_a_suspended_postmaster_mailbox_does_not_refuse_postmaster_mail(session, listeners):
    domain = make_domain(session, "example.test")
    postmaster = make_mailbox(session, "postmaster@example.test")
    postmaster.status = "suspended"
    make_mailbox(session, "noc@example.test")
    provisioning.set_domain_postmaster(session, domain, "noc@example.test", actor=TEST_ACTOR)
    session.commit()
    assert send_lmtp(listeners, ["postmaster@example.test"], message()) == {}
    assert len(inbox("noc@example.test")) == 1


@pytest.mark.parametrize("protocol", SENDERS)
def test_postmaster_of_a_domain_we_do_not_host_is_still_refused(session, listeners, protocol):
    make_mailbox(session, "ops@example.test")
    make_admin(session, "ops@example.test")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        SENDERS[protocol](listeners, ["postmaster@elsewhere.test"], message())
    code, text = refused.value.recipients["postmaster@elsewhere.test"]
    assert (code, text[:5]) == (550, b"5.7.1")
    assert inbox("ops@example.test") == []


def test_postmaster_falls_back_to_the_first_superadmin_with_a_mailbox_here(session, listeners):
    domain = make_domain(session, "example.test")
    make_admin(session, "domainadmin@outside.test", superadmin=False, domains=[domain])
    make_admin(session, "first@outside.test")
    make_mailbox(session, "second@ops.test")
    make_mailbox(session, "third@ops.test")
    make_admin(session, "second@ops.test")
    make_admin(session, "third@ops.test")
    assert send_smtp(listeners, ["postmaster@example.test"], message()) == {}
    assert len(inbox("second@ops.test")) == 1
    assert inbox("third@ops.test") == []


def spooled(app, spool: str) -> list[bytes]:
    folder = Maildir(delivery.postmaster_spool_path(spool)).folder("INBOX")
    return [folder.read(info.uid) for info in folder.messages()]


@pytest.mark.parametrize("protocol", SENDERS)
def test_postmaster_with_nobody_to_receive_it_is_kept_in_the_spool(
    app, session, listeners, protocol
):
    make_domain(session, "example.test")
    make_admin(session, "root@outside.test")
    assert SENDERS[protocol](listeners, ["postmaster@example.test"], message("kept")) == {}
    [stored] = spooled(app, "example.test")
    assert b"Delivered-To: postmaster@example.test\r\n" in stored
    assert stored.endswith(message("kept"))


def test_bare_postmaster_is_accepted_for_the_server_itself(app, session, listeners):
    """RFC 5321 §4.1.1.3: RCPT TO:<Postmaster> without a domain must be accepted."""
    make_mailbox(session, "root@ops.test")
    make_admin(session, "root@ops.test")
    with RawClient(listeners.smtp) as raw:
        raw.reply()
        raw.command("EHLO client.test")
        assert raw.command("MAIL FROM:<>")[0] == 250
        assert raw.command("RCPT TO:<Postmaster>")[0] == 250
        assert raw.command("DATA")[0] == 354
        raw.send(message("to the server") + b".\r\n")
        assert raw.reply()[0] == 250
    assert len(inbox("root@ops.test")) == 1


def test_postmaster_target_over_quota_keeps_the_mail_in_the_spool(app, session, listeners):
    domain = make_domain(session, "example.test")
    make_mailbox(session, "noc@example.test")
    provisioning.set_domain_postmaster(session, domain, "noc@example.test", actor=TEST_ACTOR)
    session.commit()
    set_quota_bytes(session, "noc@example.test", 1000, used_bytes=1000)
    assert send_lmtp(listeners, ["postmaster@example.test"], message("full")) == {}
    assert inbox("noc@example.test") == []
    assert len(spooled(app, "example.test")) == 1
    assert usage(session, "noc@example.test") == 1000


def test_a_full_postmaster_spool_answers_temporary_failure(app, session, listeners, monkeypatch):
    make_domain(session, "example.test")
    monkeypatch.setattr(delivery, "POSTMASTER_SPOOL_MAX_BYTES", 1000)
    assert send_lmtp(listeners, ["postmaster@example.test"], message(size=400)) == {}
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send_lmtp(listeners, ["postmaster@example.test"], message(size=400))
    code, text = refused.value.recipients["postmaster@example.test"]
    assert (code, text) == (
        452,
        b"4.3.1 the postmaster mailbox of example.test is full; try again later",
    )
    assert len(spooled(app, "example.test")) == 1


def test_cli_domain_set_postmaster_routes_postmaster_mail(session, runner, listeners):
    make_domain(session, "example.test")
    make_mailbox(session, "noc@example.test")
    refused = runner.invoke(
        args=["domain", "set", "example.test", "--postmaster", "boss@outside.test"]
    )
    assert refused.exit_code == 1
    assert "boss@outside.test is not a mailbox or alias hosted here" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    result = runner.invoke(
        args=["domain", "set", "example.test", "--postmaster", "NOC@example.test", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["postmaster"] == ["noc@example.test"]
    assert send_smtp(listeners, ["postmaster@example.test"], message()) == {}
    assert len(inbox("noc@example.test")) == 1
    reset = runner.invoke(args=["domain", "set", "example.test", "--postmaster", "", "--json"])
    assert json.loads(reset.output)["postmaster"] == []


def test_deliveries_are_counted_per_day_for_the_dashboard(app, session, listeners):
    """Each recipient delivered counts once (the dashboard's "delivered per day")."""
    from provider.models import DailyStat
    from provider.services import clock, daily_stats

    make_mailbox(session, "alice@example.test")
    make_mailbox(session, "bob@example.test")
    with smtplib.SMTP(*listeners.smtp) as client:
        client.sendmail("s@outside.test", ["alice@example.test", "bob@example.test"], message())
        client.sendmail("s@outside.test", ["alice@example.test"], message())
        refused = client.sendmail(
            "s@outside.test", ["alice@example.test", "nobody@example.test"], message()
        )
        assert list(refused) == ["nobody@example.test"]
    daily_stats.flush()
    session.expire_all()
    assert session.get(DailyStat, clock.now().date()).deliveries == 4
