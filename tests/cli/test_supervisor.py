"""`provider serve` as a supervisor, as real processes: children restarted after a crash and
shown as such, Ctrl-C and SIGTERM, a taken port, an unusable database, what customers are told."""

from __future__ import annotations

import http.cookiejar
import imaplib
import json
import multiprocessing
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_entrypoint import LineReader, environment, run
from tests.conftest import wait_until

__all__ = ["environment"]  # the fixture, shared with test_entrypoint
PROVIDER = str(Path(sys.executable).with_name("provider"))
PASSWORD = "a long passphrase"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "an operator passphrase"  # the `environment` fixture's
MAIL_PORTS = ("IMAP", "IMAPS", "POP3", "POP3S", "LMTP", "SMTP", "SUBMISSION", "SUBMISSIONS")


@dataclass
class Served:
    """A running `provider serve`: its process, output, start-up lines and where it listens."""

    process: subprocess.Popen[str]
    output: LineReader
    lines: list[str]
    instance: Path

    def port(self, name: str) -> int:
        [line] = [line for line in self.lines if line.startswith(f"{name}: ")]
        return int(line.split()[1].rsplit(":", 1)[1])

    def url(self, path: str) -> str:
        [line] = [line for line in self.lines if line.startswith("web: ")]
        return line.split()[1].replace("/admin/login", path)

    def status(self) -> dict[str, Any]:
        path = self.instance / "run" / f"serve-{self.process.pid}.json"
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def pids(self, service: str) -> list[int]:
        [record] = [s for s in self.status()["services"] if s["name"] == service]
        return list(record["pids"])


@contextmanager
def supervised(environment: dict[str, str], services: str) -> Iterator[Served]:
    """`provider serve` in a process group of its own, as a shell starts a command."""
    with subprocess.Popen(
        [PROVIDER, "serve", "--services", services],
        env={**environment, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    ) as process:
        try:
            output = LineReader(process)
            lines = output.until("ready", 60)
            yield Served(process, output, list(lines), Path(environment["PROVIDER_INSTANCE_DIR"]))
        finally:
            if process.poll() is None:
                process.kill()  # its children get SIGTERM from the kernel (PDEATHSIG)
                process.wait()


@pytest.fixture
def mail_environment(environment: dict[str, str]) -> dict[str, str]:
    """Every port free-chosen, one mail worker, a first admin, one IMAP mailbox with PASSWORD."""
    environment.update({f"PROVIDER_{name}_PORT": "0" for name in MAIL_PORTS})
    # One mail process to kill and watch (tests/serve/ runs several).
    environment["PROVIDER_MAIL_WORKERS"] = "1"
    # urllib's cookie jar keeps Secure cookies for https only; the flags are not tested here.
    environment["PROVIDER_COOKIE_SECURE"] = "false"
    assert run(environment, "init").returncode == 0
    assert run(environment, "domain", "add", "example.test").returncode == 0
    created = run(
        environment,
        *("mailbox", "add", "a@example.test", "--quota-gb", "8", "--protocols", "imap"),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert created.returncode == 0, created.stderr
    return environment


def imap_login(port: int) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    client.login("a@example.test", PASSWORD)
    assert client.select("INBOX")[0] == "OK"
    return client


def health(served: Served) -> tuple[int, list[str]]:
    try:
        with urllib.request.urlopen(served.url("/healthz"), timeout=10) as response:
            return response.status, response.read().decode().splitlines()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode().splitlines()


def admin_session(served: Served) -> urllib.request.OpenerDirector:
    """A logged-in admin browser: GET the form, POST e-mail, password and its CSRF token."""
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    with opener.open(served.url("/admin/login"), timeout=10) as response:
        assert response.status == 200
        form = response.read().decode()
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form) or re.search(
        r'name="csrf_token"[^>]*value="([^"]+)"', form
    )
    assert token, form
    fields = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token.group(1)}
    body = urllib.parse.urlencode(fields).encode()
    with opener.open(served.url("/admin/login"), data=body, timeout=10) as response:
        assert response.status == 200 and response.url.endswith("/admin/"), response.url
    return opener


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (nobody may reap orphans in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


# --- item 1: a crashed child is restarted, and shown ---------------------------------------------


def test_a_killed_mail_process_is_restarted_and_shown_on_healthz_and_the_dashboard(
    mail_environment,
):
    with supervised(mail_environment, "web,imap,scheduler") as served:
        port = served.port("imap")
        imap_login(port).logout()
        [mail_pid] = served.pids("mail")
        web_pids = served.pids("web")

        os.kill(mail_pid, signal.SIGKILL)
        served.output.until("mail: killed by SIGKILL; restarting in 1 s", 30)
        served.output.until("mail: restarted", 60)

        # The same port (the supervisor kept it open): a new IMAP session works.
        imap_login(port).logout()
        [new_pid] = served.pids("mail")
        assert new_pid != mail_pid and served.pids("web") == web_pids
        status, lines = health(served)
        assert status == 200 and lines[0] == "ok"
        assert lines[1] == "web: running"
        assert lines[2].startswith("mail: running, restarted 1 time, last at ")
        assert lines[2].endswith(" UTC (killed by SIGKILL)")
        assert lines[3] == "scheduler: running"

        with admin_session(served).open(served.url("/admin/"), timeout=10) as response:
            page = response.read().decode()
        assert 'data-key="mail" data-state="running" data-restarts="1"' in page
        assert "restarted 1 time, last at" in page

        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0
    assert not (served.instance / "run" / f"serve-{served.process.pid}.json").exists()


def test_healthz_names_a_service_that_is_down(mail_environment):
    """Between a crash and the restart, /healthz names the service that is down."""
    with supervised(mail_environment, "web,imap") as served:
        [mail_pid] = served.pids("mail")
        os.kill(mail_pid, signal.SIGKILL)
        served.output.until("mail: killed by SIGKILL; restarting in 1 s", 30)
        # The supervisor, frozen in its back-off, cannot restart it while we look.
        os.kill(served.process.pid, signal.SIGSTOP)
        try:
            status, lines = health(served)
        finally:
            os.kill(served.process.pid, signal.SIGCONT)
        assert status == 200
        assert lines == ["ok", "web: running", "mail: restarting"]
        served.output.until("mail: restarted", 60)
        status, lines = health(served)
        assert status == 200 and lines[2].startswith("mail: running, restarted 1 time")


# --- Ctrl-C, SIGTERM, a killed supervisor --------------------------------------------------------


def test_ctrl_c_to_the_process_group_stops_everything_cleanly_with_an_idle_client(
    mail_environment,
):
    with supervised(mail_environment, "web,imap,pop3,lmtp,smtp,scheduler") as served:
        children = [pid for s in served.status()["services"] for pid in s["pids"]]
        assert len(children) == 3
        # The open-file limit was raised to what the system allows, for every process.
        limits = Path(f"/proc/{served.pids('mail')[0]}/limits").read_text()
        [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
        soft, hard = line.split()[3:5]
        assert soft == hard
        client = imap_login(served.port("imap"))
        client.send(b"i1 IDLE\r\n")
        assert client.readline().startswith(b"+")

        os.killpg(served.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert served.process.wait(60) == 0
        served.output.until("stopped", 10)
        while client.readline():  # a BYE where the session says one, then the end
            pass
        client.shutdown()
    printed = "".join(served.output.seen)
    assert "Traceback" not in printed and "Error" not in printed, printed
    assert "SIGINT received, stopping…" in printed
    assert not any(alive(pid) for pid in children)


def test_a_killed_supervisor_takes_its_children_with_it(mail_environment):
    with supervised(mail_environment, "web,imap") as served:
        children = served.pids("web") + served.pids("mail")
        port = served.port("imap")
        served.process.kill()
        served.process.wait()
        assert wait_until(lambda: not any(alive(pid) for pid in children), timeout=30)
        assert refused(port)


# --- item 18: a taken port -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "label"), [("WEB_PORT", "web"), ("IMAP_PORT", "IMAP"), ("SMTP_PORT", "SMTP")]
)
def test_a_taken_port_is_named_with_the_setting_that_moves_it(environment, setting, label):
    environment.update({f"PROVIDER_{name}_PORT": "0" for name in MAIL_PORTS})
    assert run(environment, "init").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment[f"PROVIDER_{setting}"] = str(port)
        result = run(environment, "serve", "--services", "web,imap,smtp,scheduler")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: {label} port 127.0.0.1:{port} is already in use; "
        f"set PROVIDER_{setting} to another port\n"
    )


# --- item 13: a database that cannot be used -----------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing listens on (bound, so that nothing else takes it meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


COMMANDS = [["init"], ["serve"], ["domain", "list"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_unreachable_postgresql_is_one_line_naming_the_masked_url(
    environment, closed_port, command
):
    environment["PROVIDER_DATABASE_URL"] = (
        f"postgresql+psycopg://provider:s3cret@127.0.0.1:{closed_port}/provider"
    )
    result = run(environment, *command)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"Error: cannot use the database postgresql+psycopg://provider:***@127.0.0.1:"
        f"{closed_port}/provider: "
    )
    assert "Connection refused" in line and "s3cret" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_sqlite_in_a_missing_directory_is_one_line_saying_so(environment, tmp_path, command):
    missing = tmp_path / "no" / "such" / "dir"
    environment["PROVIDER_DATABASE_URL"] = f"sqlite:///{missing}/provider.db"
    result = run(environment, *command)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: cannot use the database sqlite:///{missing}/provider.db: "
        f"directory {missing} does not exist\n"
    )


def test_a_database_never_set_up_says_to_run_init(environment, tmp_path):
    environment["PROVIDER_DATABASE_URL"] = f"sqlite:///{tmp_path}/empty.db"
    result = run(environment, "domain", "list")
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: the database sqlite:///{tmp_path}/empty.db has no tables yet; "
        "run `provider init` first\n"
    )


# --- item 16 (start-up half): what customers are told --------------------------------------------


def test_start_up_says_what_customers_are_told_next_to_the_real_listeners(mail_environment):
    mail_environment.update(
        PROVIDER_PUBLIC_IMAP_HOST="imap.example.com",
        PROVIDER_PUBLIC_IMAP_PORT="993",
        PROVIDER_PUBLIC_POP3_HOST="",
        PROVIDER_PUBLIC_POP3_PORT="0",
        PROVIDER_PUBLIC_SMTP_HOST="smtp.example.com",
        PROVIDER_PUBLIC_SMTP_PORT="587",
    )
    with supervised(mail_environment, "imap,pop3") as served:
        by_name = {line.split(":")[0]: line.rstrip("\n") for line in served.lines}
        imaps = served.port("imaps")
        assert by_name["imaps"] == (
            f"imaps: 127.0.0.1:{imaps}  IMAP (implicit TLS)  — customers are told "
            "imap.example.com:993"
        )
        assert by_name["imap"].endswith("IMAP (STARTTLS)")  # not what customers are told
        assert by_name["pop3s"].endswith("POP3 (implicit TLS)")  # unset: nothing extra
        assert by_name["submission"] == (
            "submission: not served here  — customers are told smtp.example.com:587"
        )
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0


# --- issue 12: submission under `provider serve` --------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_serve_runs_submission_and_autoconfig_names_it(mail_environment, tmp_path):
    # Fixed ports: autoconfig names no listener whose port is picked at start.
    submission_port, submissions_port = free_port(), free_port()
    mail_environment.update(
        PROVIDER_SUBMISSION_PORT=str(submission_port),
        PROVIDER_SUBMISSIONS_PORT=str(submissions_port),
    )
    with supervised(mail_environment, "web,submission") as served:
        by_name = {line.split(":")[0]: line.rstrip("\n") for line in served.lines}
        assert by_name["submission"] == (
            f"submission: 127.0.0.1:{submission_port}  submission (STARTTLS, AUTH)"
        )
        assert by_name["submissions"] == (
            f"submissions: 127.0.0.1:{submissions_port}  submission (implicit TLS)"
        )
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP_SSL("127.0.0.1", submissions_port, timeout=10, context=context) as smtp:
            smtp.login("a@example.test", PASSWORD)
            message = b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nHi\r\n"
            smtp.mail("a@example.test")
            smtp.rcpt("b@remote.test")
            code, text = smtp.data(message)
            assert code == 250 and text.startswith(b"2.0.0 Ok: queued as ")
        queue_id = text.decode().rsplit(" ", 1)[1]
        spooled = served.instance / "queue" / f"{queue_id}.eml"
        assert spooled.read_bytes().endswith(message)
        url = served.url("/mail/config-v1.1.xml") + "?emailaddress=a%40example.test"
        with urllib.request.urlopen(url, timeout=10) as response:
            xml = response.read().decode()
        outgoing = xml[xml.index("<outgoingServer") : xml.index("</outgoingServer>")]
        assert f"<port>{submissions_port}</port>" in outgoing
        assert "<socketType>SSL</socketType>" in outgoing
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0


def test_serve_runs_submission_by_default():
    from provider.commands import serve_command
    from provider.serve import KNOWN_SERVICES, MAIL_SERVICES

    [option] = [p for p in serve_command.params if p.name == "services"]
    assert "submission" in str(option.default).split(",")
    assert "submission" in KNOWN_SERVICES and "submission" in MAIL_SERVICES


# --- a service that cannot start ------------------------------------------------------------------


def test_a_service_that_cannot_start_stops_start_up_with_one_line(mail_environment):
    mail_environment["PROVIDER_JOB_BACKUP_CRON"] = "every day at two"
    result = run(mail_environment, "serve", "--services", "web,imap,scheduler")
    assert result.returncode == 1
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert error.startswith("Error: scheduler: JOB_BACKUP_CRON: ")
    assert "Traceback" not in result.stdout + result.stderr
    assert "ready" not in result.stdout


def test_serve_on_a_database_never_set_up_says_to_run_init(environment, tmp_path):
    environment["PROVIDER_DATABASE_URL"] = f"sqlite:///{tmp_path}/empty.db"
    result = run(environment, "serve", "--services", "web")
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: the database sqlite:///{tmp_path}/empty.db has no tables yet; "
        "run `provider init` first\n"
    )


# --- item 11: quota reservations of a writer that died are settled by serve ---------------------


def _hold_and_die(environment: dict[str, str], nbytes: int) -> None:
    """Child process: reserve `nbytes` for a@example.test (journaled, as a delivery does), then
    die by SIGKILL before writing anything, as a kill -9 mid-delivery leaves it."""
    os.environ.update(environment)
    from provider import create_app
    from provider.extensions import db
    from provider.models import Mailbox
    from provider.services import quota

    app = create_app()
    with app.app_context():
        mailbox = db.session.scalar(db.select(Mailbox).where(Mailbox.address == "a@example.test"))
        assert mailbox is not None
        assert quota.hold(db.session, mailbox.id, nbytes) is not None
    os.kill(os.getpid(), signal.SIGKILL)


def killed_writer(environment: dict[str, str], nbytes: int = 5000) -> None:
    child = multiprocessing.get_context("spawn").Process(
        target=_hold_and_die, args=(environment, nbytes)
    )
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL


def used_bytes(environment: dict[str, str]) -> int:
    shown = run(environment, "mailbox", "show", "a@example.test", "--json")
    return int(json.loads(shown.stdout)["used_bytes"])


def test_serve_settles_a_dead_writers_reservation_before_serving(mail_environment):
    killed_writer(mail_environment)
    assert used_bytes(mail_environment) == 5000  # counted, though nothing is on disk
    with supervised(mail_environment, "imap") as served:
        assert used_bytes(mail_environment) == 0
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0


def test_a_restarted_child_settles_what_the_dead_one_left(mail_environment):
    with supervised(mail_environment, "imap") as served:
        killed_writer(mail_environment)  # as if the mail process died mid-delivery
        assert used_bytes(mail_environment) == 5000
        [mail_pid] = served.pids("mail")
        os.kill(mail_pid, signal.SIGKILL)
        served.output.until("mail: restarted", 60)
        # It settles once it serves (a big mailbox's recount must not delay the listeners).
        assert wait_until(lambda: used_bytes(mail_environment) == 0, timeout=60, interval=0.5)
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0


def test_a_status_file_that_cannot_be_written_does_not_stop_the_supervisor(tmp_path):
    """A full disk (here: a directory that is not there) must not take every service down."""
    from provider.supervisor import Supervisor

    supervisor = Supervisor([], tmp_path / "gone" / "serve-1.json", echo=lambda _line: None)
    try:
        supervisor.write_status()  # raised FileNotFoundError before
    finally:
        supervisor.close()
    assert not (tmp_path / "gone").exists()


def test_submission_runs_one_process_per_core_beside_the_mail_process(mail_environment):
    """Submission is CPU-bound: its own processes share its listening sockets; a kill -9 of
    one leaves the others serving, and the supervisor brings it back."""
    with supervised(mail_environment, "imap,submission") as served:
        [mail_pid] = served.pids("mail")
        submission_pids = served.pids("submission")
        assert len(submission_pids) == (os.cpu_count() or 1)
        assert mail_pid not in submission_pids
        port = served.port("submission")
        imap_login(served.port("imap")).logout()

        def submit() -> bytes:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.starttls(context=context)
                smtp.login("a@example.test", PASSWORD)
                smtp.mail("a@example.test")
                smtp.rcpt("b@remote.test")
                code, text = smtp.data(b"From: a@example.test\r\nSubject: hi\r\n\r\nHi\r\n")
            assert code == 250, text
            return text

        os.kill(submission_pids[0], signal.SIGKILL)
        # The listening socket stays open in the other workers and in the supervisor.
        assert submit().startswith(b"2.0.0 Ok: queued as ")
        served.output.until("submission: killed by SIGKILL; restarting in 1 s", 30)
        served.output.until("submission: restarted", 60)
        assert len(served.pids("submission")) == (os.cpu_count() or 1)
        for _ in range(4):
            assert submit().startswith(b"2.0.0 Ok: queued as ")
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) == 0
