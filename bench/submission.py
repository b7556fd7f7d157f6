"""Benchmark: messages/s accepted over authenticated submission, ours against Postfix's.

10 client processes (smtplib: EHLO, STARTTLS, EHLO, AUTH PLAIN, then MAIL/RCPT/DATA) each
submit 20 KB messages to a local recipient (one recipient per message, From: their own
address) over the same kind of connection on both servers: a new connection (TLS handshake +
AUTH) every --per-connection messages. A message counts once the server answered 250 to its
DATA, which on both sides means durably queued (ours: spool file fsynced and the queue row
committed; Postfix: cleanup fsynced the queue file). Both servers run in the same run, one
after the other, on the same machine, with the same certificate and the same password hashes:

* ours: `provider serve --services submission` on a fresh instance (SQLite by default,
  PostgreSQL with --postgres);
* Postfix's submission service (bench/postfix_submission.py): Dovecot SASL, Dovecot LMTP
  into Maildirs.

    python bench/submission.py [--messages 1000] [--per-connection 10] [--rounds 2]
                               [--postgres URL] [--only ours|postfix] [--profile SECONDS]
                               [--hold-delivery]

Ours has no queue runner in this measurement (the outbound service is not started): it only
accepts. --hold-delivery makes Postfix only accept too (defer_transports = lmtp).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import smtplib
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, make_url, text

from bench.dovecot import make_work_dir
from bench.postfix_submission import ReferenceUnavailable, running_reference
from bench.provider_target import provider_env, provider_serving, run_provider

CLIENTS = 10
DOMAIN = "bench.test"
PASSWORD = "bench submission passphrase"
PY_SPY = os.environ.get("PY_SPY", "py-spy")


def users() -> list[str]:
    return [f"user{n}@{DOMAIN}" for n in range(CLIENTS)]


def message(sender: str, recipient: str, number: int, size: int = 20 * 1024) -> bytes:
    head = (
        f"From: Bench <{sender}>\r\nTo: {recipient}\r\nSubject: bench {number}\r\n"
        f"Message-ID: <bench{number}.{uuid.uuid4().hex}@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return head + body[: size - len(head) - 2] + b"\r\n"


def client(
    worker: int, port: int, count: int, per_connection: int, start: float, results: Callable
) -> None:
    """One client process: `count` messages, a new authenticated TLS connection every
    `per_connection` of them."""
    addresses = users()
    sender = addresses[worker]
    recipient = addresses[(worker + 1) % CLIENTS]
    bodies = [message(sender, recipient, worker * 100_000 + n) for n in range(count)]
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    while time.time() < start:
        time.sleep(0.001)  # all clients start together (bounded: start is a few seconds away)
    sent = 0
    smtp: smtplib.SMTP | None = None
    try:
        while sent < count:
            if smtp is None or sent % per_connection == 0:
                if smtp is not None:
                    smtp.quit()
                smtp = smtplib.SMTP("127.0.0.1", port, timeout=120)
                smtp.ehlo("client.bench.test")
                smtp.starttls(context=context)
                smtp.ehlo("client.bench.test")
                smtp.login(sender, PASSWORD)
            refused = smtp.sendmail(sender, [recipient], bodies[sent])
            if refused:
                raise RuntimeError(f"refused: {refused}")
            sent += 1
        assert smtp is not None
        smtp.quit()
        results((worker, sent, time.time(), ""))
    except Exception as exc:  # reported by the parent, with how far this client got
        results((worker, sent, time.time(), f"{type(exc).__name__}: {exc}"))


def run_clients(port: int, total: int, per_connection: int) -> float:
    """Messages per second over CLIENTS processes; raises if any message was refused."""
    queue: multiprocessing.Queue = multiprocessing.Queue()
    start = time.time() + 1.0
    shares = [total // CLIENTS + (1 if n < total % CLIENTS else 0) for n in range(CLIENTS)]
    processes = [
        multiprocessing.Process(
            target=client, args=(n, port, shares[n], per_connection, start, queue.put)
        )
        for n in range(CLIENTS)
    ]
    for process in processes:
        process.start()
    outcomes = [queue.get(timeout=900) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    errors = [f"client {w}: {error} after {sent}" for w, sent, _, error in outcomes if error]
    if errors:
        raise RuntimeError("; ".join(errors))
    finished = max(moment for _, _, moment, _ in outcomes)
    return sum(sent for _, sent, _, _ in outcomes) / (finished - start)


def make_certificate(work: Path) -> tuple[Path, Path]:
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=bench.test", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o644)  # Postfix's smtpd reads it after dropping to its own user
    return cert, key


class Ours:
    """Our instance: made once, served per round."""

    def __init__(self, work: Path, cert: Path, key: Path, postgres: str | None) -> None:
        instance = work / "instance"
        self.env = provider_env(instance, instance / "data", "submission")
        self.env.update(
            PROVIDER_TLS_CERT=str(cert),
            PROVIDER_TLS_KEY=str(key),
            PROVIDER_SEND_LIMIT_PER_HOUR="10000000",
            PROVIDER_SEND_LIMIT_PER_DAY="10000000",
            PROVIDER_TRIAL_SEND_LIMIT_PER_HOUR="10000000",
            PROVIDER_TRIAL_SEND_LIMIT_PER_DAY="10000000",
        )
        self.admin_engine = None
        self.database: str | None = None
        if postgres:
            self.database = f"provider_bench_{uuid.uuid4().hex[:8]}"
            self.admin_engine = create_engine(postgres, isolation_level="AUTOCOMMIT")
            with self.admin_engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{self.database}"'))
            url = make_url(postgres).set(database=self.database)
            self.env["PROVIDER_DATABASE_URL"] = url.render_as_string(hide_password=False)
        run_provider(self.env, "init")
        run_provider(self.env, "domain", "add", DOMAIN)
        for user in users():
            run_provider(
                self.env,
                *("mailbox", "add", user, "--quota-gb", "100", "--protocols", "imap"),
                "--password-stdin",
                stdin=PASSWORD + "\n",
            )
        self.hashes = self._password_hashes(instance)

    def _password_hashes(self, instance: Path) -> dict[str, str]:
        query = "SELECT address, password_hash FROM mailboxes"
        if self.database is None:
            with sqlite3.connect(instance / "provider.db") as connection:
                return dict(connection.execute(query).fetchall())
        url = self.env["PROVIDER_DATABASE_URL"]
        engine = create_engine(url)
        with engine.connect() as connection:
            rows = connection.execute(text(query)).fetchall()
        engine.dispose()
        return {row[0]: row[1] for row in rows}

    def run(self, total: int, per_connection: int, profile: float) -> float:
        with provider_serving(self.env, "submission") as (_host, port):
            spies = start_py_spy(self.env, profile) if profile else []
            rate = run_clients(port, total, per_connection)
            for spy in spies:
                spy.wait(timeout=profile + 120)
            return rate

    def close(self) -> None:
        if self.admin_engine is not None:
            with self.admin_engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
            self.admin_engine.dispose()


def start_py_spy(env: dict[str, str], seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy on every mail process of the instance (one raw stack file per process)."""
    run_dir = Path(env["PROVIDER_INSTANCE_DIR"]) / "run"
    pids: list[int] = []
    for status in run_dir.glob("serve-*.json"):
        for service in json.loads(status.read_text())["services"]:
            if service["name"] in ("mail", "submission"):
                pids.extend(service["pids"])
    spies = []
    for pid in pids:
        output = Path(f"/tmp/submission-profile-{pid}.txt")
        print(f"py-spy on mail process {pid}: {output}", flush=True)
        spies.append(
            subprocess.Popen(
                [
                    *(PY_SPY, "record", "--format", "raw", "--nonblocking", "--threads"),
                    *("-d", str(int(seconds)), "-o", str(output), "--pid", str(pid)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return spies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="per server and round")
    parser.add_argument("--per-connection", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="alternating ours/Postfix")
    parser.add_argument("--postgres", default=None, help="server URL; a bench database is made")
    parser.add_argument("--only", choices=("ours", "postfix"), default=None)
    parser.add_argument("--profile", type=float, default=0, help="py-spy our server N seconds")
    parser.add_argument(
        "--hold-delivery",
        action="store_true",
        help="Postfix keeps accepted mail queued (no LMTP delivery while measuring)",
    )
    options = parser.parse_args()

    work = make_work_dir("provider-submission-bench-")
    ours: Ours | None = None
    try:
        cert, key = make_certificate(work)
        ours = Ours(work, cert, key, options.postgres)
        results: dict[str, list[float]] = {"ours": [], "postfix": []}
        (work / "reference").mkdir(mode=0o755)
        with running_reference(
            work / "reference", ours.hashes, cert, key, hold_delivery=options.hold_delivery
        ) as reference:
            for _ in range(options.rounds):
                if options.only != "postfix":
                    rate = ours.run(options.messages, options.per_connection, options.profile)
                    results["ours"].append(rate)
                    print(f"ours:    {rate:7.1f} msg/s", flush=True)
                if options.only != "ours":
                    rate = run_clients(reference.port, options.messages, options.per_connection)
                    results["postfix"].append(rate)
                    print(f"postfix: {rate:7.1f} msg/s", flush=True)
            delivered = reference.delivered()
        backend = "PostgreSQL" if options.postgres else "SQLite"
        print(
            f"{backend}: {CLIENTS} clients x {options.messages} messages of 20 KB per round, "
            f"a new TLS+AUTH connection every {options.per_connection}; "
            f"Postfix delivered {delivered} by Dovecot LMTP meanwhile"
            + (" (delivery held)" if options.hold_delivery else "")
        )
        if results["ours"] and results["postfix"]:
            best_ours, best_postfix = max(results["ours"]), max(results["postfix"])
            print(
                f"best: ours {best_ours:.1f} msg/s, Postfix {best_postfix:.1f} msg/s, "
                f"ratio {best_ours / best_postfix:.2f}"
            )
            mean_ours = sum(results["ours"]) / len(results["ours"])
            mean_postfix = sum(results["postfix"]) / len(results["postfix"])
            print(
                f"mean: ours {mean_ours:.1f} msg/s, Postfix {mean_postfix:.1f} msg/s, "
                f"ratio {mean_ours / mean_postfix:.2f}"
            )
    except ReferenceUnavailable as exc:
        sys.exit(f"reference not available: {exc}")
    finally:
        if ours is not None:
            ours.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    tempfile.tempdir = None
    main()
