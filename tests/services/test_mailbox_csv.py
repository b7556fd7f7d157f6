"""CSV import and export of mailboxes: the dry run's words, all-or-nothing apply, round trip."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Mailbox
from provider.services import auth, mailbox_csv, provisioning, storage
from provider.services.mailbox_csv import check_import, export_csv, import_mailboxes
from tests.conftest import TEST_ACTOR, make_domain, make_mailbox

GOOD = "a long enough passphrase"


def mailbox_count(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Mailbox)) or 0


def maildirs(app) -> list[str]:
    root = Path(app.config["DATA_DIR"]) / "mail"
    return sorted(
        f"{home.name}@{home.parent.name}"
        for home in root.glob("*/*")
        if (home / "Maildir").is_dir()
    )


def run_import(session: Session, text: str | bytes, **kwargs):
    data = text.encode() if isinstance(text, str) else text
    kwargs.setdefault("scope", None)
    kwargs.setdefault("actor", TEST_ACTOR)
    return import_mailboxes(session, data, **kwargs)


def errors_by_line(report) -> dict[int, list[tuple[str | None, str]]]:
    found: dict[int, list[tuple[str | None, str]]] = {}
    for error in report.errors:
        found.setdefault(error.line, []).append((error.column, error.message))
    return found


def test_dry_run_lists_every_row_with_errors_by_line_and_column_and_creates_nothing(app, session):
    make_domain(session, "example.test")
    make_mailbox(session, "taken@example.test")
    text = (
        "address,quota,protocols,password,plan,contact\r\n"
        f"ok@example.test,10,imap,{GOOD},paid,\r\n"
        "low@example.test,7,imap,generate,,\r\n"
        "bad proto@example.test,10,smtp,short,,\r\n"
        "taken@example.test,10,both,generate,,\r\n"
        "x@nowhere.test,10,pop3,generate,gold,not-an-address\r\n"
        "OK@example.test,10,imap,generate,,\r\n"
    )
    report = run_import(session, text, dry_run=True)
    assert not report.ok and not report.applied
    assert [row.outcome for row in report.rows] == [
        "create",
        "error",
        "error",
        "error",
        "error",
        "error",
    ]
    errors = errors_by_line(report)
    assert 2 not in errors
    assert errors[3] == [("quota", "quota must be between 8 and 100 GB, not 7 GB")]
    assert errors[4][0][0] == "address" and "is not allowed before the @" in errors[4][0][1]
    assert ("protocols", "unknown protocol 'smtp': choose imap, pop3 or both") in errors[4]
    assert ("password", "password must be at least 8 characters") in errors[4]
    assert errors[5] == [("address", "mailbox taken@example.test already exists")]
    assert ("address", "domain nowhere.test is not hosted here; add it first") in errors[6]
    assert ("plan", "unknown plan 'gold': trial or paid") in errors[6]
    assert [column for column, _ in errors[6]] == ["address", "plan", "contact"]
    assert errors[7] == [("address", "ok@example.test is on line 2 already")]
    assert report.error_lines()[0] == "line 3: quota: quota must be between 8 and 100 GB, not 7 GB"
    assert mailbox_count(session) == 1
    assert maildirs(app) == ["taken@example.test"]


def test_a_clean_dry_run_says_what_would_be_created_and_writes_nothing(app, session):
    make_domain(session)
    report = run_import(session, f"a@example.test,8,imap,{GOOD}\n", dry_run=True)
    assert report.ok and not report.applied
    assert report.to_dict()["rows"] == [
        {
            "line": 1,
            "address": "a@example.test",
            "outcome": "create",
            "generate_password": False,
            "password_scheme": None,
            "errors": [],
        }
    ]
    assert mailbox_count(session) == 0 and maildirs(app) == []


def test_apply_creates_every_mailbox_with_its_maildir_audit_and_working_passwords(app, session):
    make_domain(session)
    text = (
        "address;quota;protocols;password;plan;contact;pop3_action\n"
        f"given@example.test;10 GB;imap;{GOOD};paid;boss@customer.test;keep\n"
        "made@example.test;12,5;pop3;generate;trial;;archive\n"
        "both@example.test;8G;imap+pop3;GENERATE;;;\n"
    )
    report = run_import(session, text)
    session.commit()
    assert report.ok and report.applied
    assert [address for address, _ in report.passwords] == [
        "made@example.test",
        "both@example.test",
    ]
    rows = {m.address: m for m in session.scalars(select(Mailbox))}
    assert rows["given@example.test"].quota_bytes == 10 * 1024**3
    assert rows["given@example.test"].contact_email == "boss@customer.test"
    assert rows["made@example.test"].quota_bytes == int(12.5 * 1024**3)
    assert rows["made@example.test"].protocols == ["pop3"]
    assert rows["made@example.test"].plan == "trial"
    assert rows["made@example.test"].trial_expires_at is not None
    assert rows["made@example.test"].pop3_action == "archive"
    assert rows["both@example.test"].protocols == ["imap", "pop3"]
    assert auth.authenticate_mailbox(session, "given@example.test", GOOD) is not None
    for address, password in report.passwords:
        assert auth.authenticate_mailbox(session, address, password) is not None
        assert password not in rows[address].password_hash
    assert rows["given@example.test"].password_hash.startswith("{ARGON2ID}$argon2id$v=19$m=19456")
    assert maildirs(app) == sorted(rows)
    actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions.count("mailbox.create") == 3 and actions[-1] == "mailbox.import"
    passwords = list(csv.reader(io.StringIO(report.passwords_csv())))
    assert passwords[0] == ["address", "password"] and len(passwords) == 3


def test_one_bad_row_means_nothing_is_created_and_no_maildir_is_left(app, session):
    make_domain(session)
    report = run_import(session, f"a@example.test,8,imap,{GOOD}\nb@example.test,800,imap,{GOOD}\n")
    session.commit()
    assert not report.applied and report.error_lines() == [
        "line 2: quota: quota must be between 8 and 100 GB, not 800 GB"
    ]
    assert mailbox_count(session) == 0 and maildirs(app) == []


def test_a_rollback_after_apply_removes_the_maildirs_it_made(app, session):
    make_domain(session)
    make_mailbox(session, "old@example.test")
    report = run_import(session, f"a@example.test,8,imap,{GOOD}\nb@example.test,8,pop3,generate\n")
    assert report.applied and maildirs(app) == [
        "a@example.test",
        "b@example.test",
        "old@example.test",
    ]
    session.rollback()  # e.g. the commit failed
    assert mailbox_count(session) == 1 and maildirs(app) == ["old@example.test"]


def test_a_maildir_that_cannot_be_made_leaves_no_row_and_no_other_maildir(
    app, session, monkeypatch
):
    make_domain(session)
    store_class = type(storage.mail_store())
    real_create = store_class.create_unsynced

    def failing_create(self, address):
        if address.startswith("c@"):
            raise OSError(28, "No space left on device")
        return real_create(self, address)

    monkeypatch.setattr(store_class, "create_unsynced", failing_create)
    text = "".join(f"{name}@example.test,8,imap,generate\n" for name in "abcde")
    with pytest.raises(OSError):
        run_import(session, text)
    session.rollback()
    assert mailbox_count(session) == 0 and maildirs(app) == []


def test_a_domain_admin_may_import_into_their_domains_only_and_learns_nothing_of_others(
    app, session
):
    mine, other = make_domain(session, "mine.test"), make_domain(session, "other.test")
    text = f"a@mine.test,8,imap,{GOOD}\nb@other.test,8,imap,{GOOD}\nc@missing.test,8,imap,{GOOD}\n"
    report = run_import(session, text, scope={mine.id}, dry_run=True)
    errors = errors_by_line(report)
    assert 1 not in errors
    refused = [("address", "you can only use addresses in the domains you manage")]
    assert errors[2] == refused and errors[3] == refused
    assert other.id  # the other tenant's domain exists, yet reads like a missing one


def test_an_alias_address_is_refused_in_the_forms_words(app, session):
    owner = make_mailbox(session, "owner@example.test")
    provisioning.create_alias(session, "sales@example.test", owner, actor=TEST_ACTOR)
    session.commit()
    report = run_import(session, "sales@example.test,8,imap,generate\n", dry_run=True)
    assert report.error_lines() == ["line 1: address: sales@example.test is already an alias"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty"),
        (b"address,quota,protocols,password\r\n\r\n", "the file has no mailbox rows"),
        (b"a@example.test,8,imap,pw\n\xff\xfe@x,8,imap,pw\n", "line 2: the file is not UTF-8"),
        (b"address,quota,password\n", "line 1: the header lacks the column(s) protocols"),
        (b"address,quota,protocols,password,notes\n", "line 1: unknown column(s) 'notes'"),
        (b"address,quota,quota,protocols,password\n", "line 1: column(s) quota given twice"),
        (b'a@example.test,8,imap,"unterminated\n', "unexpected end of data"),
        (b'a@example.test,8,"imap"x,pw\n', "line 1: ',' expected after '\"'"),
        (b"a@example.test,8,imap," + b"p" * 200_000 + b"\n", "field larger than field limit"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_with_one_clear_error(app, session, data, message):
    make_domain(session)
    report = run_import(session, data)
    assert not report.applied and not report.rows
    assert len(report.file_errors) == 1
    assert message in str(report.file_errors[0]), str(report.file_errors[0])
    assert mailbox_count(session) == 0


def test_size_and_row_limits(app, session, monkeypatch):
    make_domain(session)
    huge = b"a" * (mailbox_csv.MAX_IMPORT_BYTES + 1)
    report = check_import(session, huge, scope=None)
    assert "at most 4194304 bytes" in str(report.file_errors[0])
    monkeypatch.setattr(mailbox_csv, "MAX_IMPORT_ROWS", 3)
    text = "address,quota,protocols,password\n" + "".join(
        f"u{n}@example.test,8,imap,generate\n" for n in range(4)
    )
    report = check_import(session, text.encode(), scope=None)
    assert [str(e) for e in report.file_errors] == ["line 5: more than 3 rows; split the file"]


def test_bom_crlf_semicolons_and_no_header_are_read(app, session):
    make_domain(session)
    data = (
        b"\xef\xbb\xbf"
        + f"a@example.test;8;imap;{GOOD}\r\nb@example.test;9;pop3;generate\r\n".encode()
    )
    report = run_import(session, data)
    assert report.applied, report.error_lines()
    session.commit()
    assert mailbox_count(session) == 2


def test_nul_quoted_newlines_extra_cells_and_blank_required_cells_are_row_errors(app, session):
    make_domain(session)
    text = (
        "address,quota,protocols,password\n"
        f"a\x00b@example.test,8,imap,{GOOD}\n"
        f'c@example.test,8,imap,"two\nlines long"\n'
        f"d@example.test,8,imap,{GOOD},extra\n"
        "e@example.test,,,\n"
        f"f@example.test,8,imap,pass\x00word-long\n"
    )
    report = run_import(session, text, dry_run=True)
    errors = errors_by_line(report)
    control = "must not contain control characters (NUL, tab, line breaks)"
    assert errors[2] == [("address", control)]
    assert errors[3] == [("password", control)]  # the row starts on line 3, spans two
    assert errors[5] == [(None, "5 cells where the header has 4 columns")]
    assert errors[6] == [
        ("quota", "This field is required."),
        ("protocols", "This field is required."),
        ("password", "This field is required."),
    ]
    assert errors[7] == [("password", control)]


def test_export_guards_formulas_and_imports_again_unchanged(app, session):
    make_domain(session, "example.test")
    make_mailbox(
        session,
        "-minus@example.test",
        quota_gb="12.5",
        protocols="both",
        contact_email="=cmd@customer.test",
        plan="trial",
        pop3_action="seen",
    )
    make_mailbox(session, "plain@example.test", protocols="pop3")
    exported = export_csv(session)
    lines = exported.split("\r\n")
    assert lines[0] == "address,quota,protocols,password,plan,contact,pop3_action"
    assert lines[1] == "'-minus@example.test,12.5,both,generate,trial,'=cmd@customer.test,seen"
    assert lines[2] == "plain@example.test,8,pop3,generate,paid,,keep"
    assert GOOD not in exported and "argon2" not in exported

    def state() -> list[tuple]:
        session.expire_all()
        return sorted(
            (m.address, m.quota_bytes, m.protocols, m.plan, m.contact_email, m.pop3_action)
            for m in session.scalars(select(Mailbox))
        )

    before = state()
    for mailbox in list(session.scalars(select(Mailbox))):
        provisioning.delete_mailbox(session, mailbox, actor=TEST_ACTOR)
    session.commit()
    report = run_import(session, exported)
    session.commit()
    assert report.applied, report.error_lines()
    assert state() == before
    assert export_csv(session) == exported


def test_export_of_some_domains_only(app, session):
    one = make_domain(session, "one.test")
    make_domain(session, "two.test")
    make_mailbox(session, "a@one.test")
    make_mailbox(session, "b@two.test")
    assert "b@two.test" not in export_csv(session, domain_ids={one.id})
    assert "a@one.test" in export_csv(session, domain_ids={one.id})


def test_passwords_hash_in_parallel_processes_and_verify(app):
    passwords = [f"parallel password {n}" for n in range(mailbox_csv.PARALLEL_HASH_MIN)]
    hashes = mailbox_csv.hash_passwords(passwords, workers=2)
    assert len(set(hashes)) == len(passwords)
    for password, stored in zip(passwords, hashes, strict=True):
        assert auth.verify_password(stored, password).ok


def test_maildirs_of_an_import_are_made_durable_by_one_sync_not_an_fsync_each(
    app, session, monkeypatch
):
    """~20 fsyncs per empty mailbox made 10,000 of them take minutes; one sync(2) before the
    commit makes them just as durable."""
    import os

    make_domain(session)
    calls = {"fsync": 0, "sync": 0}
    real_fsync, real_sync = os.fsync, os.sync

    def counting_fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    def counting_sync() -> None:
        calls["sync"] += 1
        real_sync()

    monkeypatch.setattr(os, "fsync", counting_fsync)
    monkeypatch.setattr(os, "sync", counting_sync)
    text = "".join(f"u{n}@example.test,8,imap,{GOOD}\n" for n in range(5))
    report = run_import(session, text, hash_workers=1)
    assert report.applied and calls == {"fsync": 0, "sync": 1}
    assert len(maildirs(app)) == 5
    # Outside an import, creating a mailbox fsyncs as before.
    storage.mail_store().create("single@example.test")
    assert calls["fsync"] >= 10 and calls["sync"] == 1


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("1e999999999", "quota must be between 8 and 100 GB, not 1e999999999 GB"),
        ("-1e-999999999", "quota must be between 8 and 100 GB, not -1e-999999999 GB"),
        ("NaN", "quota must be a number of GB, not 'NaN'"),
        ("9" * 400, "quota must be between 8 and 100 GB, not " + "9" * 32 + " GB"),
        ("ten", "quota must be a number of GB, not 'ten'"),
    ],
)
def test_huge_and_odd_quota_numbers_get_a_short_answer_at_once(app, session, cell, message):
    """A quota like 1e999999999 is a valid Decimal: written out in the message it would take a
    gigabyte (the same refusal the forms and `--quota-gb` give)."""
    make_domain(session)
    report = run_import(session, f"a@example.test,{cell},imap,generate\n", dry_run=True)
    assert report.error_lines() == [f"line 1: quota: {message}"]


def test_a_session_closed_without_commit_removes_the_maildirs_too(app, session):
    """A request that fails after the import and before its commit ends with the session
    removed, not rolled back: the Maildirs must go all the same."""
    make_domain(session)
    report = run_import(session, f"a@example.test,8,imap,{GOOD}\n")
    assert report.applied and maildirs(app) == ["a@example.test"]
    session.close()
    assert mailbox_count(session) == 0 and maildirs(app) == []


# --- hashes brought from another server -------------------------------------------------------


def _sha512_crypt(password: str, salt: str = "abcdefgh") -> str:
    crypt = pytest.importorskip("crypt", reason="no crypt module on this Python")
    return "{SHA512-CRYPT}" + crypt.crypt(password, f"$6${salt}")


def test_a_hash_in_the_password_cell_is_stored_as_it_is_and_never_hashed_again(
    app, session, monkeypatch
):
    make_domain(session)
    moved = _sha512_crypt("the old passphrase")
    argon2 = auth.hash_password("kept as well", auth.HashParams(8192, 1, 1))
    hashed: list[str] = []
    real_hash_passwords = mailbox_csv.hash_passwords

    def counting(passwords, workers=None):
        hashed.extend(passwords)
        return real_hash_passwords(passwords, workers)

    monkeypatch.setattr(mailbox_csv, "hash_passwords", counting)
    text = (
        "address,quota,protocols,password\r\n"
        f"moved@example.test,8,imap,{moved}\r\n"
        f'argon@example.test,8,imap,"{argon2}"\r\n'
        f"typed@example.test,8,imap,{GOOD}\r\n"
        "new@example.test,8,imap,generate\r\n"
    )
    dry = run_import(session, text, dry_run=True)
    assert [row.to_dict()["password_scheme"] for row in dry.rows] == [
        "{SHA512-CRYPT}",
        "{ARGON2ID}",
        None,
        None,
    ]
    assert [row.to_dict()["generate_password"] for row in dry.rows] == [False, False, False, True]
    report = run_import(session, text, hash_workers=1)
    session.commit()
    assert report.applied and [address for address, _ in report.passwords] == ["new@example.test"]
    # Only the typed password and the made-up one cost an argon2id.
    assert sorted(hashed) == sorted([GOOD, report.passwords[0][1]])
    stored = dict(session.execute(select(Mailbox.address, Mailbox.password_hash)).all())
    assert stored["moved@example.test"] == moved
    assert stored["argon@example.test"] == argon2
    assert auth.verify_password(stored["moved@example.test"], "the old passphrase").ok
    assert auth.verify_password(stored["typed@example.test"], GOOD).ok
    assert len(maildirs(app)) == 4
    # Export never writes a hash out: the column says generate, as for every mailbox.
    exported = list(csv.DictReader(io.StringIO(export_csv(session))))
    assert {row["password"] for row in exported} == {"generate"}


def test_a_malformed_or_unknown_hash_is_an_error_of_its_row_and_column(app, session):
    make_domain(session)
    good = _sha512_crypt("pw")
    bare = good.removeprefix("{SHA512-CRYPT}")
    text = (
        "address,quota,protocols,password\r\n"
        f"ok@example.test,8,imap,{good}\r\n"
        f"cut@example.test,8,imap,{good[:-5]}\r\n"
        "md5@example.test,8,imap,{MD5}1B2M2Y8AsgTpgAmY7PhCfg==\r\n"
        f"bare@example.test,8,imap,{bare}\r\n"
        "costly@example.test,8,imap,{BLF-CRYPT}$2y$31$" + "a" * 53 + "\r\n"
        "plain@example.test,8,imap,{PLAIN}short\r\n"
    )
    report = run_import(session, text)
    assert not report.applied and mailbox_count(session) == 0 and maildirs(app) == []
    errors = errors_by_line(report)
    assert 2 not in errors
    assert errors[3] == [
        (
            "password",
            "not a valid {SHA512-CRYPT} hash: expected $6$[rounds=N$]salt$ and 86 characters",
        )
    ]
    assert errors[4][0][0] == "password" and "unknown password scheme {MD5}" in errors[4][0][1]
    assert errors[5][0][0] == "password" and "without its scheme" in errors[5][0][1]
    assert errors[6][0][0] == "password" and "cost 31 is outside 04 to 14" in errors[6][0][1]
    # {PLAIN} is a password in clear: the password policy applies to it.
    assert errors[7] == [("password", "password must be at least 8 characters")]
    assert [error.where for error in report.errors][:1] == ["line 3, password"]


def test_an_unquoted_argon2_hash_splits_its_row_and_the_error_says_to_quote_it(app, session):
    make_domain(session)
    argon2 = auth.hash_password("pw", auth.HashParams(8192, 1, 1))
    with_header = f"address,quota,protocols,password\r\nx@example.test,8,imap,{argon2}\r\n"
    report = run_import(session, with_header, dry_run=True)
    assert report.errors[0].message == (
        "6 cells where the header has 4 columns; an argon2 hash holds commas (m=…,t=…,p=…): "
        "put it in double quotes"
    )
    # Without a header the pieces fit the optional columns: the password cell says it instead.
    report = run_import(session, f"x@example.test,8,imap,{argon2}\r\n", dry_run=True)
    assert (
        "password",
        "not a valid {ARGON2ID} hash: it ends at m=…; an argon2 hash holds "
        "commas (m=…,t=…,p=…): put it in double quotes",
    ) in errors_by_line(report)[1]


def test_a_maildir_left_half_made_by_a_crash_is_completed_not_refused(app, session):
    """The direct write of the tree leaves a place with anything in it to create()."""
    make_domain(session)
    store = storage.mail_store()
    leftover = store.path_for("half@example.test")
    (leftover / "tmp").mkdir(parents=True)
    (leftover / ".Sent" / "cur").mkdir(parents=True)
    report = run_import(session, f"half@example.test,8,imap,{GOOD}\n", hash_workers=1)
    session.commit()
    assert report.applied
    folders = [info.name for info in store.open("half@example.test").folders()]
    assert folders == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]


def test_many_maildirs_are_made_in_worker_processes_and_a_failure_there_undoes_all(
    app, session, monkeypatch
):
    make_domain(session, "example.test")
    make_domain(session, "blocked.test")
    monkeypatch.setattr(mailbox_csv, "PARALLEL_MAILDIR_MIN", 2)
    monkeypatch.setattr(mailbox_csv, "MAILDIR_CHUNK", 2)
    made_here: list[str] = []
    monkeypatch.setattr(mailbox_csv, "_make_in_threads", lambda store, a: made_here.extend(a))
    good = "".join(f"u{n}@example.test,8,imap,{_sha512_crypt('pw')}\n" for n in range(5))
    report = run_import(session, good, hash_workers=1)
    session.commit()
    assert report.applied and made_here == []
    assert maildirs(app) == [f"u{n}@example.test" for n in range(5)]

    # A domain directory that is a file: the worker process making that Maildir fails.
    (Path(app.config["DATA_DIR"]) / "mail" / "blocked.test").write_text("in the way")
    rows = "".join(f"v{n}@example.test,8,imap,generate\n" for n in range(5))
    with pytest.raises(OSError):
        run_import(session, rows + "x@blocked.test,8,imap,generate\n", hash_workers=1)
    session.rollback()
    assert mailbox_count(session) == 5
    assert maildirs(app) == [f"u{n}@example.test" for n in range(5)]
