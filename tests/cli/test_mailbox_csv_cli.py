"""`provider mailbox import|export`: dry run, one line per bad row, passwords as CSV, round trip."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from provider.models import Mailbox
from provider.services import auth
from tests.conftest import make_domain, make_mailbox

GOOD = "a long enough passphrase"
PROVIDER = str(Path(sys.executable).with_name("provider"))


def mailbox_count(session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Mailbox)) or 0


def write(tmp_path: Path, text: str, name: str = "in.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_dry_run_prints_each_row_and_creates_nothing(runner, session, tmp_path):
    make_domain(session)
    path = write(
        tmp_path,
        f"address,quota,protocols,password\na@example.test,8,imap,{GOOD}\n"
        "b@example.test,9,pop3,generate\n",
    )
    result = runner.invoke(args=["mailbox", "import", path, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "line 2: would create a@example.test",
        "line 3: would create b@example.test (password made up)",
        "2 mailbox(es) would be created; nothing was changed",
    ]
    assert mailbox_count(session) == 0


def test_bad_rows_exit_1_with_one_line_each_and_nothing_is_created(runner, session, tmp_path):
    make_domain(session)
    make_mailbox(session, "taken@example.test")
    path = write(
        tmp_path,
        f"ok@example.test,8,imap,{GOOD}\n"
        "low@example.test,7,imap,generate\n"
        "taken@example.test,8,smtp,generate\n",
    )
    result = runner.invoke(args=["mailbox", "import", path])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: line 2: quota: quota must be between 8 and 100 GB, not 7 GB",
        "Error: line 3: address: mailbox taken@example.test already exists; "
        "protocols: unknown protocol 'smtp': choose imap, pop3 or both",
    ]
    assert result.stdout == ""
    assert mailbox_count(session) == 1


def test_a_file_error_is_one_line(runner, session, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"address,quota,protocols,password\n\xc3\x28@x.test,8,imap,generate\n")
    result = runner.invoke(args=["mailbox", "import", str(path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: line 2: the file is not UTF-8 text (byte 0xc3); save it as CSV UTF-8"
    ]


def test_import_prints_made_up_passwords_as_csv_and_json_has_the_report(runner, session, tmp_path):
    make_domain(session)
    path = write(tmp_path, f"a@example.test;8;imap;{GOOD}\r\nb@example.test;8;both;generate\r\n")
    result = runner.invoke(args=["mailbox", "import", path])
    assert result.exit_code == 0, result.output
    assert result.stderr == "created 2 mailbox(es)\n"
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["address", "password"] and rows[1][0] == "b@example.test"
    assert auth.authenticate_mailbox(session, "b@example.test", rows[1][1]) is not None
    assert mailbox_count(session) == 2

    again = runner.invoke(args=["mailbox", "import", path, "--json"])
    assert again.exit_code == 1
    report = json.loads(again.stdout)
    assert report["applied"] is False and report["created"] == 0
    assert report["rows"][0]["errors"] == [
        {"line": 1, "column": "address", "message": "mailbox a@example.test already exists"}
    ]


def test_export_to_stdout_or_a_file_and_by_domain(runner, session, tmp_path):
    make_domain(session, "one.test")
    make_domain(session, "two.test")
    make_mailbox(session, "a@one.test", contact_email="+boss@customer.test")
    make_mailbox(session, "b@two.test", protocols="pop3")
    result = runner.invoke(args=["mailbox", "export"])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == (  # bytes: Result.stdout turns CRLF into LF
        b"address,quota,protocols,password,plan,contact,pop3_action\r\n"
        b"a@one.test,8,imap,generate,paid,'+boss@customer.test,keep\r\n"
        b"b@two.test,8,pop3,generate,paid,,keep\r\n"
    )
    target = tmp_path / "out.csv"
    assert (
        runner.invoke(args=["mailbox", "export", "--domain", "two.test", str(target)]).exit_code
        == 0
    )
    assert target.read_bytes().splitlines()[1:] == [b"b@two.test,8,pop3,generate,paid,,keep"]
    missing = runner.invoke(args=["mailbox", "export", "--domain", "nope.test"])
    assert missing.exit_code == 1 and "domain nope.test does not exist" in missing.stderr


def test_the_console_script_imports_with_hashing_in_worker_processes(tmp_path):
    """The real `provider` program: enough made-up passwords to hash in spawned processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVIDER_")}
    env.update(PROVIDER_INSTANCE_DIR=str(tmp_path / "instance"), PROVIDER_ADMIN_PASSWORD=GOOD)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PROVIDER, *args], env=env, capture_output=True, text=True, timeout=300
        )

    assert run("init").returncode == 0
    assert run("domain", "add", "example.test").returncode == 0
    rows = "".join(f"user{n}@example.test,8,imap,generate\n" for n in range(24))
    imported = run("mailbox", "import", write(tmp_path, rows))
    assert imported.returncode == 0, imported.stderr
    passwords = list(csv.reader(io.StringIO(imported.stdout)))[1:]
    assert len(passwords) == 24 and len({p for _, p in passwords}) == 24
    exported = run("mailbox", "export")
    assert exported.stdout.count("@example.test,8,imap,generate,paid,,keep") == 24
    maildirs = list((tmp_path / "instance" / "mail" / "example.test").glob("*/Maildir/cur"))
    assert len(maildirs) == 24


def test_hashes_from_another_server_are_kept_and_the_help_says_how(runner, session, tmp_path):
    import base64
    import hashlib

    make_domain(session)
    digest = hashlib.sha512(b"the old passphrase" + b"salt").digest()
    moved = "{SSHA512}" + base64.b64encode(digest + b"salt").decode()
    path = write(tmp_path, f"moved@example.test,8,imap,{moved}\nbad@example.test,8,imap,{{X}}y\n")
    result = runner.invoke(args=["mailbox", "import", path, "--dry-run"])
    assert result.exit_code == 1
    assert "Error: line 2: password: unknown password scheme {X}" in result.stderr
    path = write(tmp_path, f"moved@example.test,8,imap,{moved}\n")
    result = runner.invoke(args=["mailbox", "import", path, "--dry-run"])
    assert result.stdout.splitlines()[0] == (
        "line 1: would create moved@example.test (password hash kept: {SSHA512})"
    )
    result = runner.invoke(args=["mailbox", "import", path])
    assert result.exit_code == 0 and result.stdout == ""  # no password was made up
    session.expire_all()
    assert session.scalar(select(Mailbox.password_hash)) == moved
    assert auth.verify_password(moved, "the old passphrase").ok
    help_text = runner.invoke(args=["mailbox", "import", "--help"]).output
    assert "{SHA512-CRYPT}" in help_text and "{PLAIN}" in help_text
