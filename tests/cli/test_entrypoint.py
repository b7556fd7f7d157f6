"""The installed `provider` command as a real process: init, the contract example, serve."""

from __future__ import annotations

import json
import os
import queue
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from subprocess import Popen
from typing import IO

import pytest

PROVIDER = str(Path(sys.executable).with_name("provider"))


@pytest.fixture
def environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVIDER_")}
    env.update(
        PROVIDER_INSTANCE_DIR=str(tmp_path / "instance"),
        PROVIDER_ADMIN_PASSWORD="an operator passphrase",
        PROVIDER_WEB_PORT="0",
    )
    return env


def run(
    environment: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROVIDER, *args], input=stdin, env=environment, capture_output=True, text=True, timeout=60
    )


def test_contract_example_from_a_fresh_instance(environment):
    init = run(environment, "init")
    assert init.returncode == 0, init.stderr
    assert init.stdout.startswith("Database created (schema ")
    assert "/admin/login" in init.stdout and "admin@example.com" in init.stdout
    again = run(environment, "init", "--json")
    assert json.loads(again.stdout)["database"] == "up to date"
    assert run(environment, "init").stdout.startswith("Database is up to date (schema ")
    assert run(environment, "domain", "add", "example.test").returncode == 0

    refused = run(
        environment,
        "mailbox",
        "add",
        "a@example.test",
        "--quota-gb",
        "7",
        "--protocols",
        "pop3",
        "--password-stdin",
        stdin="a long passphrase\n",
    )
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.strip().count("\n") == 0 and "between 8 and 100 GB" in refused.stderr

    created = run(
        environment,
        "mailbox",
        "add",
        "a@example.test",
        "--quota-gb",
        "8",
        "--protocols",
        "pop3",
        "--password-stdin",
        stdin="a long passphrase\n",
    )
    assert created.returncode == 0, created.stderr
    shown = run(environment, "mailbox", "show", "a@example.test", "--json")
    record = json.loads(shown.stdout)
    assert record["quota_bytes"] == 8589934592 and record["protocols"] == ["pop3"]
    assert run(environment, "mailbox", "show", "b@example.test").returncode == 1


def test_bad_setting_is_one_line_and_exit_1(environment):
    environment["PROVIDER_WEB_PORT"] = "web"
    result = run(environment, "domain", "list")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: PROVIDER_WEB_PORT must be a number, not 'web'"


class LineReader:
    """Collects a process's output lines on a thread, so waiting for one has a real deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._pump, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def until(self, marker: str, seconds: float) -> list[str]:
        """Lines up to and including the first that contains `marker`."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            self.seen.append(line)
            if marker in line:
                return self.seen
        raise AssertionError(f"{marker!r} not printed in {seconds} s; got {self.seen!r}")


@contextmanager
def serving(environment: dict[str, str], services: str) -> Iterator[tuple[Popen[str], list[str]]]:
    """`provider serve --services …` as a process, its startup lines once it says "ready"."""
    with subprocess.Popen(
        [PROVIDER, "serve", "--services", services],
        env={**environment, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        try:
            output = LineReader(process)
            process.output = output  # type: ignore[attr-defined]
            yield process, output.until("ready", 30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_answers_on_the_printed_address_and_stops_on_signal(environment, stop_signal):
    assert run(environment, "init").returncode == 0
    with serving(environment, "web,scheduler") as (process, lines):
        [web_line] = [line for line in lines if line.startswith("web: ")]
        login_url = web_line.split()[1]
        assert login_url.startswith("http://127.0.0.1:") and login_url.endswith("/admin/login")
        with urllib.request.urlopen(login_url, timeout=10) as response:
            assert response.status == 200
        health_url = login_url.replace("/admin/login", "/healthz")
        with urllib.request.urlopen(health_url, timeout=10) as response:
            # "ok", then each service of this `serve` and its state.
            assert response.read().decode().splitlines() == [
                "ok",
                "web: running",
                "scheduler: running",
            ]
        process.send_signal(stop_signal)
        assert process.wait(timeout=20) == 0
        assert process.output.until("stopped", 5)  # type: ignore[attr-defined]


def test_serve_runs_the_delivery_listeners_and_mail_arrives(environment):
    environment.update(PROVIDER_LMTP_PORT="0", PROVIDER_SMTP_PORT="0")
    assert run(environment, "init").returncode == 0
    assert run(environment, "domain", "add", "example.test").returncode == 0
    created = run(
        environment, "mailbox", "add", "a@example.test", "--quota-gb", "8", "--protocols", "imap"
    )
    assert created.returncode == 0, created.stderr
    with serving(environment, "lmtp,smtp") as (process, lines):
        ports = {
            line.split(":")[0]: int(line.split()[1].rsplit(":", 1)[1])
            for line in lines
            if line.startswith(("lmtp:", "smtp:"))
        }
        assert set(ports) == {"lmtp", "smtp"}
        mail = b"Subject: hi\r\n\r\nhello\r\n"
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=10) as client:
            client.sendmail("s@outside.test", ["a@example.test"], mail)
        with smtplib.LMTP("127.0.0.1", ports["lmtp"], timeout=10) as client:
            client.sendmail("s@outside.test", ["a@example.test"], mail)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    shown = json.loads(run(environment, "mailbox", "show", "a@example.test", "--json").stdout)
    instance = Path(environment["PROVIDER_INSTANCE_DIR"])
    inbox = instance / "mail" / "example.test" / "a" / "Maildir" / "new"
    assert len(list(inbox.iterdir())) == 2
    assert shown["used_bytes"] == sum(path.stat().st_size for path in inbox.iterdir())


def test_serve_runs_managesieve_and_prints_its_line(environment):
    """DESIGN.md §3 names managesieve among serve's services: it runs in the mail process,
    prints its bound address, and greets there."""
    assert run(environment, "init").returncode == 0
    environment["PROVIDER_MANAGESIEVE_PORT"] = "0"
    with serving(environment, "web,managesieve") as (process, lines):
        [line] = [line for line in lines if line.startswith("managesieve: ")]
        assert line.endswith("ManageSieve (STARTTLS)\n"), line
        host, port = line.split()[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            greeting = sock.makefile("rb").readline()
        assert greeting == b'"IMPLEMENTATION" "provider"\r\n'
        assert any(line.startswith("web: http://") for line in lines)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_help_lists_our_commands_only_and_starts_without_the_app(environment):
    """`provider --help` names our commands (not Flask's run/shell/routes/db or plugins) and
    loads neither the app nor SQLAlchemy: it is instant, and works with no database."""
    started = time.monotonic()
    result = run(environment, "--help")
    assert result.returncode == 0 and result.stderr == ""
    section = result.stdout.split("Commands:")[1].splitlines()
    listed = [line.split()[0] for line in section if line.startswith("  ") and line[2] != " "]
    for ours in ("init", "serve", "domain", "mailbox", "backup", "jobs", "sieve", "queue"):
        assert ours in listed
    for flasks in ("run", "shell", "routes", "db", "limiter"):
        assert flasks not in listed
    assert "dotenv" not in result.stdout + result.stderr
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, provider.cli; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('flask', 'sqlalchemy', 'provider')))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert probe.stdout.strip() == "['provider', 'provider.cli']", probe.stdout
    assert time.monotonic() - started < 30  # a sanity bound, not a timing test
    assert run(environment, "nonesuch").returncode == 2


def test_help_summaries_are_the_commands_own():
    from provider.cli import SUMMARIES
    from provider.commands import BY_NAME

    assert list(SUMMARIES) == list(BY_NAME)
    for name, command in BY_NAME.items():
        assert SUMMARIES[name] == command.get_short_help_str(limit=300), name
