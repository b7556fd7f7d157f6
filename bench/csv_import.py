"""Benchmark: import 10,000 mailboxes from CSV (dry run, then apply and commit), phase by phase.

    .venv/bin/python bench/csv_import.py [--rows 10000] [--passwords mixed|plain|generate|hashed]
                                         [--hash-workers N] [--database-url URL]

Writes a CSV of N rows over 10 domains (by default half with a password, half `generate`;
`--passwords hashed`: every row a hash from another server, {SHA512-CRYPT}, {BLF-CRYPT},
{ARGON2ID} and {SSHA512} in turn, as a migration brings them; mixed quotas, protocols and
plans), then times, through the same service the CLI and the panel call: the dry
run (read + check every row), and the apply (check again, argon2id hashing in worker processes,
Maildirs in threads at the same time, inserts and audit rows) with its commit. Prints the load
average before and after, since the machine may be shared. With --database-url (PostgreSQL) a
throwaway database is made on that server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_migrate import upgrade
from sqlalchemy import func, select

from bench.provider_target import private_database
from provider import create_app
from provider.extensions import db
from provider.models import Mailbox
from provider.services import mailbox_csv, provisioning
from provider.services.audit import Actor

ACTOR = Actor("bench")
DOMAINS = [f"bench{n}.test" for n in range(10)]


def migrated_hashes(count: int = 24) -> list[str]:
    """A few real hashes of the schemes a migration brings (computing 10,000 would take longer
    than the import: the rows take them in turn)."""
    import base64
    import hashlib
    import warnings

    from provider.services import auth

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    made = []
    for n in range(count):
        password, salt = f"migrated passphrase {n:06d}", f"salt{n:04d}"
        kind = n % 4
        if kind == 0:
            made.append("{SHA512-CRYPT}" + crypt.crypt(password, f"$6${salt}"))
        elif kind == 1:
            made.append("{BLF-CRYPT}" + crypt.crypt(password, f"$2y$05${salt:.<22}"))
        elif kind == 2:
            made.append(auth.hash_password(password))
        else:
            digest = hashlib.sha512(password.encode() + salt.encode()).digest()
            made.append("{SSHA512}" + base64.b64encode(digest + salt.encode()).decode())
    return made


def quoted(cell: str) -> str:
    """An argon2 hash holds commas (`m=…,t=…,p=…`): quoted, as a spreadsheet writes it."""
    return '"' + cell.replace('"', '""') + '"' if "," in cell or '"' in cell else cell


def make_csv(rows: int, passwords: str = "mixed") -> bytes:
    lines = ["address,quota,protocols,password,plan,contact"]
    protocols = ("imap", "pop3", "both")
    hashes = migrated_hashes() if passwords == "hashed" else []
    for n in range(rows):
        if passwords == "hashed":
            password = hashes[n % len(hashes)]
        elif passwords == "generate" or (passwords == "mixed" and n % 2):
            password = "generate"
        else:
            password = f"bench passphrase {n:06d}"
        plan = "trial" if n % 7 == 0 else "paid"
        lines.append(
            f"user{n:05d}@{DOMAINS[n % len(DOMAINS)]},{8 + n % 93},{protocols[n % 3]},"
            f"{quoted(password)},{plan},owner{n}@customer.test"
        )
    return ("\r\n".join(lines) + "\r\n").encode()


@contextmanager
def database(url: str | None, workdir: str) -> Iterator[str]:
    with private_database(url) as private:
        yield private or f"sqlite:///{workdir}/bench.db"


def timed(name: str, timings: dict[str, float], function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timings[name] = time.perf_counter() - started

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument(
        "--passwords",
        choices=("mixed", "plain", "generate", "hashed"),
        default="mixed",
        help="the password column: half and half, all passwords, all generate, all hashes",
    )
    parser.add_argument(
        "--maildirs",
        choices=("auto", "threads"),
        default="auto",
        help="auto: worker processes from PARALLEL_MAILDIR_MIN on; threads: always threads",
    )
    parser.add_argument("--hash-workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument(
        "--cheap-hash",
        action="store_true",
        help="argon2id at m=1024 KiB, t=1 (NOT the product's cost): what all but hashing costs",
    )
    options = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    if options.maildirs == "threads":
        mailbox_csv.PARALLEL_MAILDIR_MIN = 10**9
    print(f"cores: {cores}; load average before: {' '.join(map(str, os.getloadavg()))}")

    with tempfile.TemporaryDirectory() as workdir, database(options.database_url, workdir) as url:
        config: dict[str, Any] = {
            "INSTANCE_DIR": workdir,
            "SECRET_KEY": "bench",
            "DATABASE_URL": url,
        }
        if options.cheap_hash:
            config.update(PASSWORD_HASH_MEMORY_KIB=1024, PASSWORD_HASH_TIME_COST=1)
        app = create_app(config)
        with app.app_context():
            upgrade(directory=app.extensions["migrate"].directory)
            for name in DOMAINS:
                provisioning.create_domain(db.session, name, actor=ACTOR)
            db.session.commit()
            data = make_csv(options.rows, options.passwords)
            print(f"file: {options.rows:,} rows ({options.passwords}), {len(data):,} bytes")

            started = time.perf_counter()
            report = mailbox_csv.check_import(db.session, data, scope=None)
            dry_run = time.perf_counter() - started
            assert report.ok, report.error_lines()[:5]
            db.session.rollback()
            print(f"dry run (read + check every row):  {dry_run:6.1f} s")

            timings: dict[str, float] = {}
            mailbox_csv.hash_passwords = timed("hash", timings, mailbox_csv.hash_passwords)
            mailbox_csv._make_maildirs = timed("maildirs", timings, mailbox_csv._make_maildirs)
            mailbox_csv._insert = timed("insert", timings, mailbox_csv._insert)
            started = time.perf_counter()
            report = mailbox_csv.import_mailboxes(
                db.session, data, scope=None, actor=ACTOR, hash_workers=options.hash_workers
            )
            db.session.commit()
            total = time.perf_counter() - started
            assert report.applied
            created = db.session.scalar(select(func.count()).select_from(Mailbox))
            assert created == options.rows, created
            workers = options.hash_workers or cores
            hashed = options.rows - sum(1 for row in report.rows if row.new.password_hash)
            per_hash = timings["hash"] / hashed * 1000 * workers if hashed else 0.0
            print(
                f"  argon2id hashing, {hashed:,} passwords, {workers} processes: "
                f"{timings['hash']:6.1f} s  ({per_hash:.1f} ms per hash per process)"
            )
            makers = (
                f"{cores} processes"
                if options.rows >= mailbox_csv.PARALLEL_MAILDIR_MIN and cores > 1
                else f"{mailbox_csv.MAILDIR_THREADS} threads"
            )
            print(
                f"  Maildirs, {makers} (beside the hashing and inserts): "
                f"{timings['maildirs']:6.1f} s"
            )
            print(f"  rows + audit events inserted (meanwhile): {timings['insert']:6.1f} s")
            print(f"apply (check, hash, Maildirs, insert, commit): {total:6.1f} s")
            print(f"made-up passwords returned: {len(report.passwords):,}")
            db.session.remove()
    print(f"load average after: {' '.join(map(str, os.getloadavg()))}")


if __name__ == "__main__":
    main()
