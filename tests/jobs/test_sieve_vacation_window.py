"""The sieve-vacation-window job: away replies switch on and off with their days, from the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, JobRun, Mailbox
from provider.services import clock, sieve_rules, sieve_scripts
from provider.services.sieve_rules import Condition, Rule, RuleAction, RuleSet, Vacation
from provider.services.storage import mail_store
from tests.conftest import TEST_ACTOR, make_mailbox

BEFORE = date(2026, 7, 9)
FIRST = date(2026, 7, 10)
LAST = date(2026, 7, 20)


@pytest.fixture(autouse=True)
def _unfrozen_clock() -> Iterator[None]:
    yield
    clock.set_now(None)


def ruleset() -> RuleSet:
    return RuleSet(
        rules=[Rule("Lists", [Condition("from", "list@")], [RuleAction("move", folder="Lists")])],
        vacation=Vacation(True, "Away", "I am away.", 3, FIRST.isoformat(), LAST.isoformat()),
    )


def active(app: Flask, mailbox: Mailbox) -> str:
    with app.app_context():
        store = mail_store()
        name = sieve_scripts.active_name(sieve_scripts.home_of(store, mailbox.address))
        assert name is not None
        return sieve_scripts.get_script(store, mailbox, name).decode()


def save(app: Flask, session: Session, mailbox: Mailbox, today: date) -> None:
    with app.app_context():
        sieve_rules.save(session, mail_store(), mailbox, ruleset(), actor=TEST_ACTOR, today=today)
        session.commit()


def run(runner: FlaskCliRunner, moment: str) -> dict[str, object]:
    result = runner.invoke(args=["jobs", "run", "sieve-vacation-window", "--now", moment, "--json"])
    assert result.exit_code == 0, result.output
    summary: dict[str, object] = json.loads(result.output)
    return summary


def test_the_away_reply_switches_on_at_its_first_day_and_off_after_its_last(
    app: Flask, session: Session, runner: FlaskCliRunner
) -> None:
    alice = make_mailbox(session, "alice@example.test")
    make_mailbox(session, "nobody@example.test")  # no script at all: not touched, not counted
    save(app, session, alice, BEFORE)
    assert "vacation :days" not in active(app, alice)

    summary = run(runner, "2026-07-09T23:05:00")  # still the day before: nothing changes
    assert summary["rewritten"] == [] and summary["editor_scripts"] == 1
    assert "vacation :days" not in active(app, alice)

    summary = run(runner, "2026-07-10T00:05:00")
    assert summary == {
        "day": "2026-07-10",
        "editor_scripts": 1,
        "rewritten": ["alice@example.test"],
        "changed_meanwhile": [],
        "failed": 0,
    }
    on = active(app, alice)
    assert 'vacation :days 3 :subject "Away" "I am away.";' in on
    assert sieve_rules.from_sieve(on) == sieve_rules.check_ruleset(ruleset())  # still editable
    assert run(runner, "2026-07-20T23:05:00")["rewritten"] == []  # the last day still answers
    assert active(app, alice) == on

    assert run(runner, "2026-07-21T00:05:00")["rewritten"] == ["alice@example.test"]
    assert "vacation" not in active(app, alice).split("\n", 2)[2]
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.actor == "job:sieve-vacation-window")
    ).all()
    assert [event.action for event in events] == ["sieve.put", "sieve.put"]
    records = session.scalars(select(JobRun).where(JobRun.job == "sieve-vacation-window")).all()
    assert [record.outcome for record in records] == ["ok"] * 4


def test_a_hand_edited_script_is_never_touched(
    app: Flask, session: Session, runner: FlaskCliRunner
) -> None:
    alice = make_mailbox(session, "alice@example.test")
    save(app, session, alice, BEFORE)
    edited = active(app, alice).replace("# rule 1", "# my own comment")
    with app.app_context():
        store = mail_store()
        sieve_scripts.put_script(
            session, store, alice, "rules", edited.encode(), activate=True, actor=TEST_ACTOR
        )
        session.commit()
        path = sieve_scripts.home_of(store, alice.address) / "sieve" / "rules.sieve"
    before = path.stat()
    summary = run(runner, "2026-07-12T12:00:00")
    assert summary["rewritten"] == [] and summary["failed"] == 0
    assert active(app, alice) == edited
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_script_not_from_the_editor_is_not_even_read(
    app: Flask, session: Session, runner: FlaskCliRunner
) -> None:
    alice = make_mailbox(session, "alice@example.test")
    with app.app_context():
        sieve_scripts.put_script(
            session,
            mail_store(),
            alice,
            "mine",
            b'require "fileinto";\r\nfileinto "x";\r\n',
            activate=True,
            actor=TEST_ACTOR,
        )
        session.commit()
    summary = run(runner, "2026-07-12T12:00:00")
    assert summary["editor_scripts"] == 0 and summary["rewritten"] == []


def test_a_script_changed_between_read_and_write_is_left_alone(
    app: Flask, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Sieve client saves while the job works: the job's write is refused under the lock."""
    alice = make_mailbox(session, "alice@example.test")
    save(app, session, alice, BEFORE)
    hand = b'require "fileinto";\nfileinto "Elsewhere";\n'
    real_load = sieve_rules.load

    def load_then_client_writes(store, mailbox):  # type: ignore[no-untyped-def]
        state = real_load(store, mailbox)
        sieve_scripts.put_script(session, store, mailbox, "rules", hand, actor=TEST_ACTOR)
        return state

    monkeypatch.setattr(sieve_rules, "load", load_then_client_writes)
    with app.app_context():
        with pytest.raises(sieve_scripts.ScriptChanged):
            sieve_rules.refresh_window(session, mail_store(), alice, actor=TEST_ACTOR, today=FIRST)
        assert sieve_scripts.get_script(mail_store(), alice, "rules") == hand


def test_no_active_script_is_not_made_one(app: Flask, session: Session) -> None:
    alice = make_mailbox(session, "alice@example.test")
    with app.app_context():
        store = mail_store()
        assert not sieve_rules.refresh_window(session, store, alice, actor=TEST_ACTOR, today=FIRST)
        assert sieve_scripts.list_scripts(store, alice) == []
