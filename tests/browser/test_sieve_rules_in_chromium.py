"""Playwright in headless Chromium: the owner builds two rules and an away reply in /account,
then messages delivered over real LMTP land where the rules say and the away reply goes out once
through the real queue runner."""

from __future__ import annotations

import email
from collections.abc import Iterator
from datetime import timedelta
from email.policy import default
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from provider.mailstore.maildir import MessageInfo
from provider.protocols.outbound.runner import QueueRunner
from provider.protocols.server import ProtocolRunner
from provider.services import clock, sieve_rules
from provider.services.storage import mail_store
from tests.browser.conftest import BrowserPage
from tests.conftest import MAILBOX_PASSWORD, make_mailbox
from tests.outbound.helpers import inbox
from tests.protocols.conftest import RawClient

ALICE = "alice@example.test"
BOB = "bob@example.test"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config["LMTP_PORT"] = 0  # any free port: never the default another run may hold
    return app_config


@pytest.fixture
def lmtp_address(app: Flask) -> Iterator[tuple[str, int]]:
    runner = ProtocolRunner(app, ["lmtp"])
    [bound] = runner.start()
    try:
        yield (bound.host, bound.port)
    finally:
        runner.stop()


@pytest.fixture
def queue(app: Flask) -> Iterator[QueueRunner]:
    app.config["OUTBOUND_RELAY"] = ""
    runner = QueueRunner(app)
    try:
        yield runner
    finally:
        runner.stop()


def lmtp(address: tuple[str, int], sender: str, data: bytes) -> int:
    with RawClient(address) as client:
        client.reply()
        client.command("LHLO test.example")
        assert client.command(f"MAIL FROM:<{sender}>")[0] == 250
        assert client.command(f"RCPT TO:<{ALICE}>")[0] == 250
        assert client.command("DATA")[0] == 354
        client.send(data + b".\r\n")
        return client.reply()[0]


def message(sender: str, subject: str, n: int, extra: str = "") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n{extra}"
        f"Message-ID: <m{n}@example.test>\r\n\r\nHello.\r\n"
    ).encode()


def folder(app: Flask, name: str) -> list[tuple[str, MessageInfo]]:
    with app.app_context():
        box = mail_store().open(ALICE).folder(name)
        return [
            (str(email.message_from_bytes(box.read(info.uid), policy=default)["Subject"]), info)
            for info in box.messages()
        ]


def test_the_owner_builds_rules_and_an_away_reply_and_mail_lands_accordingly(
    app: Flask,
    session: Session,
    live_server: str,
    chromium_page: BrowserPage,
    lmtp_address: tuple[str, int],
    queue: QueueRunner,
) -> None:
    from playwright.sync_api import expect

    alice = make_mailbox(session, ALICE)
    make_mailbox(session, BOB)
    page = chromium_page.page
    page.goto(f"{live_server}/account/login")
    page.get_by_label("E-mail address").fill(ALICE)
    page.get_by_label("Password").fill(MAILBOX_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{live_server}/account/")
    page.get_by_role("link", name="Rules").first.click()
    expect(page).to_have_url(f"{live_server}/account/rules")
    expect(page.locator("#rules")).to_contain_text("No rules yet.")

    # Rule 1: From contains "list@" → move to "Lists", created.
    page.get_by_role("link", name="Add a rule").click()
    page.get_by_label("Name of the rule").fill("Mailing lists")
    page.locator("#c0_kind").select_option("from")
    page.locator("#c0_value").fill("list@")
    page.get_by_label("Move it to folder").check()
    page.locator("#folder").fill("Lists")
    expect(page.get_by_label("Create the folder if it does not exist")).to_be_checked()
    page.get_by_role("button", name="Save rule").click()
    expect(page).to_have_url(f"{live_server}/account/rules")
    expect(page.locator(".flash-success")).to_contain_text("Rule “Mailing lists” saved.")

    # Rule 2: Subject contains "invoice" → flag. A first try without an action is refused
    # next to nothing being written, then completed.
    page.get_by_role("link", name="Add a rule").click()
    page.get_by_label("Name of the rule").fill("Invoices")
    page.locator("#c0_kind").select_option("subject")
    page.locator("#c0_value").fill("invoice")
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator(".form-errors")).to_contain_text("at least one action")
    page.get_by_label("Flag it").check()
    page.get_by_role("button", name="Save rule").click()
    expect(page.locator(".flash-success")).to_contain_text("Rule “Invoices” saved.")
    expect(page.locator(".rule-list li.rule")).to_have_count(2)
    expect(page.locator(".rule-list li.rule").nth(0)).to_contain_text("move to Lists")
    expect(page.locator(".rule-list li.rule").nth(1)).to_contain_text("flag")

    # The away reply, from today (the server's UTC day) for a week.
    today = clock.now().date()
    vacation = page.locator("#vacation")
    vacation.get_by_label("Send an away reply").check()
    vacation.get_by_label("First day").fill(today.isoformat())
    vacation.get_by_label("Last day").fill((today + timedelta(days=7)).isoformat())
    vacation.get_by_label("Subject").fill("Out of office")
    vacation.get_by_label("Text").fill("I am away; back soon.")
    vacation.get_by_label("Days between two replies").fill("3")
    vacation.get_by_role("button", name="Save away reply").click()
    expect(page.locator(".flash-success")).to_contain_text("Away reply on.")
    expect(page.locator("#vacation")).to_contain_text("Being sent today.")
    # The refused rule was a 400 page (Chromium logs that); no script error, no CSP violation.
    assert [e for e in chromium_page.console_errors if "status of 400" not in e] == []

    with app.app_context():
        state = sieve_rules.load(mail_store(), alice)
    assert state.ruleset is not None and [r.name for r in state.ruleset.rules] == [
        "Mailing lists",
        "Invoices",
    ]

    # Deliveries over real LMTP.
    list_mail = message(
        "list@lists.example", "[dev] weekly digest", 1, "List-Id: <dev.example>\r\n"
    )
    assert lmtp(lmtp_address, "list-bounces@lists.example", list_mail) == 250
    assert lmtp(lmtp_address, BOB, message(BOB, "Your invoice 42", 2)) == 250
    assert lmtp(lmtp_address, BOB, message(BOB, "Lunch?", 3)) == 250

    [(subject, _)] = folder(app, "Lists")
    assert subject == "[dev] weekly digest"
    in_inbox = dict(folder(app, "INBOX"))
    assert set(in_inbox) == {"Your invoice 42", "Lunch?"}
    assert "\\Flagged" in in_inbox["Your invoice 42"].flags
    assert "\\Flagged" not in in_inbox["Lunch?"].flags

    # One away reply to Bob (not two, not to the list), delivered by the queue runner.
    queue.run_until_idle()
    with app.app_context():
        [reply] = inbox(BOB)
    assert reply["Subject"] == "Out of office"
    assert reply["From"] == ALICE and reply["To"] == BOB
    assert reply["Auto-Submitted"].startswith("auto-replied")
    assert reply["In-Reply-To"] == "<m2@example.test>"
    assert reply.get_content().strip() == "I am away; back soon."
