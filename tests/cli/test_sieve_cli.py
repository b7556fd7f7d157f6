"""`provider sieve list|get|put|activate|delete`: Pigeonhole's layout on disk, limits, audit."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import select

from provider.models import AuditEvent
from provider.services import sieve_scripts
from provider.services.storage import mail_store
from tests.conftest import make_mailbox

SORTING = b'require ["fileinto"];\nif header :contains "List-Id" "lists" { fileinto "Lists"; }\n'
FORWARD = b'redirect "someone@elsewhere.test";\n'


def invoke(runner, *args, input=None):
    return runner.invoke(args=list(args), input=input)


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]


def home(address: str = "alice@example.test") -> Path:
    return sieve_scripts.home_of(mail_store(), address)


def test_put_list_get_activate_delete_as_dovecot_keeps_them(runner, session, tmp_path):
    make_mailbox(session, "alice@example.test")
    script = tmp_path / "rules.sieve"
    script.write_bytes(SORTING)

    put = invoke(runner, "sieve", "put", "Alice@example.test", "rules", str(script), "--activate")
    assert put.exit_code == 0, put.output
    assert put.output == f"stored rules ({len(SORTING)} bytes), active\n"
    assert (home() / "sieve" / "rules.sieve").read_bytes() == SORTING
    assert os.readlink(home() / ".dovecot.sieve") == "sieve/rules.sieve"
    assert not [p for p in (home() / "sieve").iterdir() if p.name.startswith(".")]

    other = invoke(runner, "sieve", "put", "alice@example.test", "forward", "-", input=FORWARD)
    assert other.exit_code == 0, other.output
    listed = invoke(runner, "sieve", "list", "alice@example.test", "--json")
    assert json.loads(listed.output) == [
        {"name": "forward", "active": False, "size": len(FORWARD)},
        {"name": "rules", "active": True, "size": len(SORTING)},
    ]
    text = invoke(runner, "sieve", "list", "alice@example.test")
    assert text.output.splitlines() == [
        f"forward  {len(FORWARD)} bytes",
        f"rules  {len(SORTING)} bytes  (active)",
    ]
    got = invoke(runner, "sieve", "get", "alice@example.test", "rules")
    assert got.exit_code == 0 and got.output.encode() == SORTING

    refused = invoke(runner, "sieve", "delete", "alice@example.test", "rules")
    assert_one_line_error(refused, "is the active script; deactivate it first")
    assert (home() / "sieve" / "rules.sieve").exists()

    switched = invoke(runner, "sieve", "activate", "alice@example.test", "forward")
    assert switched.exit_code == 0, switched.output
    assert os.readlink(home() / ".dovecot.sieve") == "sieve/forward.sieve"
    assert invoke(runner, "sieve", "delete", "alice@example.test", "rules").exit_code == 0
    off = invoke(runner, "sieve", "activate", "alice@example.test", "")
    assert off.output == "alice@example.test has no active script\n"
    assert not os.path.lexists(home() / ".dovecot.sieve")
    assert invoke(runner, "sieve", "delete", "alice@example.test", "forward").exit_code == 0
    assert invoke(runner, "sieve", "list", "alice@example.test").output == (
        "alice@example.test has no Sieve scripts\n"
    )
    actions = session.scalars(
        select(AuditEvent.action).where(AuditEvent.action.like("sieve.%")).order_by(AuditEvent.id)
    ).all()
    assert actions == [
        "sieve.put",
        "sieve.put",
        "sieve.activate",
        "sieve.delete",
        "sieve.deactivate",
        "sieve.delete",
    ]


def test_a_script_that_does_not_compile_is_refused_with_line_and_column(runner, session):
    make_mailbox(session, "alice@example.test")
    bad = b'require "fileinto";\nif header :contains "Subject" "x" {\n  fileinto "A"\n}\n'
    result = invoke(runner, "sieve", "put", "alice@example.test", "bad", "-", input=bad)
    assert_one_line_error(result, "line 4, column 1")
    assert not (home() / "sieve" / "bad.sieve").exists()
    assert session.scalar(select(AuditEvent.id).where(AuditEvent.action == "sieve.put")) is None


def test_bad_bytes_and_names_are_refused_in_one_line(runner, session):
    make_mailbox(session, "alice@example.test")
    latin1 = b'if header :is "Subject" "caf\xe9" { discard; }\n'
    assert_one_line_error(
        invoke(runner, "sieve", "put", "alice@example.test", "x", "-", input=latin1),
        "line 1: error: the script is not valid UTF-8",
    )
    for name, fragment in [
        ("../escape", "'/'"),
        ("a\x01b", "control characters"),
        (".dovecot", "may not start with '.'"),
        ("n" * 129, "at most 128 characters"),
        ("\u00e9" * 101, "200 bytes"),
    ]:
        result = invoke(runner, "sieve", "put", "alice@example.test", name, "-", input=b"keep;")
        assert_one_line_error(result, fragment)
    assert invoke(runner, "sieve", "put", "alice@example.test", "n" * 128, "-", input=b"keep;")
    assert [p.name for p in (home() / "sieve").iterdir()] == ["n" * 128 + ".sieve"]
    assert_one_line_error(
        invoke(runner, "sieve", "put", "alice@example.test", "x", "/no/such/file"),
        "cannot read /no/such/file",
    )
    assert_one_line_error(invoke(runner, "sieve", "list", "nobody@example.test"), "does not exist")
    assert_one_line_error(
        invoke(runner, "sieve", "get", "alice@example.test", "missing"), "no script named"
    )
    assert_one_line_error(
        invoke(runner, "sieve", "activate", "alice@example.test", "missing"), "no script named"
    )


def test_size_and_count_limits(app, runner, session):
    app.config.update(SIEVE_MAX_SCRIPT_BYTES=100, SIEVE_MAX_SCRIPTS=2)
    make_mailbox(session, "alice@example.test")
    big = b"#" + b"x" * 200 + b"\nkeep;\n"
    assert_one_line_error(
        invoke(runner, "sieve", "put", "alice@example.test", "big", "-", input=big),
        "at most 100 are allowed",
    )
    for name in ("one", "two"):
        assert invoke(runner, "sieve", "put", "alice@example.test", name, "-", input=b"keep;")
    assert_one_line_error(
        invoke(runner, "sieve", "put", "alice@example.test", "three", "-", input=b"keep;"),
        "already has 2 scripts; at most 2",
    )
    # Replacing an existing script is not one more.
    replaced = invoke(runner, "sieve", "put", "alice@example.test", "two", "-", input=b"stop;")
    assert replaced.exit_code == 0, replaced.output
    assert (home() / "sieve" / "two.sieve").read_bytes() == b"stop;"


def test_pop3_only_mailboxes_get_no_sorting_rules_but_may_forward(runner, session):
    make_mailbox(session, "pop@example.test", protocols="pop3")
    refused = invoke(runner, "sieve", "put", "pop@example.test", "sort", "-", input=SORTING)
    assert_one_line_error(refused, "sorting rules (fileinto, imap4flags) need IMAP")
    flags = b'require "imap4flags";\naddflag "\\\\Seen";\n'
    assert_one_line_error(
        invoke(runner, "sieve", "put", "pop@example.test", "flags", "-", input=flags), "need IMAP"
    )
    vacation = b'require "vacation";\nvacation "Away until Monday.";\n'
    for name, source in (("fwd", FORWARD), ("away", vacation)):
        ok = invoke(
            runner, "sieve", "put", "pop@example.test", name, "-", "--activate", input=source
        )
        assert ok.exit_code == 0, ok.output


def test_a_regular_file_at_the_link_is_kept_as_dovecot_orig(runner, session):
    make_mailbox(session, "alice@example.test")
    (home() / ".dovecot.sieve").write_bytes(b"discard;\n")
    invoke(runner, "sieve", "put", "alice@example.test", "rules", "-", "--activate", input=b"keep;")
    assert os.readlink(home() / ".dovecot.sieve") == "sieve/rules.sieve"
    assert (home() / "sieve" / "dovecot.orig.sieve").read_bytes() == b"discard;\n"


def test_a_failed_write_leaves_the_old_script_and_no_temporary_file(runner, session, monkeypatch):
    make_mailbox(session, "alice@example.test")
    invoke(runner, "sieve", "put", "alice@example.test", "rules", "-", input=b"keep;")

    def broken_rename(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sieve_scripts.os, "rename", broken_rename)
    failed = invoke(runner, "sieve", "put", "alice@example.test", "rules", "-", input=b"stop;")
    assert_one_line_error(failed, "could not be written: No space left on device")
    monkeypatch.undo()
    assert [p.name for p in (home() / "sieve").iterdir()] == ["rules.sieve"]
    assert (home() / "sieve" / "rules.sieve").read_bytes() == b"keep;"


def test_a_symlinked_script_directory_is_not_written_through(runner, session, tmp_path):
    make_mailbox(session, "alice@example.test")
    outside = tmp_path / "outside"
    outside.mkdir()
    (home() / "sieve").symlink_to(outside)
    result = invoke(runner, "sieve", "put", "alice@example.test", "rules", "-", input=b"keep;")
    assert_one_line_error(result, "is a symlink")
    assert list(outside.iterdir()) == []
