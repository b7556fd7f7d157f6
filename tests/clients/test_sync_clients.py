"""External sync clients (mbsync, offlineimap) keep a Maildir and an IMAP mailbox in step.

Each test syncs a 500-message mailbox with folders, then twice changes both sides (flags set
and cleared on the server and locally, a new message on each side) and syncs again, comparing
the server (read with imaplib) and the client's Maildir: same folders, same messages by
Message-ID, same system flags, nothing duplicated.

The server is Dovecot (bench/dovecot.py) and, once `provider.protocols.server.LISTENERS` has
an "imap" entry, this project's own IMAP server run in-process on port 0. The clients are the
Debian packages isync (`mbsync`) and offlineimap3 (`offlineimap`); a missing binary skips,
unless PROVIDER_REQUIRE_CLIENTS=1 (CI), then it fails. Plaintext IMAP on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from bench.dovecot import (
    DovecotFailed,
    DovecotUnavailable,
    make_work_dir,
    running_dovecot,
    unavailable_reason,
)
from provider.mailstore import IncomingMessage, Maildir, MailStore
from provider.protocols.server import LISTENERS

ADDRESS = "alice@example.test"
PASSWORD = "sync-clients-secret"
SYNC_TIMEOUT = 180.0  # seconds for one client run
# 500 messages over INBOX, a folder, a sub-folder and a special-use folder.
SEED = {"INBOX": 300, "Projects": 100, "Projects/2024": 60, "Archive": 40}
SYSTEM_FLAGS = {"S": "\\Seen", "F": "\\Flagged", "R": "\\Answered", "D": "\\Draft"}
FLAG_LETTERS = {flag: letter for letter, flag in SYSTEM_FLAGS.items()}

View = dict[str, dict[str, frozenset[str]]]
"""{folder: {Message-ID: system flags}} as one side of the sync sees it."""


def required(problem: str) -> None:
    """Skip for a missing prerequisite, or fail when CI said the clients must run."""
    if os.environ.get("PROVIDER_REQUIRE_CLIENTS") == "1":
        pytest.fail(f"{problem}, and PROVIDER_REQUIRE_CLIENTS=1")
    pytest.skip(problem)


# --- messages ---------------------------------------------------------------------------------


def message(tag: str, lines: int = 20) -> bytes:
    body = "".join(
        f"line {n} of message {tag}, some words to make it longer\r\n" for n in range(lines)
    )
    return (
        f"From: Sender <sender@example.net>\r\nTo: {ADDRESS}\r\nSubject: message {tag}\r\n"
        f"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <{tag}@sync.test>\r\n\r\n{body}"
    ).encode()


def seed(maildir: Maildir) -> None:
    """SEED's messages, about half of them \\Seen and some \\Flagged or \\Answered."""
    for name, count in SEED.items():
        if name not in {info.name for info in maildir.folders()}:
            maildir.create_folder(name)
        tag = name.replace("/", "-").lower()
        maildir.folder(name).deliver_many(
            IncomingMessage(
                message(f"{tag}-{n}", lines=10 + n % 40),
                flags=[
                    flag
                    for flag, every in (("\\Seen", 2), ("\\Flagged", 7), ("\\Answered", 11))
                    if n % every == 0
                ],
                internal_date=1_700_000_000 + n * 60,
            )
            for n in range(count)
        )


# --- servers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImapServer:
    host: str
    port: int
    user: str
    password: str
    ssl: bool

    def connect(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4(self.host, self.port, timeout=30)
        client.login(self.user, self.password)
        return client


@contextlib.contextmanager
def dovecot_server() -> Iterator[ImapServer]:
    problem = unavailable_reason()
    if problem is not None:
        required(problem)
    work = make_work_dir("sync-clients-dovecot-")
    try:
        store = MailStore(work / "mail")
        seed(store.create(ADDRESS))
        try:
            with running_dovecot(work / "mail", {ADDRESS: PASSWORD}, work=work) as dovecot:
                yield ImapServer(dovecot.host, dovecot.port, ADDRESS, PASSWORD, ssl=False)
                assert dovecot.log_problems() == []
        except DovecotUnavailable as exc:
            required(str(exc))
        except DovecotFailed as exc:
            pytest.fail(str(exc))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def provider_server(request: pytest.FixtureRequest) -> Iterator[ImapServer]:
    from provider.protocols.server import ProtocolRunner
    from provider.services import storage
    from tests.conftest import make_mailbox

    app = request.getfixturevalue("app")
    entries = LISTENERS["imap"]
    for listener in entries if isinstance(entries, tuple) else (entries,):
        app.config[listener.port_setting] = 0
    make_mailbox(request.getfixturevalue("session"), ADDRESS, password=PASSWORD)
    seed(storage.mail_store().open(ADDRESS))
    runner = ProtocolRunner(app, ["imap"])
    bound = {b.name: (b.host, b.port) for b in runner.start()}
    try:
        host, port = bound["imap"]
        yield ImapServer(host, port, ADDRESS, PASSWORD, ssl=False)
    finally:
        runner.stop()


@pytest.fixture(
    params=[
        pytest.param("dovecot"),
        pytest.param(
            "provider",
            marks=pytest.mark.skipif(
                "imap" not in LISTENERS,
                reason="this version has no IMAP server (no 'imap' in protocols.server.LISTENERS)",
            ),
        ),
    ]
)
def imap_server(request: pytest.FixtureRequest) -> Iterator[ImapServer]:
    """A seeded IMAP server on 127.0.0.1: (host, port, user, password, ssl)."""
    if request.param == "dovecot":
        with dovecot_server() as server:
            yield server
    else:
        with provider_server(request) as server:
            yield server


# --- the two sides ----------------------------------------------------------------------------


FETCH_UID = re.compile(rb"UID (\d+)")
FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
LIST_LINE = re.compile(rb'\((?P<attributes>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')


def unquote(name: bytes) -> str:
    text = name.decode()
    if text.startswith('"'):
        text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


def server_view(server: ImapServer) -> View:
    """Every selectable folder's messages as IMAP shows them; duplicates fail the test."""
    client = server.connect()
    try:
        status, listed = client.list('""', "*")
        assert status == "OK", listed
        names = []
        for line in listed:
            match = LIST_LINE.match(line)
            assert match is not None, line
            if b"\\noselect" not in match["attributes"].lower():
                names.append(unquote(match["name"]))
        view: View = {}
        for name in names:
            status, data = client.select(f'"{name}"', readonly=True)
            assert status == "OK", (name, data)
            messages: dict[str, frozenset[str]] = {}
            if int(data[0]):
                status, data = client.uid(
                    "FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
                )
                assert status == "OK", data
                for item, after in zip(data, [*data[1:], b""], strict=True):
                    if not isinstance(item, tuple):
                        continue
                    # FLAGS may come before or after the header literal.
                    flags = FETCH_FLAGS.search(item[0]) or FETCH_FLAGS.search(
                        after if isinstance(after, bytes) else b""
                    )
                    assert flags is not None, item
                    message_id = header_id(item[1])
                    assert message_id not in messages, f"{message_id} twice in {name} on server"
                    messages[message_id] = system_flags(flags.group(1).decode().split())
            client.close()
            view[name] = messages
        return view
    finally:
        client.logout()


def header_id(data: bytes) -> str:
    value = BytesHeaderParser().parsebytes(data)["Message-ID"]
    assert value, data[:200]
    return str(value).strip()


def system_flags(flags: list[str]) -> frozenset[str]:
    return frozenset(flag for flag in flags if flag in FLAG_LETTERS)


def local_folders(root: Path) -> dict[str, Path]:
    """Maildir folders under the client's root: any directory with cur/, named by its path."""
    found = {}
    for directory, subdirs, _files in os.walk(root):
        if "cur" in subdirs and "new" in subdirs:
            name = Path(directory).relative_to(root).as_posix()
            found[name] = Path(directory)
    return found


def local_files(folder: Path) -> list[Path]:
    return [
        path
        for sub in ("new", "cur")
        for path in sorted((folder / sub).iterdir())
        if not path.name.startswith(".")
    ]


def local_flags(path: Path) -> frozenset[str]:
    # mbsync leaves unseen messages in new/ but still writes their other flags (":2,F").
    info = path.name.partition(":2,")[2]
    return frozenset(SYSTEM_FLAGS[letter] for letter in info if letter in SYSTEM_FLAGS)


def local_view(root: Path) -> View:
    view: View = {}
    for name, folder in local_folders(root).items():
        messages: dict[str, frozenset[str]] = {}
        for path in local_files(folder):
            with path.open("rb") as handle:
                message_id = header_id(handle.read(8192))
            assert message_id not in messages, f"{message_id} twice in local {name}"
            messages[message_id] = local_flags(path)
        view[name] = messages
    return view


def local_file(root: Path, folder: str, message_id: str) -> Path:
    for path in local_files(local_folders(root)[folder]):
        with path.open("rb") as handle:
            if header_id(handle.read(8192)) == message_id:
                return path
    raise AssertionError(f"{message_id} not in local {folder}")


def set_local_flags(path: Path, flags: set[str]) -> None:
    """What a mail reader does to a Maildir message: move it to cur/ with new info letters."""
    letters = "".join(sorted(FLAG_LETTERS[flag] for flag in flags))
    base = path.name.partition(":2,")[0]
    path.rename(path.parent.parent / "cur" / f"{base}:2,{letters}")


def add_local_message(root: Path, folder: str, tag: str) -> str:
    """Deliver a message into the local Maildir folder as a local MDA would; its Message-ID."""
    directory = local_folders(root)[folder]
    name = f"{time.time_ns()}.P{os.getpid()}Q{tag}.localhost"
    (directory / "tmp" / name).write_bytes(message(tag))
    (directory / "tmp" / name).rename(directory / "new" / name)
    return f"<{tag}@sync.test>"


# --- clients ----------------------------------------------------------------------------------


class SyncClient:
    """One external sync program with its generated configuration under tmp_path."""

    binary_name = ""

    def __init__(self, server: ImapServer, work: Path) -> None:
        found = shutil.which(self.binary_name)
        if found is None:
            required(f"{self.binary_name} is not installed (apt-get install -y isync offlineimap3)")
        assert found is not None
        self.binary = found
        self.server = server
        self.work = work
        self.local = work / "Mail"
        self.local.mkdir(parents=True)
        self.config = self.write_config()

    def write_config(self) -> Path:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def sync(self) -> str:
        """Run one full two-way sync; its output (for failure messages)."""
        env = {"HOME": str(self.work), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        try:
            result = subprocess.run(
                self.command(),
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=SYNC_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{self.binary_name} did not finish within {SYNC_TIMEOUT:g} s: {exc}")
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{self.binary_name} failed:\n{output[-4000:]}"
        assert not re.search(r"(?m)^(ERROR|Error)", output), output[-4000:]
        return output


class Mbsync(SyncClient):
    binary_name = "mbsync"

    def write_config(self) -> Path:
        config = self.work / "mbsyncrc"
        config.write_text(
            f"""IMAPAccount server
Host {self.server.host}
Port {self.server.port}
User "{self.server.user}"
Pass "{self.server.password}"
SSLType {"IMAPS" if self.server.ssl else "None"}
AuthMechs LOGIN PLAIN
Timeout 60

IMAPStore remote
Account server

MaildirStore local
Path {self.local}/
Inbox {self.local}/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Remove None
Expunge None
Sync All
SyncState *
CopyArrivalDate yes
"""
        )
        return config

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config), "--all"]


class OfflineImap(SyncClient):
    binary_name = "offlineimap"

    def write_config(self) -> Path:
        config = self.work / "offlineimaprc"
        config.write_text(
            f"""[general]
accounts = test
metadata = {self.work}/offlineimap-state
maxsyncaccounts = 1

[Account test]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {self.local}
sep = /

[Repository remote]
type = IMAP
remotehost = {self.server.host}
remoteport = {self.server.port}
remoteuser = {self.server.user}
remotepass = {self.server.password}
ssl = {"yes" if self.server.ssl else "no"}
starttls = no
maxconnections = 1
holdconnectionopen = no
"""
        )
        return config

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config), "-o", "-u", "basic"]


@pytest.fixture(params=[Mbsync, OfflineImap], ids=["mbsync", "offlineimap"])
def sync_client(
    request: pytest.FixtureRequest, imap_server: ImapServer, tmp_path: Path
) -> SyncClient:
    client_class: type[SyncClient] = request.param
    return client_class(imap_server, tmp_path)


# --- the test ---------------------------------------------------------------------------------


def assert_in_step(client: SyncClient) -> View:
    """Server and Maildir hold the same folders, messages and flags; returns that view."""
    on_server = server_view(client.server)
    locally = local_view(client.local)
    assert set(locally) == set(on_server)
    for name in on_server:
        assert locally[name] == on_server[name], name
    return on_server


def store(server: ImapServer, folder: str, message_id: str, change: str, flags: str) -> None:
    client = server.connect()
    try:
        assert client.select(f'"{folder}"')[0] == "OK"
        status, data = client.uid("SEARCH", "HEADER", "Message-ID", message_id)
        assert status == "OK", data
        uids = data[0].split()
        assert len(uids) == 1, (message_id, uids)
        assert client.uid("STORE", uids[0].decode(), change, flags)[0] == "OK"
        client.logout()
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            client.shutdown()


def append(server: ImapServer, folder: str, tag: str, flags: str = "") -> str:
    client = server.connect()
    try:
        status, data = client.append(f'"{folder}"', flags or None, None, message(tag))
        assert status == "OK", data
        client.logout()
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            client.shutdown()
    return f"<{tag}@sync.test>"


def test_sync_client_keeps_both_sides_in_step(sync_client: SyncClient) -> None:
    server = sync_client.server
    sync_client.sync()
    first = assert_in_step(sync_client)
    assert {name: len(first[name]) for name in SEED} == SEED

    # Round 1: a flag set on each side, a new message on each side.
    flagged_on_server = "<inbox-1@sync.test>"  # unseen, not flagged
    seen_locally = "<inbox-3@sync.test>"  # unseen, not flagged
    assert first["INBOX"][flagged_on_server] == frozenset()
    assert first["INBOX"][seen_locally] == frozenset()
    store(server, "INBOX", flagged_on_server, "+FLAGS", "(\\Flagged)")
    from_server = append(server, "Projects", "server-new-1", "(\\Seen)")
    set_local_flags(local_file(sync_client.local, "INBOX", seen_locally), {"\\Seen"})
    from_local = add_local_message(sync_client.local, "Projects/2024", "local-new-1")
    sync_client.sync()
    view = assert_in_step(sync_client)
    assert view["INBOX"][flagged_on_server] == {"\\Flagged"}
    assert view["INBOX"][seen_locally] == {"\\Seen"}
    assert view["Projects"][from_server] == {"\\Seen"}
    assert from_local in view["Projects/2024"]
    assert len(view["Projects"]) == SEED["Projects"] + 1
    assert len(view["Projects/2024"]) == SEED["Projects/2024"] + 1

    # Round 2: flags cleared on each side, new messages the other way round.
    store(server, "INBOX", flagged_on_server, "-FLAGS", "(\\Flagged)")
    from_server_2 = append(server, "Projects/2024", "server-new-2")
    set_local_flags(local_file(sync_client.local, "INBOX", seen_locally), {"\\Flagged"})
    from_local_2 = add_local_message(sync_client.local, "INBOX", "local-new-2")
    sync_client.sync()
    view = assert_in_step(sync_client)
    assert view["INBOX"][flagged_on_server] == frozenset()
    assert view["INBOX"][seen_locally] == {"\\Flagged"}
    assert view["Projects/2024"][from_server_2] == frozenset()
    assert from_local_2 in view["INBOX"]
    assert len(view["INBOX"]) == SEED["INBOX"] + 1
    assert len(view["Projects/2024"]) == SEED["Projects/2024"] + 2

    # A sync with nothing changed changes nothing (no re-uploads, no duplicates).
    sync_client.sync()
    assert assert_in_step(sync_client) == view


def test_four_clients_on_one_mailbox_see_each_others_flag_changes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The issue's done-when: mbsync, offlineimap, IMAPClient and imaplib on one 500-message
    mailbox of this server; a flag change made through any one of them shows in all the others,
    and nobody ends up with a duplicate."""
    from imapclient import IMAPClient

    with provider_server(request) as server:
        mbsync, offline = Mbsync(server, tmp_path / "mbsync"), OfflineImap(server, tmp_path / "oi")
        mbsync.sync()
        offline.sync()
        watcher = server.connect()  # imaplib, kept open with INBOX selected
        assert watcher.select("INBOX")[0] == "OK"
        with IMAPClient(server.host, port=server.port, ssl=False, timeout=30) as other:
            other.login(server.user, server.password)
            other.select_folder("INBOX")

            def flags_seen_by_imapclient(message_id: str) -> frozenset[str]:
                [uid] = other.search(["HEADER", "Message-ID", message_id])
                return system_flags([f.decode() for f in other.get_flags([uid])[uid]])

            # IMAPClient flags a message: imaplib hears of it at once, both sync clients next.
            [uid] = other.search(["HEADER", "Message-ID", "<inbox-5@sync.test>"])
            other.add_flags([uid], [b"\\Flagged"])
            watcher.noop()
            assert any(b"\\Flagged" in line for line in watcher.untagged_responses.pop("FETCH"))
            # mbsync marks another one read locally and syncs it up.
            set_local_flags(local_file(mbsync.local, "INBOX", "<inbox-7@sync.test>"), {"\\Seen"})
            mbsync.sync()
            assert flags_seen_by_imapclient("<inbox-7@sync.test>") == {"\\Seen"}
            # offlineimap gets both changes, and sends one of its own.
            offline.sync()
            view = assert_in_step(offline)
            assert view["INBOX"]["<inbox-5@sync.test>"] == {"\\Flagged"}
            assert view["INBOX"]["<inbox-7@sync.test>"] == {"\\Seen"}
            set_local_flags(
                local_file(offline.local, "INBOX", "<inbox-9@sync.test>"), {"\\Answered"}
            )
            offline.sync()
            assert flags_seen_by_imapclient("<inbox-9@sync.test>") == {"\\Answered"}
            mbsync.sync()
            view = assert_in_step(mbsync)
            assert view["INBOX"]["<inbox-9@sync.test>"] == {"\\Answered"}
            assert view["INBOX"]["<inbox-5@sync.test>"] == {"\\Flagged"}
            assert {name: len(view[name]) for name in SEED} == SEED  # no duplicates anywhere
            assert assert_in_step(offline) == view
            other.logout()
        watcher.logout()
