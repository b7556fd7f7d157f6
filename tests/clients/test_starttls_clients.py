"""Real clients over STARTTLS/STLS (issue 11 item 15): none may hang on the first command after
the handshake. 200 curl sessions each for IMAP and POP3, run in concurrent batches with a
bounded time each, and mbsync (`TLSType STARTTLS`; `SSLType` before isync 1.5) and offlineimap
(`starttls = yes`) syncing the seeded mailbox of test_sync_clients.

A missing binary skips, unless PROVIDER_REQUIRE_CLIENTS=1 (CI), then it fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from provider.protocols.server import ProtocolRunner
from provider.services.storage import mail_store
from provider.tls import certificate_paths
from tests.clients.test_sync_clients import (
    SEED,
    ImapServer,
    Mbsync,
    OfflineImap,
    SyncClient,
    assert_in_step,
    provider_server,
    required,
)
from tests.conftest import MAILBOX_PASSWORD, make_mailbox

SESSIONS = 200
BATCH = 20  # concurrent curl processes
CURL_TIMEOUT = 60  # seconds: a session that takes longer counts as hung
MESSAGE = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: curl\r\n\r\nBody.\r\n"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        IMAP_PORT=0,
        IMAPS_PORT=0,
        POP3_PORT=0,
        POP3S_PORT=0,
        LOGIN_FAILURE_DELAY_SECONDS=0,
    )
    return app_config


@pytest.fixture
def listeners(app: Flask) -> Iterator[dict[str, tuple[str, int]]]:
    runner = ProtocolRunner(app, ["imap", "pop3"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        yield bound
    finally:
        runner.stop()


def curl_binary() -> str:
    found = shutil.which("curl")
    if found is None:
        required("curl is not installed (apt-get install -y curl)")
    assert found is not None
    return found


def run_batches(commands: list[list[str]]) -> list[tuple[int, str]]:
    """Run the commands, BATCH at a time; (exit code, output) of each. curl's --max-time
    bounds each one; the communicate() timeout is a last resort."""
    results: list[tuple[int, str]] = []
    for start in range(0, len(commands), BATCH):
        running = [
            subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for command in commands[start : start + BATCH]
        ]
        for process in running:
            try:
                output, _ = process.communicate(timeout=CURL_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
            results.append((process.returncode, output))
    return results


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_200_curl_starttls_sessions_all_get_answers(session, listeners, protocol):
    curl = curl_binary()
    # One mailbox per concurrent session: POP3 allows one session per mailbox, and IMAP at
    # most IMAP_MAX_CONNECTIONS_PER_USER_IP per user and address.
    users = [f"user{n}@example.test" for n in range(BATCH)]
    for user in users:
        make_mailbox(session, user, protocols="imap,pop3")
        mail_store().open(user).folder("INBOX").deliver(MESSAGE)
    host, port = listeners[protocol]
    commands = [
        [
            curl,
            "--silent",
            "--show-error",
            "--ssl-reqd",
            "--insecure",
            "--max-time",
            str(CURL_TIMEOUT),
            f"{protocol}://{host}:{port}/",
            "--user",
            f"{users[n % BATCH]}:{MAILBOX_PASSWORD}",
        ]
        for n in range(SESSIONS)
    ]
    expected = re.compile(r"\* LIST .*INBOX" if protocol == "imap" else r"(?m)^1 \d+\r?$")
    results = run_batches(commands)
    failures = [
        (n, code, output[-300:])
        for n, (code, output) in enumerate(results)
        if code != 0 or not expected.search(output)
    ]
    # curl's exit code 28 is its --max-time: the hang of issue 11 item 15.
    assert not failures, f"{len(failures)} of {SESSIONS} sessions failed: {failures[:5]}"


# --- sync clients over STARTTLS --------------------------------------------------------------


def isync_version(binary: str) -> tuple[int, ...]:
    output = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    match = re.search(r"(\d+)\.(\d+)", output)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class StarttlsMbsync(Mbsync):
    certificate: Path

    def write_config(self) -> Path:
        config = super().write_config()
        # isync 1.5 renamed SSLType to TLSType (the old name still works there).
        keyword = "TLSType" if isync_version(self.binary) >= (1, 5) else "SSLType"
        config.write_text(
            config.read_text().replace(
                "SSLType None", f"{keyword} STARTTLS\nCertificateFile {self.certificate}"
            )
        )
        return config


class StarttlsOfflineImap(OfflineImap):
    certificate: Path

    def write_config(self) -> Path:
        config = super().write_config()
        config.write_text(
            config.read_text().replace(
                "starttls = no", f"starttls = yes\nsslcacertfile = {self.certificate}"
            )
        )
        return config


@pytest.fixture
def starttls_server(request: pytest.FixtureRequest) -> Iterator[ImapServer]:
    with provider_server(request) as server:
        yield server


@pytest.mark.parametrize(
    "client_class", [StarttlsMbsync, StarttlsOfflineImap], ids=["mbsync", "offlineimap"]
)
def test_sync_client_over_starttls(
    app: Flask,
    starttls_server: ImapServer,
    tmp_path: Path,
    client_class: type[StarttlsMbsync | StarttlsOfflineImap],
) -> None:
    client_class.certificate = certificate_paths(app.config)[0]
    client: SyncClient = client_class(starttls_server, tmp_path)
    for _ in range(3):  # a full sync, then two that only compare: each a new STARTTLS
        output = client.sync()
        view = assert_in_step(client)
        assert {name: len(view[name]) for name in SEED} == SEED, output[-2000:]
