"""Postfix's submission service on a loopback port, with Dovecot SASL and Dovecot LMTP behind it.

The reference of bench/submission.py, in the usual configuration of a Postfix + Dovecot mail
host: a `submission`-style master.cf entry (smtpd_tls_security_level=encrypt,
smtpd_sasl_auth_enable=yes, smtpd_tls_auth_only=yes, permit_sasl_authenticated), Dovecot's
auth service as the SASL server, and virtual mailboxes delivered by Dovecot LMTP into
Maildirs. Everything (config, queue, data, Maildirs, logs) lives in one private work
directory; Postfix listens only on 127.0.0.1. Run as root (Postfix and Dovecot drop to their
own users).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.dovecot import dovecot_binary, free_port

START_DEADLINE = 60.0

MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class ReferenceUnavailable(RuntimeError):
    """Postfix or Dovecot cannot run here; the message says why."""


def unavailable_reason() -> str | None:
    if shutil.which("postfix", path="/usr/sbin:/usr/bin") is None:
        return "postfix is not installed (apt-get install -y postfix)"
    if dovecot_binary() is None:
        return "dovecot is not installed (apt-get install -y dovecot-core dovecot-lmtpd)"
    if not Path("/usr/lib/dovecot/lmtp").exists():
        return "Dovecot's LMTP server is not installed (apt-get install -y dovecot-lmtpd)"
    if os.geteuid() != 0:
        return "Postfix and Dovecot are run as root here"
    for user in ("postfix", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"there is no '{user}' user"
    return None


@dataclass
class Reference:
    """A running Postfix + Dovecot: the submission address and where the mail lands."""

    host: str
    port: int
    work: Path
    mail_root: Path

    def delivered(self) -> int:
        """How many messages Dovecot LMTP has put into the Maildirs so far."""
        return sum(
            len(os.listdir(new)) + len(os.listdir(new.parent / "cur"))
            for new in self.mail_root.glob("*/*/Maildir/new")
        )


def dovecot_config(
    work: Path, mail_root: Path, users: Mapping[str, str], auth: int, lmtp: int
) -> Path:
    """Dovecot as Postfix's SASL server (auth over TCP) and LMTP server (delivery)."""
    mail_user = pwd.getpwnam("nobody")
    login_user = "dovenull" if _exists("dovenull") else "nobody"
    for name in ("run", "state"):
        (work / name).mkdir(exist_ok=True)
    passwd = work / "passwd"
    # The stored hashes of our own instance ({ARGON2ID}): both servers pay the same per login.
    passwd.write_text("".join(f"{user}:{secret}::::::\n" for user, secret in users.items()))
    config = work / "dovecot.conf"
    config.write_text(
        f"""protocols = lmtp
listen = 127.0.0.1
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# Ours remembers a verified password for a while (services/auth.py); this is Dovecot's same.
auth_cache_size = 10M
auth_cache_ttl = 1 hour
default_internal_user = root
default_internal_group = root
default_login_user = {login_user}
mail_location = maildir:~/Maildir
postmaster_address = postmaster@bench.test
passdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={mail_root}/%d/%n allow_all_users=yes
}}
service auth {{
  inet_listener {{
    address = 127.0.0.1
    port = {auth}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
service anvil {{
  chroot =
}}
"""
    )
    return config


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def postfix_config(
    config_dir: Path,
    work: Path,
    port: int,
    auth: int,
    lmtp: int,
    users: Mapping[str, str],
    cert: Path,
    key: Path,
    hold_delivery: bool = False,
) -> None:
    """main.cf and master.cf: Debian's defaults plus a submission entry on 127.0.0.1:port;
    with `hold_delivery`, accepted mail stays queued (defer_transports) instead of going on to
    Dovecot LMTP while the clients send."""
    queue = work / "postfix-queue"
    data = work / "postfix-data"
    queue.mkdir(mode=0o755, exist_ok=True)
    data.mkdir(mode=0o700, exist_ok=True)
    postfix_user = pwd.getpwnam("postfix")
    os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
    domains = sorted({user.rpartition("@")[2] for user in users})
    (work / "vmailbox").write_text("".join(f"{user} ok\n" for user in users))
    (config_dir / "main.cf").write_text(
        f"""compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = {work}/postfix.log
maillog_file_prefixes = {work}
biff = no
append_dot_mydomain = no
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {" ".join(domains)}
virtual_mailbox_maps = texthash:{work}/vmailbox
virtual_transport = lmtp:inet:127.0.0.1:{lmtp}
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{auth}
smtpd_sasl_auth_enable = no
message_size_limit = 52428800
{"defer_transports = lmtp" if hold_delivery else ""}
"""
    )
    (config_dir / "master.cf").write_text(
        f"""127.0.0.1:{port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o milter_macro_daemon_name=ORIGINATING
{MASTER_SERVICES}"""
    )


def wait_for_smtp(port: int, deadline: float, what: str, log: Path) -> None:
    give_up = time.monotonic() + deadline
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.ehlo()
            return
        except (OSError, smtplib.SMTPException):
            if time.monotonic() > give_up:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise ReferenceUnavailable(
                    f"{what} did not answer within {deadline:g} s\n{tail}"
                ) from None
            time.sleep(0.1)  # polling the port, bounded by the deadline above


@contextlib.contextmanager
def running_reference(
    work: Path, users: Mapping[str, str], cert: Path, key: Path, *, hold_delivery: bool = False
) -> Iterator[Reference]:
    """Dovecot (SASL + LMTP) and Postfix (submission) for `users` ({address: {SCHEME}hash}),
    all under `work` (which must be reachable by 'nobody': 0755 up to /)."""
    reason = unavailable_reason()
    if reason is not None:
        raise ReferenceUnavailable(reason)
    binary = dovecot_binary()
    assert binary is not None
    mail_root = work / "mail"
    mail_root.mkdir(mode=0o755)
    nobody = pwd.getpwnam("nobody")
    os.chown(mail_root, nobody.pw_uid, nobody.pw_gid)
    auth, lmtp, port = free_port(), free_port(), free_port()
    dovecot_dir = work / "dovecot"
    dovecot_dir.mkdir(mode=0o755)
    config = dovecot_config(dovecot_dir, mail_root, users, auth, lmtp)
    with open(dovecot_dir / "stderr.log", "wb") as stderr:
        dovecot = subprocess.Popen(
            [binary, "-F", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    config_dir = work / "postfix"
    config_dir.mkdir(mode=0o755)
    postfix_config(config_dir, work, port, auth, lmtp, users, cert, key, hold_delivery)
    started = False
    try:
        wait_for_lmtp(lmtp, dovecot_dir / "dovecot.log")
        result = subprocess.run(
            ["postfix", "-c", str(config_dir), "start"], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise ReferenceUnavailable(f"postfix start failed: {result.stderr.strip()}")
        started = True
        wait_for_smtp(port, START_DEADLINE, "postfix", work / "postfix.log")
        yield Reference("127.0.0.1", port, work, mail_root)
    finally:
        if started:
            subprocess.run(["postfix", "-c", str(config_dir), "stop"], capture_output=True)
        dovecot.terminate()
        try:
            dovecot.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dovecot.kill()
            dovecot.wait(timeout=30)


def wait_for_lmtp(port: int, log: Path) -> None:
    give_up = time.monotonic() + START_DEADLINE
    while True:
        try:
            with smtplib.LMTP("127.0.0.1", port, timeout=5) as client:
                client.ehlo()
            return
        except (OSError, smtplib.SMTPException):
            if time.monotonic() > give_up:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise ReferenceUnavailable(f"dovecot LMTP did not answer\n{tail}") from None
            time.sleep(0.1)  # polling the port, bounded by the deadline above
