"""Sieve at delivery over real LMTP/SMTP sockets, with IMAP IDLE and the queue runner watching."""

from __future__ import annotations

import imaplib
import os
import smtplib
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from provider.mailstore import Maildir
from provider.models import Mailbox, OutboundRecipient
from provider.protocols.outbound.runner import QueueRunner
from provider.protocols.server import ProtocolRunner
from provider.services import clock, outbound, sieve_scripts
from provider.services.storage import mail_store
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.protocols.conftest import RawClient

ALICE = "alice@example.test"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(IMAP_PORT=0, IMAPS_PORT=0, LOGIN_FAILURE_DELAY_SECONDS=0)
    return app_config


@pytest.fixture
def servers(app: Flask) -> Iterator[dict[str, tuple[str, int]]]:
    runner = ProtocolRunner(app, ["lmtp", "smtp", "imap"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound
    finally:
        runner.stop()


def message(subject: str = "Hello", extra: str = "", sender: str = "bob@outside.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n{extra}"
        f"Message-ID: <{subject.replace(' ', '.')}@outside.test>\r\n\r\nHi.\r\n"
    ).encode()


def put(runner, source: str | bytes, name: str = "rules", address: str = ALICE) -> None:
    data = source.encode() if isinstance(source, str) else source
    result = runner.invoke(args=["sieve", "put", address, name, "-", "--activate"], input=data)
    assert result.exit_code == 0, result.output


def lmtp(address: tuple[str, int], recipients: list[str], data: bytes) -> list[tuple[int, str]]:
    """One LMTP transaction; the per-recipient DATA replies."""
    with RawClient(address) as client:
        client.reply()
        client.command("LHLO test.example")
        assert client.command("MAIL FROM:<bob@outside.test>")[0] == 250
        for recipient in recipients:
            assert client.command(f"RCPT TO:<{recipient}>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(data + b".\r\n")
        return [client.reply() for _ in recipients]


def folder_messages(name: str, address: str = ALICE) -> list[tuple[bytes, tuple[str, ...]]]:
    folder = mail_store().open(address).folder(name)
    return [(folder.read(info.uid), tuple(sorted(info.flags))) for info in folder.messages()]


def usage(session, address: str = ALICE) -> int:
    session.expire_all()
    return session.scalar(select(Mailbox.used_bytes).where(Mailbox.address == address))


def error_log(address: str = ALICE) -> str:
    path = sieve_scripts.home_of(mail_store(), address) / sieve_scripts.ERROR_LOG
    return path.read_text() if path.exists() else ""


LIST_RULES = r"""require ["fileinto", "imap4flags"];
if header :contains "List-Id" "dev.lists.example" {
    fileinto :flags ["\\Flagged", "$list"] "Lists/Dev";
    stop;
}
"""


def test_a_list_message_is_filed_and_flagged_and_idle_on_the_folder_sees_it(
    runner, session, servers
):
    make_mailbox(session, ALICE)
    mail_store().open(ALICE).create_folder("Lists/Dev")
    put(runner, LIST_RULES)
    imap = imaplib.IMAP4(*servers["imap"])
    try:
        imap.login(ALICE, MAILBOX_PASSWORD)
        assert imap.select('"Lists/Dev"')[0] == "OK"
        tag = imap._new_tag().decode()
        imap.send(f"{tag} IDLE\r\n".encode())
        assert imap.readline().startswith(b"+")
        imap.sock.settimeout(1.0)  # the bound: seen within a second
        started = time.monotonic()
        replies = lmtp(
            servers["lmtp"], [ALICE], message("digest", "List-Id: Dev <dev.lists.example>\r\n")
        )
        assert replies[0][0] == 250, replies
        seen: list[bytes] = []
        try:
            # A new keyword comes first as an untagged FLAGS; then the message.
            while b"* 1 EXISTS" not in seen:
                seen.append(imap.readline().strip())
        except TimeoutError:
            pytest.fail(f"IDLE on the folder did not see the message within a second: {seen}")
        assert time.monotonic() - started < 1.5
        imap.sock.settimeout(10)
        imap.send(b"DONE\r\n")
        while not imap.readline().startswith(tag.encode()):
            pass
        typ, data = imap.fetch("1", "(FLAGS)")
        assert typ == "OK" and b"\\Flagged" in data[0] and b"$list" in data[0], data
    finally:
        imap.logout()
    assert folder_messages("INBOX") == []
    # Anything else still lands in INBOX (implicit keep).
    assert lmtp(servers["lmtp"], [ALICE], message("personal"))[0][0] == 250
    [(raw, flags)] = folder_messages("INBOX")
    assert b"Subject: personal" in raw and flags == ()
    assert usage(session) == Maildir(mail_store().path_for(ALICE)).usage_bytes()


def test_fileinto_create_makes_the_folder_and_a_missing_folder_falls_back_to_inbox(
    runner, session, servers
):
    make_mailbox(session, ALICE)
    put(
        runner,
        'require ["fileinto", "mailbox"];\n'
        'if header :is "Subject" "made" { fileinto :create "Made/Here"; }\n'
        'if header :is "Subject" "missing" { fileinto "Nowhere"; }\n',
    )
    assert lmtp(servers["lmtp"], [ALICE], message("made"))[0][0] == 250
    assert lmtp(servers["lmtp"], [ALICE], message("missing"))[0][0] == 250
    assert [b"Subject: made" in raw for raw, _ in folder_messages("Made/Here")] == [True]
    [(raw, _)] = folder_messages("INBOX")
    assert b"Subject: missing" in raw
    assert "fileinto 'Nowhere'" in error_log() and "kept in INBOX" in error_log()


def test_envelope_to_is_the_rcpt_address_with_its_detail_and_alias(runner, session, servers):
    """The script's envelope "to" is what the sender's MTA gave at RCPT (plus tag, alias), as
    in Pigeonhole, not the mailbox's own address."""
    mailbox = make_mailbox(session, ALICE)
    assert runner.invoke(args=["alias", "add", "sales@example.test", ALICE]).exit_code == 0
    put(
        runner,
        'require ["fileinto", "mailbox", "envelope", "subaddress"];\n'
        'if envelope :detail "to" "shopping" { fileinto :create "Shopping"; stop; }\n'
        'if envelope :localpart "to" "sales" { fileinto :create "Sales"; stop; }\n',
    )
    assert lmtp(servers["lmtp"], ["Alice+Shopping@example.test"], message("tagged"))[0][0] == 250
    assert lmtp(servers["lmtp"], ["sales@example.test"], message("to the alias"))[0][0] == 250
    assert lmtp(servers["lmtp"], [ALICE], message("plain"))[0][0] == 250
    assert [b"Subject: tagged" in raw for raw, _ in folder_messages("Shopping")] == [True]
    assert [b"Subject: to the alias" in raw for raw, _ in folder_messages("Sales")] == [True]
    assert [b"Subject: plain" in raw for raw, _ in folder_messages("INBOX")] == [True]
    assert mailbox.address == ALICE


def test_mailboxexists_and_specialuse_exists_ask_the_recipients_store(runner, session, servers):
    make_mailbox(session, ALICE)  # made with the special-use folders (Junk among them)
    put(
        runner,
        'require ["fileinto", "mailbox", "special-use"];\n'
        'if allof (mailboxexists "Junk", specialuse_exists "Junk" "\\\\Junk",\n'
        '          not mailboxexists "Nowhere") { fileinto "Junk"; }\n',
    )
    assert lmtp(servers["lmtp"], [ALICE], message("probe"))[0][0] == 250
    assert [b"Subject: probe" in raw for raw, _ in folder_messages("Junk")] == [True]
    assert folder_messages("INBOX") == []


def test_setflag_marks_the_kept_message_read(runner, session, servers):
    make_mailbox(session, ALICE)
    put(runner, 'require "imap4flags";\nsetflag ["\\\\Seen", "\\\\Recent", "bad(kw"];\n')
    with smtplib.SMTP(*servers["smtp"]) as client:
        client.sendmail("bob@outside.test", [ALICE], message("read"))
    [(_, flags)] = folder_messages("INBOX")
    assert flags == ("\\Seen",)
    log = error_log()
    assert "flag '\\\\Recent' cannot be set on delivery" in log
    assert "bad(kw" in log


def test_discard_stores_nothing_and_is_still_a_delivery(runner, session, servers):
    make_mailbox(session, ALICE)
    put(runner, 'if address :is "from" "spam@outside.test" { discard; }\n')
    replies = lmtp(servers["lmtp"], [ALICE], message("junk", sender="spam@outside.test"))
    assert replies[0][0] == 250
    assert folder_messages("INBOX") == [] and usage(session) == 0


def test_reject_refuses_that_recipient_only_at_lmtp_and_at_smtp(runner, session, servers):
    make_mailbox(session, ALICE)
    make_mailbox(session, "carol@example.test")
    put(
        runner,
        'require "reject";\nif header :contains "Subject" "offer" {\n'
        "  reject text:\r\nI do not want\r\nyour offers\x01.\r\n.\r\n;\n}\n",
    )
    replies = lmtp(servers["lmtp"], [ALICE, "carol@example.test"], message("great offer"))
    assert replies[0] == (550, "5.7.1 I do not want your offers .")
    assert replies[1][0] == 250
    assert folder_messages("INBOX") == [] and usage(session) == 0
    assert len(folder_messages("INBOX", "carol@example.test")) == 1
    with smtplib.SMTP(*servers["smtp"]) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("bob@outside.test", [ALICE], message("another offer"))
    assert refused.value.smtp_code == 550
    # Several SMTP recipients were promised at RCPT: the one that rejects keeps it instead.
    with smtplib.SMTP(*servers["smtp"]) as client:
        client.sendmail("bob@outside.test", [ALICE, "carol@example.test"], message("offer 3"))
    [(raw, _)] = folder_messages("INBOX")
    assert b"Subject: offer 3" in raw
    assert "reject (I do not want your offers .) is not possible" in error_log()


BUDGET_BUSTER = (
    'if header :contains "X-A" [' + ", ".join(f'"key{n}"' for n in range(600)) + "] { discard; }\n"
)


@pytest.mark.parametrize(
    ("source", "logged"),
    [
        ('require "reject";\nreject "one";\nreject "two";\n', "more than one reject"),
        (BUDGET_BUSTER, "more than 100000 steps"),
        ('require "fileinto";\nfileinto "INBOX"\n', "does not compile"),
        ('require "editheader";\nkeep;\n', "does not compile"),
    ],
    ids=["runtime-error", "budget", "syntax", "unsupported-extension"],
)
def test_a_failing_script_keeps_the_mail_in_inbox_and_says_why(session, servers, source, logged):
    make_mailbox(session, ALICE)
    # Written as Dovecot would have it (hand-edited, or migrated): the link and the file.
    home = sieve_scripts.home_of(mail_store(), ALICE)
    (home / "sieve").mkdir()
    (home / "sieve" / "broken.sieve").write_text(source)
    os.symlink("sieve/broken.sieve", home / ".dovecot.sieve")
    headers = "".join(f"X-A: value {n}\r\n" for n in range(200))
    assert lmtp(servers["lmtp"], [ALICE], message("keep me", headers))[0][0] == 250
    [(raw, _)] = folder_messages("INBOX")
    assert b"Subject: keep me" in raw
    assert logged in error_log() and "kept in INBOX" in error_log()
    assert usage(session) == len(raw)


def test_a_script_changed_on_disk_is_recompiled(runner, session, servers):
    make_mailbox(session, ALICE)
    put(runner, 'require "fileinto";\nfileinto "Archive";\n')
    assert lmtp(servers["lmtp"], [ALICE], message("one"))[0][0] == 250
    put(runner, 'require "fileinto";\nfileinto "Junk";\n')
    assert lmtp(servers["lmtp"], [ALICE], message("two"))[0][0] == 250
    assert len(folder_messages("Archive")) == 1 and len(folder_messages("Junk")) == 1


def test_fileinto_over_quota_is_refused_like_any_full_mailbox(runner, session, servers):
    make_mailbox(session, ALICE)
    put(runner, 'require ["fileinto", "copy"];\nfileinto :copy "Archive";\n')
    mailbox = session.scalar(select(Mailbox).where(Mailbox.address == ALICE))
    mailbox.quota_bytes = 1000
    session.commit()
    # Two copies (Archive, and INBOX by implicit keep) of ~400 bytes fit; the next do not.
    assert lmtp(servers["lmtp"], [ALICE], message("first"))[0][0] == 250
    assert len(folder_messages("Archive")) == 1 and len(folder_messages("INBOX")) == 1
    replies = lmtp(servers["lmtp"], [ALICE], message("second"))
    assert replies[0][0] == 552, replies
    stored = len(folder_messages("Archive")) + len(folder_messages("INBOX"))
    assert stored in (2, 3)  # a copy that fits is kept; none is lost silently
    assert usage(session) == Maildir(mail_store().path_for(ALICE)).usage_bytes() <= 1000


def test_a_pop3_only_mailbox_script_files_nothing_but_keeps(session, servers):
    make_mailbox(session, "pop@example.test", protocols="pop3")
    home = sieve_scripts.home_of(mail_store(), "pop@example.test")
    (home / "sieve").mkdir()
    (home / "sieve" / "old.sieve").write_text('require "fileinto";\nfileinto "Archive";\n')
    os.symlink("sieve/old.sieve", home / ".dovecot.sieve")
    assert lmtp(servers["lmtp"], ["pop@example.test"], message("pop"))[0][0] == 250
    assert len(folder_messages("INBOX", "pop@example.test")) == 1
    assert "needs IMAP" in error_log("pop@example.test")


def test_a_reject_from_the_queue_becomes_a_bounce(app: Flask, runner, session):
    sender = make_mailbox(session, "bob@example.test")
    make_mailbox(session, ALICE)
    put(runner, 'require "reject";\nreject "Not from you.";\n')
    app.config["OUTBOUND_RELAY"] = "127.0.0.1:1"  # nothing may leave for a local recipient
    outbound.enqueue(
        session,
        sender="bob@example.test",
        recipients=[ALICE],
        content=message("queued", sender="bob@example.test"),
        mailbox_id=sender.id,
    )
    queue = QueueRunner(app)
    try:
        queue.run_until_idle()
    finally:
        queue.stop()
    session.expire_all()
    row = session.scalars(select(OutboundRecipient)).one()
    assert row.state == "bounced"
    assert folder_messages("INBOX") == []
    [(notice, _)] = folder_messages("INBOX", "bob@example.test")
    assert b"550 5.7.1 Not from you." in notice


def test_the_error_log_stays_small(tmp_path: Path):
    for n in range(3000):
        sieve_scripts.record_error(tmp_path, f"error number {n} " + "x" * 40)
    log = (tmp_path / sieve_scripts.ERROR_LOG).read_bytes()
    assert len(log) <= sieve_scripts.ERROR_LOG_MAX_BYTES
    assert log.endswith(b"error number 2999 " + b"x" * 40 + b"\n")
    assert all(line.count(b"error number") == 1 for line in log.splitlines())


def test_an_active_link_leading_out_of_the_home_is_not_followed(session, servers, tmp_path):
    make_mailbox(session, ALICE)
    elsewhere = tmp_path / "elsewhere.sieve"
    elsewhere.write_text("discard;\n")
    home = sieve_scripts.home_of(mail_store(), ALICE)
    os.symlink(elsewhere, home / ".dovecot.sieve")
    assert lmtp(servers["lmtp"], [ALICE], message("not discarded"))[0][0] == 250
    assert len(folder_messages("INBOX")) == 1
    assert "leads outside the mailbox's home" in error_log()


DUPLICATE_RULES = """require ["duplicate", "fileinto", "mailbox"];
if duplicate { fileinto :create "Dupes"; }
"""


def test_duplicate_files_the_second_copy_of_a_message_id_and_survives_a_restart(
    app: Flask, runner, session, servers
):
    make_mailbox(session, ALICE)
    put(runner, DUPLICATE_RULES)
    first = message("twice")
    assert lmtp(servers["lmtp"], [ALICE], first)[0][0] == 250
    assert len(folder_messages("INBOX")) == 1
    assert "Dupes" not in [info.name for info in mail_store().open(ALICE).folders()]
    # The tracked ID is in the database: a second server (a restart) knows it too.
    second = ProtocolRunner(app, ["lmtp"])
    bound = {b.name: (b.host, b.port) for b in second.start()}
    try:
        assert lmtp(bound["lmtp"], [ALICE], first)[0][0] == 250
    finally:
        second.stop()
    assert len(folder_messages("INBOX")) == 1
    assert len(folder_messages("Dupes")) == 1
    # Another Message-ID is not a duplicate.
    assert lmtp(servers["lmtp"], [ALICE], message("once"))[0][0] == 250
    assert len(folder_messages("INBOX")) == 2


def test_duplicate_tracks_only_delivered_messages(runner, session, servers):
    """A rejected delivery leaves no ID behind: the retry is not taken for a duplicate."""
    make_mailbox(session, ALICE)
    put(
        runner,
        'require ["duplicate", "fileinto", "reject", "mailbox"];\n'
        'if duplicate { fileinto :create "Dupes"; stop; }\n'
        'if header :contains "subject" "refuse" { reject "not now"; }\n',
    )
    refused = message("refuse me")
    assert lmtp(servers["lmtp"], [ALICE], refused)[0][0] == 550
    put(runner, DUPLICATE_RULES)
    assert lmtp(servers["lmtp"], [ALICE], refused)[0][0] == 250
    assert len(folder_messages("INBOX")) == 1
    assert lmtp(servers["lmtp"], [ALICE], refused)[0][0] == 250
    assert len(folder_messages("Dupes")) == 1


def test_duplicate_period_runs_from_the_first_sighting_or_with_last_from_the_latest(
    runner, session, servers
):
    make_mailbox(session, ALICE)
    put(
        runner,
        'require ["duplicate", "fileinto", "mailbox"];\n'
        'if duplicate :seconds 3600 { fileinto :create "First"; }\n'
        'if duplicate :seconds 3600 :last :handle "l" { fileinto :create "Last"; }\n',
    )
    start = clock.now()
    try:
        for minutes in (0, 40, 80):
            clock.set_now(start + timedelta(minutes=minutes))
            assert lmtp(servers["lmtp"], [ALICE], message("again"))[0][0] == 250
    finally:
        clock.set_now(None)
    # 40 min: a duplicate for both. 80 min: the first sighting's hour is over (a new first
    # sighting), but :last restarted its hour at 40 min.
    assert len(folder_messages("First")) == 1
    assert len(folder_messages("Last")) == 2


def test_include_personal_and_global_scripts_and_follow_their_changes(
    app: Flask, runner, session, servers, tmp_path: Path
):
    """Included scripts are read from ~/sieve and SIEVE_GLOBAL_DIR; a change to an included
    script (not to the active one) is seen by the next delivery; one removed meanwhile keeps
    the message in INBOX and tells the owner."""
    global_dir = tmp_path / "global"
    global_dir.mkdir()
    (global_dir / "spam.sieve").write_text(
        'require ["fileinto", "mailbox"];\n'
        'if header :contains "X-Spam" "yes" { fileinto :create "Junk"; stop; }\n'
    )
    app.config["SIEVE_GLOBAL_DIR"] = str(global_dir)
    make_mailbox(session, ALICE)
    put(runner, 'require ["fileinto", "mailbox"];\nfileinto :create "Lists";\n', name="lists")
    put(runner, 'require "include";\ninclude :global "spam";\ninclude "lists";\n', name="main")
    assert lmtp(servers["lmtp"], [ALICE], message("spammy", "X-Spam: yes\r\n"))[0][0] == 250
    assert lmtp(servers["lmtp"], [ALICE], message("news"))[0][0] == 250
    assert len(folder_messages("Junk")) == 1 and len(folder_messages("Lists")) == 1

    lists = sieve_scripts.home_of(mail_store(), ALICE) / "sieve" / "lists.sieve"
    result = runner.invoke(args=["sieve", "put", ALICE, "lists", "-"], input=b"keep;\n")
    assert result.exit_code == 0, result.output
    assert lmtp(servers["lmtp"], [ALICE], message("news two"))[0][0] == 250
    assert len(folder_messages("Lists")) == 1 and len(folder_messages("INBOX")) == 1

    lists.unlink()
    assert lmtp(servers["lmtp"], [ALICE], message("news three"))[0][0] == 250
    assert len(folder_messages("INBOX")) == 2
    assert "included personal script 'lists' does not exist" in error_log()


def test_the_include_loader_follows_no_links_and_refuses_bad_names(tmp_path: Path):
    home = tmp_path / "home"
    (home / "sieve").mkdir(parents=True)
    secret = tmp_path / "secret.sieve"
    secret.write_text('redirect "thief@outside.test";\n')
    (home / "sieve" / "link.sieve").symlink_to(secret)
    (home / "sieve" / "ok.sieve").write_text("keep;\n")
    loader = sieve_scripts.ScriptLoader(home, None)
    assert loader("personal", "ok") == b"keep;\n"
    assert loader("personal", "link") is None
    assert loader("personal", "../secret") is None
    assert loader("personal", ".hidden") is None
    assert loader("global", "ok") is None  # no global directory: nothing global exists
