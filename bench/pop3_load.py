"""Benchmark: POP3 download throughput (messages/s) of this server against Dovecot's POP3.

Fills N mailboxes with 1,000 varied messages each (2-50 KB, a third multipart; the same data
as bench/imap_load.py) through the project's own MailStore, then serves the same Maildirs
with each target in turn:

* dovecot  - the real Dovecot with dovecot-pop3d, configured by bench/dovecot.py
             (pop3_uidl_format=%f, no flag updates, one session per mailbox: our behaviour);
* provider - `provider serve --services pop3` on a temporary instance whose DATA_DIR holds the
             same mail/ tree (mailboxes made with `provider mailbox add`).

Each client owns one mailbox (POP3 allows one session per maildrop) and repeats a whole
"leave a copy on the server" download until the time is up: USER/PASS, STAT, UIDL, RETR of
every message, QUIT without DELE. The clients are raw-socket threads spread over several
processes (poplib's line-by-line reading would make the client the bottleneck); their CPU time
is reported beside the results, since the server shares the same cores. Before measuring, the
UIDL lists of both targets are compared: with %f they must be identical.

    .venv/bin/python bench/pop3_load.py [--target both|dovecot|provider] [--clients 4]
        [--processes 2] [--duration 20] [--messages 1000] [--data DIR]

--data DIR keeps the generated mail (DIR/mail) for the next run. Dovecot needs root (its mail
processes run as 'nobody').
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a script: make `bench` and `provider` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dovecot import DovecotFailed, DovecotUnavailable, make_work_dir, running_dovecot
from bench.imap_load import DOMAIN, addresses, fill_store
from bench.provider_target import (
    TargetUnavailable,
    add_mailboxes,
    provider_env,
    provider_serving,
    run_provider,
)

PASSWORD = "pop3 bench secret"
CLIENTS = 4
MESSAGES = 1000
TERMINATOR = b"\r\n.\r\n"


class Pop3Error(Exception):
    """An -ERR or an unexpected answer."""


# --- a minimal, fast POP3 client ----------------------------------------------------------------


class RawPop3:
    """Just enough POP3 for the benchmark, reading whole responses with recv() and find()."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.buffer = bytearray()
        self.line()  # greeting

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise Pop3Error("connection closed")
        self.buffer += chunk

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        if not line.startswith(b"+OK"):
            raise Pop3Error(line.decode(errors="replace"))
        return line

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multiline(self, text: str) -> bytes:
        """The body of a multi-line response (still dot-stuffed), without the terminator."""
        self.command(text)
        start = 0
        while True:
            if self.buffer.startswith(b".\r\n"):  # empty body
                del self.buffer[:3]
                return b""
            end = self.buffer.find(TERMINATOR, start)
            if end >= 0:
                body = bytes(self.buffer[: end + 2])
                del self.buffer[: end + len(TERMINATOR)]
                return body
            start = max(0, len(self.buffer) - len(TERMINATOR))
            self._fill()

    def close(self) -> None:
        self.sock.close()


def uidl_list(host: str, port: int, user: str) -> list[str]:
    client = RawPop3(host, port)
    try:
        client.command(f"USER {user}")
        client.command(f"PASS {PASSWORD}")
        body = client.multiline("UIDL")
        client.command("QUIT")
    finally:
        client.close()
    return [line.split()[1].decode() for line in body.splitlines()]


@dataclass
class ClientReport:
    sessions: int = 0
    messages: int = 0
    octets: int = 0
    session_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def one_session(host: str, port: int, user: str, report: ClientReport) -> None:
    started = time.perf_counter()
    client = RawPop3(host, port)
    try:
        client.command(f"USER {user}")
        client.command(f"PASS {PASSWORD}")
        count = int(client.command("STAT").split()[1])
        uidls = client.multiline("UIDL").splitlines()
        if len(uidls) != count:
            raise Pop3Error(f"UIDL listed {len(uidls)} of {count} messages")
        for number in range(1, count + 1):
            report.octets += len(client.multiline(f"RETR {number}"))
            report.messages += 1
        client.command("QUIT")
    finally:
        client.close()
    report.session_seconds.append(time.perf_counter() - started)
    report.sessions += 1


def client_loop(host: str, port: int, user: str, stop_at: float, report: ClientReport) -> None:
    while time.time() < stop_at:
        try:
            one_session(host, port, user, report)
        except (OSError, Pop3Error, ValueError, IndexError) as exc:
            report.errors.append(f"{user}: {exc}")
            if len(report.errors) > 20:
                return


def client_process(
    host: str, port: int, users: list[str], start_at: float, stop_at: float
) -> tuple[int, int, int, list[float], list[str], float]:
    """One thread per user from start_at to stop_at; (sessions, messages, octets, session
    seconds, errors, CPU s). Messages are counted as they complete, so a session cut off by
    the deadline still counts what it fetched."""
    reports = [ClientReport() for _ in users]
    threads = [
        threading.Thread(target=client_loop, args=(host, port, user, stop_at, reports[n]))
        for n, user in enumerate(users)
    ]
    time.sleep(max(0.0, start_at - time.time()))  # all processes begin together
    before = resource.getrusage(resource.RUSAGE_SELF)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (
        sum(r.sessions for r in reports),
        sum(r.messages for r in reports),
        sum(r.octets for r in reports),
        [s for r in reports for s in r.session_seconds],
        [e for r in reports for e in r.errors],
        cpu,
    )


@dataclass
class Result:
    target: str
    sessions: int
    messages: int
    octets: int
    elapsed: float
    median_session_s: float
    client_cpu: float
    errors: list[str]

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.elapsed

    def row(self) -> str:
        return (
            f"{self.target:<10} {self.messages_per_second:>11.0f} "
            f"{self.octets / self.elapsed / 1024**2:>8.1f} {self.sessions:>9} "
            f"{self.median_session_s:>17.2f} {self.client_cpu:>13.1f}"
        )


HEADER = (
    f"{'target':<10} {'messages/s':>11} {'MiB/s':>8} {'sessions':>9} "
    f"{'median session s':>17} {'client CPU s':>13}"
)


def measure(
    target: str, host: str, port: int, users: list[str], options: argparse.Namespace
) -> Result:
    for user in users:  # warm-up, not measured: page cache, Dovecot's indexes
        one_session(host, port, user, ClientReport())
    processes = max(1, min(options.processes, len(users)))
    shares = [users[n::processes] for n in range(processes)]
    start_at = time.time() + 1.0 + 0.2 * processes  # time for the workers to start
    stop_at = start_at + options.duration
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        pending = [
            pool.apply_async(client_process, (host, port, share, start_at, stop_at))
            for share in shares
        ]
        outcomes = [p.get(timeout=options.duration + 600) for p in pending]
    # A session running at the deadline finishes first: the time it takes counts too.
    elapsed = max(time.time(), stop_at) - start_at
    sessions = [s for o in outcomes for s in o[3]]
    return Result(
        target=target,
        sessions=sum(o[0] for o in outcomes),
        messages=sum(o[1] for o in outcomes),
        octets=sum(o[2] for o in outcomes),
        elapsed=elapsed,
        median_session_s=statistics.median(sessions) if sessions else float("nan"),
        client_cpu=sum(o[5] for o in outcomes),
        errors=[e for o in outcomes for e in o[4]],
    )


# --- targets --------------------------------------------------------------------------------------


def bench_dovecot(
    data: Path, users: list[str], options: argparse.Namespace
) -> tuple[Result, list[str]]:
    try:
        # The same argon2id cost as our own stored hashes: a login costs both servers alike.
        from provider.services.auth import HashParams, hash_password

        secret = hash_password(PASSWORD, HashParams())
        with running_dovecot(data / "mail", dict.fromkeys(users, secret), pop3=True) as dovecot:
            assert dovecot.pop3_port is not None
            uidls = uidl_list(dovecot.host, dovecot.pop3_port, users[0])
            result = measure("dovecot", dovecot.host, dovecot.pop3_port, users, options)
            problems = dovecot.log_problems()
    except (DovecotUnavailable, DovecotFailed) as exc:
        raise TargetUnavailable(f"dovecot: {exc}") from exc
    result.errors.extend(f"dovecot log: {line}" for line in problems[:5])
    return result, uidls


def provision_provider(instance: Path, data: Path, users: list[str]) -> dict[str, str]:
    """A provider instance over `data` whose Maildirs already hold the messages."""
    env = provider_env(instance, data, "pop3")
    run_provider(env, "init")
    add_mailboxes(env, data, DOMAIN, users, PASSWORD)
    return env


def bench_provider(
    env: dict[str, str], users: list[str], options: argparse.Namespace
) -> tuple[Result, list[str]]:
    with provider_serving(env, "pop3") as (host, port):
        uidls = uidl_list(host, port, users[0])
        return measure("provider", host, port, users, options), uidls


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("both", "dovecot", "provider"), default="both")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="one mailbox each")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per target")
    parser.add_argument("--messages", type=int, default=MESSAGES, help="per mailbox")
    parser.add_argument("--data", type=Path, default=None, help="keep the mail here for reuse")
    options = parser.parse_args()

    # Under /tmp with mode 0755: Dovecot's mail processes run as 'nobody'.
    scratch = make_work_dir("provider-pop3-bench-")
    data = options.data.resolve() if options.data else scratch / "data"
    if options.data:
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o755)
    users = addresses(options.clients)
    results: list[Result] = []
    uidls: dict[str, list[str]] = {}
    failures: list[str] = []
    try:
        print(f"filling {len(users)} x {options.messages} messages in {data}", file=sys.stderr)
        started = time.perf_counter()
        fill_store(data / "mail", len(users), options.messages)
        print(f"  ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if options.target in ("both", "dovecot"):
            try:
                result, uidls["dovecot"] = bench_dovecot(data, users, options)
                results.append(result)
            except TargetUnavailable as exc:
                failures.append(str(exc))
        if options.target in ("both", "provider"):
            try:
                env = provision_provider(scratch / "instance", data, users)
                result, uidls["provider"] = bench_provider(env, users, options)
                results.append(result)
            except TargetUnavailable as exc:
                failures.append(str(exc))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"{len(users)} clients (one mailbox of {options.messages} messages each) in "
        f"{min(options.processes, len(users))} processes, {options.duration:g} s per target, "
        f"{os.cpu_count()} CPUs shared by clients and server"
    )
    print(HEADER)
    for result in results:
        print(result.row())
    by_target = {r.target: r for r in results}
    if "provider" in by_target and "dovecot" in by_target:
        ratio = by_target["provider"].messages_per_second / by_target["dovecot"].messages_per_second
        print(f"ratio provider/dovecot: messages/s {ratio:.2f}")
    if len(uidls) == 2:
        same = uidls["provider"] == uidls["dovecot"]
        print(f"UIDL lists of {users[0]} identical to Dovecot's %f: {'yes' if same else 'NO'}")
        if not same:
            failures.append("UIDL lists differ between provider and dovecot")
    for result in results:
        for error in result.errors[:5]:
            print(f"{result.target} error: {error}", file=sys.stderr)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures or any(r.errors for r in results) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
