"""Benchmark: deliveries per second over 10 parallel SMTP connections (20 KB messages).

Starts `provider serve --services smtp` as its own process on a fresh instance (SQLite by
default, or PostgreSQL with --postgres), then 10 client threads each send their share of
messages over one connection. Two scenarios: every connection delivering to its own mailbox,
and all ten delivering into one mailbox (the UID lock contended).

    .venv/bin/python bench/smtp_delivery.py [--messages 1000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

PROVIDER = str(Path(sys.executable).with_name("provider"))
CONNECTIONS = 10


def message(number: int, size: int = 20 * 1024) -> bytes:
    head = f"From: bench@outside.test\r\nTo: x\r\nSubject: bench {number}\r\n\r\n".encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return head + body[: size - len(head) - 2] + b"\r\n"


def provider(env: dict[str, str], *args: str, stdin: str = "") -> str:
    result = subprocess.run(
        [PROVIDER, *args], env=env, input=stdin, capture_output=True, text=True, check=True
    )
    return result.stdout


def run_scenario(env: dict[str, str], recipients: list[str], total: int) -> float:
    """Send `total` messages over CONNECTIONS connections; return deliveries per second."""
    server = subprocess.Popen(
        [PROVIDER, "serve", "--services", "smtp"],
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    port = 0
    for line in server.stdout:
        if line.startswith("smtp:"):
            port = int(line.split()[1].rsplit(":", 1)[1])
        if line.startswith("ready"):
            break
    assert port, "server did not start"
    threading.Thread(target=server.stdout.read, daemon=True).start()  # keep the pipe drained
    bodies = [message(n) for n in range(total)]
    errors: queue.Queue[BaseException] = queue.Queue()

    def client(worker: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
                for number in range(worker, total, CONNECTIONS):
                    rcpt = recipients[worker % len(recipients)]
                    assert smtp.sendmail("bench@outside.test", [rcpt], bodies[number]) == {}
        except BaseException as exc:
            errors.put(exc)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(CONNECTIONS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    server.terminate()
    server.wait(timeout=60)
    if not errors.empty():
        raise errors.get()
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--postgres", default=None, help="server URL; a bench database is made")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="provider-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVIDER_")}
    env.update(
        PROVIDER_INSTANCE_DIR=str(workdir),
        PROVIDER_SMTP_PORT="0",
        PROVIDER_ADMIN_PASSWORD="bench admin passphrase",
    )
    admin_engine = database = None
    if options.postgres:
        database = f"provider_bench_{uuid.uuid4().hex[:8]}"
        admin_engine = create_engine(options.postgres, isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{database}"'))
        url = make_url(options.postgres).set(database=database)
        env["PROVIDER_DATABASE_URL"] = url.render_as_string(hide_password=False)
    try:
        provider(env, "init")
        provider(env, "domain", "add", "bench.test")
        for n in range(CONNECTIONS):
            provider(
                env,
                "mailbox",
                "add",
                f"user{n}@bench.test",
                "--quota-gb",
                "100",
                "--protocols",
                "imap",
            )
        spread = run_scenario(
            env, [f"user{n}@bench.test" for n in range(CONNECTIONS)], options.messages
        )
        single = run_scenario(env, ["user0@bench.test"], options.messages)
        backend = "PostgreSQL" if options.postgres else "SQLite"
        print(f"{backend}: {options.messages} x 20 KB over {CONNECTIONS} connections")
        print(f"  10 mailboxes (one per connection): {spread:7.1f} deliveries/s")
        print(f"  1 mailbox (all connections):       {single:7.1f} deliveries/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if admin_engine is not None:
            with admin_engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            admin_engine.dispose()


if __name__ == "__main__":
    main()
