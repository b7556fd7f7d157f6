"""Far sides for the queue runner's tests: a scriptable aiosmtpd MX, a private Postfix, and
readers for what they and the mail store received."""

from __future__ import annotations

import email
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from email.message import Message
from email.policy import default
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from provider.services.storage import mail_store
from tests.conftest import wait_until

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:  # aiosmtpd's Controller cannot report a port-0 binding
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class ScriptedMx:
    """An SMTP server whose DATA replies follow a script ("451 …" three times, then "250 …");
    every message it answered 250 is kept in `received` as (sender, recipients, content)."""

    def __init__(
        self,
        replies: list[str] | None = None,
        rcpt_replies: dict[str, str] | None = None,
        smtputf8: bool = False,
    ) -> None:
        self.replies = list(replies or [])
        self.rcpt_replies = {k.lower(): v for k, v in (rcpt_replies or {}).items()}
        self.received: list[tuple[str, list[str], bytes]] = []
        self.attempts = 0
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=smtputf8
        )
        self.running = False

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.attempts += 1
            reply = self.replies.pop(0) if self.replies else "250 2.0.0 OK queued"
            if reply.startswith("250"):
                self.received.append(
                    (envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
                )
        return reply

    def down(self) -> None:
        """Stop answering (connections are refused from now on)."""
        if self.running:
            self.controller.stop()
            self.running = False

    def __enter__(self) -> ScriptedMx:
        self.controller.start()
        self.running = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def inbox(address: str) -> list[Message]:
    """The messages in a local mailbox's INBOX, parsed."""
    folder = mail_store().open(address).folder("INBOX")
    return [
        email.message_from_bytes(folder.read(info.uid), policy=default)
        for info in folder.messages()
    ]


def require_postfix() -> None:
    if not os.path.exists(POSTFIX):
        if os.environ.get("PROVIDER_REQUIRE_CLIENTS"):
            pytest.fail("postfix is not installed (apt-get install postfix)")
        pytest.skip("postfix is not installed (apt-get install postfix)")
    if os.geteuid() != 0:
        if os.environ.get("PROVIDER_REQUIRE_CLIENTS"):
            pytest.fail("a private Postfix instance needs root here")
        pytest.skip("a private Postfix instance needs root here")


class Postfix:
    """A private Postfix on a loopback address and port of its own (own config, queue and
    data directories), accepting mail for `domains` into one Maildir: `messages()` reads it.

        with Postfix("127.0.0.9", ["example.net"]) as mx: ...

    Its directory is made under /tmp (pytest's are private to root; Postfix's own users must
    reach theirs) and removed on stop."""

    def __init__(self, host: str, domains: list[str], tls: bool = True) -> None:
        require_postfix()
        self.root = Path(tempfile.mkdtemp(prefix="provider-postfix-"))
        self.root.chmod(0o755)
        self.host = host
        self.port = free_port(host)
        self.domains = domains
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config_dir(self) -> Path:
        return self.root / "conf"

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / "all"

    def _configure(self) -> None:
        import pwd

        postfix_user = pwd.getpwnam("postfix")
        for name in ("conf", "queue", "data", "mail"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        os.chown(self.root / "data", postfix_user.pw_uid, postfix_user.pw_gid)
        os.chown(self.root / "mail", postfix_user.pw_uid, postfix_user.pw_gid)
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        lines = [line for line in master if not line.startswith("smtp      inet")]
        lines.insert(0, f"{self.host}:{self.port} inet n - n - - smtpd")
        (self.config_dir / "master.cf").write_text("\n".join(lines) + "\n")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.root / "queue",
            "data_directory": self.root / "data",
            "mail_owner": "postfix",
            "myhostname": "mx.far.test",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "virtual_mailbox_domains": ", ".join(self.domains),
            "virtual_mailbox_base": self.root / "mail",
            "virtual_mailbox_maps": "static:all/",
            "virtual_uid_maps": f"static:{postfix_user.pw_uid}",
            "virtual_gid_maps": f"static:{postfix_user.pw_gid}",
            "virtual_minimum_uid": "1",
            "maillog_file": self.root / "maillog",
            "maillog_file_prefixes": self.root,
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "smtp_dns_support_level": "disabled",
            "smtpd_tls_security_level": "none",
        }
        if self.tls:
            from provider.tls import _write_self_signed

            cert, key = self.root / "conf" / "cert.pem", self.root / "conf" / "key.pem"
            _write_self_signed(cert, key, "mx.far.test")
            settings.update(
                smtpd_tls_security_level="may",
                smtpd_tls_cert_file=cert,
                smtpd_tls_key_file=key,
                smtpd_tls_received_header="yes",
            )
        text = "".join(f"{name} = {value}\n" for name, value in settings.items())
        (self.config_dir / "main.cf").write_text(text)

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"postfix exited: {self.log()[-2000:]}")
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                return sock.recv(3) == b"220"
        except OSError:
            return False

    def start(self) -> Postfix:
        self._configure()
        self.process = subprocess.Popen(
            [POSTFIX, "-c", str(self.config_dir), "start-fg"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        if not wait_until(self._answers, timeout=20, interval=0.05):
            self.stop()
            raise RuntimeError(f"postfix did not answer on {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=30,
        )
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def files(self) -> list[Path]:
        found: list[Path] = []
        for sub in ("new", "cur"):
            directory = self.maildir / sub
            if directory.is_dir():
                found.extend(sorted(directory.iterdir()))
        return found

    def messages(self) -> list[bytes]:
        return [path.read_bytes() for path in self.files()]

    def wait_for(self, count: int, timeout: float = 20) -> list[bytes]:
        """Wait until `count` messages are in the Maildir (Postfix delivers after its 250)."""
        wait_until(lambda: len(self.files()) >= count, timeout=timeout, interval=0.05)
        return self.messages()

    def __enter__(self) -> Postfix:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def iter_subjects(messages: list[bytes]) -> Iterator[str]:
    for raw in messages:
        yield str(email.message_from_bytes(raw, policy=default)["Subject"])
