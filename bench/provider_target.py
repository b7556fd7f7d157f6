"""The benchmarks' "provider" target: an instance over existing Maildirs, and `provider serve`."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from provider.mailstore import MailStore

PROVIDER = str(Path(sys.executable).with_name("provider"))


class TargetUnavailable(Exception):
    """The target cannot be benchmarked here; the message is one line saying why."""


def provider_env(instance: Path, data: Path, service: str) -> dict[str, str]:
    """The environment of a provider instance in `instance` whose DATA_DIR is `data`, with the
    service's listeners on free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVIDER_")}
    name = service.upper()
    env.update(
        PROVIDER_INSTANCE_DIR=str(instance),
        PROVIDER_DATA_DIR=str(data),
        PROVIDER_ADMIN_PASSWORD=f"{service} bench admin passphrase",
        PYTHONUNBUFFERED="1",
        **{f"PROVIDER_{name}_PORT": "0", f"PROVIDER_{name}S_PORT": "0"},
    )
    return env


def run_provider(env: dict[str, str], *args: str, stdin: str = "") -> str:
    result = subprocess.run(
        [PROVIDER, *args], env=env, input=stdin, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise TargetUnavailable(
            f"provider {' '.join(args[:2])} failed: {result.stderr.strip().splitlines()[-1:]}"
        )
    return result.stdout


@contextlib.contextmanager
def provider_serving(env: dict[str, str], service: str) -> Iterator[tuple[str, int]]:
    """`provider serve --services SERVICE`; yields where its first listener (the STARTTLS or
    STLS port) listens, or raises TargetUnavailable when this version does not have it."""
    with provider_process(env, service) as (host, port, _pid):
        yield host, port


@contextlib.contextmanager
def provider_process(env: dict[str, str], service: str) -> Iterator[tuple[str, int, int]]:
    """provider_serving, also yielding the process id of `provider serve` (the root of its
    process tree, for CPU accounting)."""
    server = subprocess.Popen(
        [PROVIDER, "serve", "--services", service],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    try:
        address: tuple[str, int] | None = None
        output: list[str] = []
        for line in server.stdout:
            output.append(line.rstrip())
            if line.strip() == f"{service}: not available in this version, skipped":
                raise TargetUnavailable(f"provider: {service} not available in this version")
            match = re.match(rf"{service}: (\S+):(\d+)", line)
            if match:
                address = (match.group(1), int(match.group(2)))
            if line.startswith("ready"):
                break
        if address is None:
            raise TargetUnavailable(f"provider serve did not start {service}: {output[-3:]}")
        threading.Thread(target=server.stdout.read, daemon=True).start()  # keep the pipe drained
        yield (*address, server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=60)


def add_mailboxes(
    env: dict[str, str], data: Path, domain: str, users: list[str], password: str
) -> None:
    """The domain and its mailboxes (both protocols), over Maildirs that may already hold the
    messages: `mailbox add` must keep them, which is checked."""
    store = MailStore(data / "mail")
    before = {user: len(store.open(user).folder("INBOX").messages()) for user in users}
    run_provider(env, "domain", "add", domain)
    for user in users:
        run_provider(
            env,
            *("mailbox", "add", user, "--quota-gb", "100", "--protocols", "imap,pop3"),
            "--password-stdin",
            stdin=password + "\n",
        )
    after = {user: len(store.open(user).folder("INBOX").messages()) for user in users}
    if after != before:
        raise TargetUnavailable(f"provider mailbox add changed the Maildirs: {before} -> {after}")


@contextlib.contextmanager
def private_database(url: str | None) -> Iterator[str | None]:
    """A PostgreSQL URL becomes a fresh database of our own on that server, dropped at the end
    (never the shared one's tables); None (SQLite, the caller's file) stays None."""
    if not url or not url.startswith("postgresql"):
        yield url
        return
    from sqlalchemy import create_engine, make_url, text

    server = make_url(url)
    name = f"bench_{os.getpid()}_{threading.get_ident() % 100_000}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
