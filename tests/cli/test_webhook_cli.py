"""`provider webhook add|list|remove|deliveries|redeliver` against a real receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from provider.models import WebhookEndpoint
from provider.services import webhooks
from tests.conftest import make_admin, make_domain, make_mailbox
from tests.webhooks.receiver import Receiver


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "WEBHOOK_ALLOW_PRIVATE_TARGETS": True, "WEBHOOK_TIMEOUT_SECONDS": 2}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


def one_line_error(result: Any, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines


def test_add_list_deliveries_redeliver_remove(
    app: Flask, runner: Any, session: Any, receiver: Receiver
) -> None:
    make_domain(session, "example.test")
    result = runner.invoke(
        args=[
            "webhook", "add", receiver.url,
            "--event", "mailbox.created,mailbox.deleted", "--event", "quota.warning",
            "--json",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    receiver.secret = made["secret"]
    assert made["events"] == ["mailbox.created", "mailbox.deleted", "quota.warning"]
    assert made["admin"] is None
    listed = runner.invoke(args=["webhook", "list"]).output
    assert receiver.url in listed and made["secret"] not in listed and "all domains" in listed

    make_mailbox(session, "bob@example.test")
    webhooks.deliver_pending(app)
    assert [r.data["address"] for r in receiver.accepted] == ["bob@example.test"]
    records = json.loads(runner.invoke(args=["webhook", "deliveries", "--json"]).output)
    assert records[0]["state"] == "delivered" and records[0]["type"] == "mailbox.created"
    assert records[0]["attempt_log"][0]["status_code"] == 204
    text = runner.invoke(args=["webhook", "deliveries", "--state", "delivered"]).output
    assert "mailbox.created  mailbox:bob@example.test  delivered  attempts 1" in text

    again = runner.invoke(args=["webhook", "redeliver", str(records[0]["id"])])
    assert again.exit_code == 0, again.output
    webhooks.deliver_pending(app)
    assert len(receiver.accepted) == 2

    removed = runner.invoke(args=["webhook", "remove", str(made["id"])])
    assert removed.exit_code == 0 and "removed webhook" in removed.output
    assert session.scalars(select(WebhookEndpoint)).all() == []
    assert runner.invoke(args=["webhook", "deliveries"]).output.strip() == "no deliveries"


def test_add_for_a_domain_admin(runner: Any, session: Any) -> None:
    ours = make_domain(session, "ours.test")
    make_admin(session, "tenant@ours.test", superadmin=False, domains=[ours])
    result = runner.invoke(
        args=["webhook", "add", "https://hooks.example.net/", "--event", "trial.expired",
              "--admin", "tenant@ours.test", "--json"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["admin"] == "tenant@ours.test"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["https://u:p@hooks.example.net/", "--event", "mailbox.created"], "user name or password"),
        (["file:///etc/passwd", "--event", "mailbox.created"], "http:// or https://"),
        (["https://hooks.example.net/", "--event", "mailbox.exploded"], "unknown event"),
        (["https://hooks.example.net/", "--event", ","], "at least one event"),
        (["https://hooks.example.net/" + "a" * 3000, "--event", "mailbox.created"], "at most"),
        (
            ["https://hooks.example.net/", "--event", "mailbox.created", "--admin", "no@x.test"],
            "does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    runner: Any, session: Any, args: list[str], fragment: str
) -> None:
    one_line_error(runner.invoke(args=["webhook", "add", *args]), fragment)
    assert session.scalars(select(WebhookEndpoint)).all() == []


def test_remove_or_redeliver_what_does_not_exist(runner: Any) -> None:
    one_line_error(runner.invoke(args=["webhook", "remove", "42"]), "no webhook endpoint")
    one_line_error(runner.invoke(args=["webhook", "redeliver", "42"]), "no webhook delivery")
    huge = str(10**30)
    one_line_error(runner.invoke(args=["webhook", "remove", huge]), "no webhook endpoint")
    one_line_error(runner.invoke(args=["webhook", "redeliver", huge]), "no webhook delivery")
