"""`provider mailbox set --send-limit-hour/--send-limit-day/--sending` and the sending fields
of `provider mailbox show` (text and --json)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from provider.models import AuditEvent
from provider.services import sending
from provider.services.clock import frozen_at
from tests.conftest import make_mailbox

T0 = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)


def invoke(runner, *args):
    return runner.invoke(args=list(args))


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]


def actions(session) -> list[str]:
    return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_show_includes_the_sending_fields(runner, session):
    mailbox = make_mailbox(session, "alice@example.test")
    with frozen_at(T0):
        sending.record_accepted(session, mailbox.id, 4)
        session.commit()
        shown = invoke(runner, "mailbox", "show", "alice@example.test", "--json")
        text = invoke(runner, "mailbox", "show", "alice@example.test")
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.output)["sending"]
    assert record["limit_per_hour"] == 300
    assert record["limit_per_day"] == 1000
    assert record["limit_per_hour_source"] == "plan"
    assert record["sent_today"] == 4
    assert len(record["last_7_days"]) == 7
    assert record["last_7_days"][-1] == {"day": "2026-12-06", "sent": 4, "refused": 0}
    assert record["suspended"] is False and record["suspended_reason"] is None
    assert text.exit_code == 0, text.output
    assert "  sending:   active" in text.output
    assert "  limits:    300 recipients/hour (plan), 1000/day (plan)" in text.output
    assert "  sent:      4 today (UTC)" in text.output


def test_set_and_clear_the_limits_audited(runner, session):
    make_mailbox(session, "alice@example.test")
    result = invoke(
        runner,
        "mailbox",
        "set",
        "alice@example.test",
        "--send-limit-hour",
        "25",
        "--send-limit-day",
        "100000",
        "--json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)["sending"]
    assert (record["limit_per_hour"], record["limit_per_hour_source"]) == (25, "mailbox")
    assert (record["limit_per_day"], record["limit_per_day_source"]) == (100000, "mailbox")
    cleared = invoke(
        runner, "mailbox", "set", "alice@example.test", "--send-limit-hour", "DEFAULT", "--json"
    )
    record = json.loads(cleared.output)["sending"]
    assert (record["limit_per_hour"], record["limit_per_hour_source"]) == (300, "plan")
    assert record["limit_per_day"] == 100000
    assert actions(session).count("mailbox.sending_limits") == 2


@pytest.mark.parametrize("value", ["0", "100001", "-3", "ten", "", "1.5", "99999999999999999999"])
def test_bad_limits_are_one_line_errors_and_change_nothing(runner, session, value):
    make_mailbox(session, "alice@example.test")
    if value == "":
        # An empty value is "default", the same as the word.
        result = invoke(runner, "mailbox", "set", "alice@example.test", "--send-limit-day", "")
        assert result.exit_code == 0, result.output
        return
    result = invoke(
        runner,
        "mailbox",
        "set",
        "alice@example.test",
        "--quota-gb",
        "9",
        "--send-limit-day",
        value,
    )
    assert_one_line_error(result, "send limit per day must be a whole number from 1 to 100000")
    shown = json.loads(invoke(runner, "mailbox", "show", "alice@example.test", "--json").output)
    # Nothing of the command was applied, the quota neither.
    assert shown["quota_bytes"] == 8 * 1024**3
    assert shown["sending"]["limit_per_day_source"] == "plan"


def test_suspend_and_resume_sending(runner, session):
    make_mailbox(session, "alice@example.test")
    stopped = invoke(runner, "mailbox", "set", "alice@example.test", "--sending", "suspended")
    assert stopped.exit_code == 0, stopped.output
    assert "  sending:   SUSPENDED since" in stopped.output
    assert "stopped by cli" in stopped.output
    shown = json.loads(invoke(runner, "mailbox", "show", "alice@example.test", "--json").output)
    assert shown["sending"]["suspended"] is True
    assert shown["status"] == "active"  # receiving and logging in are untouched
    again = invoke(runner, "mailbox", "set", "alice@example.test", "--sending", "suspended")
    assert again.exit_code == 0
    resumed = invoke(runner, "mailbox", "set", "alice@example.test", "--sending", "active")
    assert resumed.exit_code == 0, resumed.output
    assert "  sending:   active" in resumed.output
    assert actions(session).count("mailbox.sending_suspend") == 1
    assert actions(session).count("mailbox.sending_resume") == 1


def test_bad_sending_state_and_unknown_mailbox(runner, session):
    make_mailbox(session, "alice@example.test")
    result = invoke(runner, "mailbox", "set", "alice@example.test", "--sending", "paused")
    assert result.exit_code == 2  # click's usage error names the choices
    assert "active" in result.output and "suspended" in result.output
    missing = invoke(runner, "mailbox", "set", "nobody@example.test", "--send-limit-hour", "5")
    assert_one_line_error(missing, "mailbox nobody@example.test does not exist")
