"""Run the real Dovecot over a mail store's Maildirs on a loopback port (benchmark and tests)."""

# The configuration follows tests/interop/test_dovecot_reads_store.py (see its docstring for
# why each line is there); the differences are that any number of users share one passwd-file,
# every user's home is <mail root>/<domain>/<local> (MailStore's layout), and Dovecot's index
# files go to the private work directory so the shared Maildirs hold nothing but the store's
# own files plus Dovecot's control files (which the store shares by design).

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

START_DEADLINE = 30.0  # seconds for Dovecot to accept connections
STOP_DEADLINE = 20.0
PROBLEM_LINE = re.compile(r"Error|Fatal|Panic|Broken|corrupt|renumber|lowered")


class DovecotUnavailable(RuntimeError):
    """Dovecot cannot run here (not installed, not root, a user missing); says what to do."""


class DovecotFailed(RuntimeError):
    """Dovecot was started but exited or never accepted connections."""


def unavailable_reason() -> str | None:
    """Why Dovecot cannot be run here, or None when it can."""
    if dovecot_binary() is None:
        return "dovecot is not installed (apt-get install -y dovecot-imapd)"
    if os.geteuid() != 0:
        return "Dovecot is run as root (it switches to 'nobody' for mail)"
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return "there is no 'nobody' user for Dovecot's mail processes"
    return None


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_work_dir(prefix: str = "provider-dovecot-") -> Path:
    """A private directory Dovecot's unprivileged processes can reach (pytest's tmp_path and
    most temp dirs are 0700, so this is made directly under /tmp with mode 0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def _user(*names: str) -> pwd.struct_passwd:
    for name in names:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise DovecotUnavailable(f"none of the users {names} exists")


def give_to_mail_user(mail_root: Path) -> None:
    """chown the whole store to the user Dovecot's mail processes run as."""
    mail_user = _user("nobody")
    for directory, _dirs, files in os.walk(mail_root):
        for name in [".", *files]:
            os.chown(os.path.join(directory, name), mail_user.pw_uid, mail_user.pw_gid)


def write_config(
    work: Path,
    mail_root: Path,
    users: Mapping[str, str],
    port: int,
    pop3_port: int | None = None,
) -> Path:
    """dovecot.conf (and its passwd-file) serving every address in `users` from `mail_root`;
    with `pop3_port`, POP3 too (package dovecot-pop3d)."""
    mail_user = _user("nobody")
    login_user = _user("dovenull", "nobody")
    for name in ("run", "state"):
        (work / name).mkdir(exist_ok=True)
    index = work / "index"
    index.mkdir(exist_ok=True)
    os.chown(index, mail_user.pw_uid, mail_user.pw_gid)
    passwd = work / "passwd"
    # A secret that starts with "{SCHEME}" is a stored hash (e.g. our {ARGON2ID} hashes, so
    # both servers pay the same for a login); anything else is a plaintext password.
    passwd.write_text(
        "".join(
            f"{user}:{secret if secret.startswith('{') else '{PLAIN}' + secret}::::::\n"
            for user, secret in users.items()
        )
    )
    specials = "\n".join(
        f"  mailbox {name} {{\n    special_use = \\{name}\n  }}"
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive")
    )
    # POP3 set up like ours: UIDL = the Maildir base file name (our UIDLs are that name when
    # it fits in 70 characters), no \Seen changes on RETR (our default download action,
    # "keep"), and one session per mailbox at a time.
    pop3 = (
        f"""pop3_uidl_format = %f
pop3_no_flag_updates = yes
pop3_lock_session = yes
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""
        if pop3_port is not None
        else ""
    )
    config = work / "dovecot.conf"
    config.write_text(
        f"""protocols = imap{" pop3" if pop3_port is not None else ""}
listen = 127.0.0.1
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = root
default_internal_group = root
default_login_user = {login_user.pw_name}
mail_location = maildir:~/Maildir:INDEX={index}/%d/%n
mail_max_userip_connections = 100
namespace inbox {{
  inbox = yes
  separator = /
{specials}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={mail_root}/%d/%n
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
{pop3}"""
    )
    return config


@dataclass
class DovecotServer:
    """A running Dovecot: where it listens and its log."""

    host: str
    port: int
    work: Path
    process: subprocess.Popen[bytes]
    pop3_port: int | None = None

    @property
    def log(self) -> Path:
        return self.work / "dovecot.log"

    def log_problems(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if PROBLEM_LINE.search(line)]

    def wait_until_serving(self, deadline: float = START_DEADLINE) -> None:
        """Return once a client gets a greeting; raise DovecotFailed if that never happens."""
        give_up = time.monotonic() + deadline
        while True:
            if self.process.poll() is not None:
                problems = self.log_problems() or [f"exit status {self.process.returncode}"]
                stderr = (self.work / "stderr.log").read_text(errors="replace").strip()
                raise DovecotFailed(f"dovecot exited: {'; '.join(problems)} {stderr}".strip())
            try:
                client = imaplib.IMAP4(self.host, self.port, timeout=2)
            except OSError:
                if time.monotonic() > give_up:
                    raise DovecotFailed(
                        f"dovecot did not accept connections within {deadline:g} s"
                    ) from None
                time.sleep(0.05)  # polling the port, bounded by the deadline above
                continue
            client.logout()
            return

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_DEADLINE)


@contextlib.contextmanager
def running_dovecot(
    mail_root: Path, users: Mapping[str, str], work: Path | None = None, *, pop3: bool = False
) -> Iterator[DovecotServer]:
    """Serve `users` ({address: password}) from MailStore(mail_root) until the block ends;
    over IMAP, and with `pop3` over POP3 too (on `server.pop3_port`).

    mail_root (and its parents) must be reachable by 'nobody': use make_work_dir(). The store
    is chowned to 'nobody'; `work` (made and removed here when not given) holds the config,
    the log and Dovecot's index files.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise DovecotUnavailable(reason)
    binary = dovecot_binary()
    assert binary is not None
    own_work = work is None
    work = make_work_dir() if work is None else work
    try:
        give_to_mail_user(mail_root)
        port = free_port()
        pop3_port = free_port() if pop3 else None
        config = write_config(work, mail_root, users, port, pop3_port)
        with open(work / "stderr.log", "wb") as stderr:
            process = subprocess.Popen(
                [binary, "-F", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        server = DovecotServer("127.0.0.1", port, work, process, pop3_port)
        try:
            server.wait_until_serving()
            yield server
        finally:
            server.stop()
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
