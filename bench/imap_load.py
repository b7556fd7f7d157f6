"""Benchmark: IMAP sessions per second from N concurrent clients, this server against Dovecot.

Fills 10 mailboxes with 1,000 varied messages each (2-50 KB, a third multipart) through the
project's own MailStore, then serves the same Maildirs with each target in turn:

* dovecot  - the real Dovecot, configured by bench/dovecot.py on a free loopback port;
* provider - `provider serve --services imap` on a temporary instance whose DATA_DIR holds the
             same mail/ tree (mailboxes made with `provider mailbox add`, which keeps the
             messages already in an existing Maildir).

Each client repeats one session until the time is up: LOGIN, SELECT INBOX,
FETCH 1:* (FLAGS RFC822.SIZE), 5 x UID FETCH <random uid> (BODY.PEEK[]), UID STORE +FLAGS and
-FLAGS (\\Flagged) on a random message (so every target sees the same flags), SEARCH UNSEEN,
LOGOUT. The clients run as threads spread over several processes so that the load generator is
not the bottleneck; their CPU time is reported beside the results (the server shares the same
cores).

    .venv/bin/python bench/imap_load.py [--target both|dovecot|provider] [--clients 10]
        [--processes 4] [--duration 20] [--data DIR] [--auth-cache SECONDS]

--data DIR keeps the generated mail (DIR/mail) for the next run; without it a temporary copy
is made and removed. Dovecot needs root (its mail processes run as 'nobody').
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import multiprocessing
import os
import random
import re
import resource
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

if not __package__:  # run as a script: make `bench` and `provider` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dovecot import DovecotFailed, DovecotUnavailable, make_work_dir, running_dovecot
from bench.provider_target import (
    TargetUnavailable,
    add_mailboxes,
    provider_env,
    provider_serving,
    run_provider,
)
from provider.mailstore import IncomingMessage, MailStore

DOMAIN = "bench.test"
PASSWORD = "imap bench secret"
MAILBOXES = 10
MESSAGES = 1000
BODY_FETCHES = 5  # UID FETCH of a random body, per session
WORDS = tuple(
    [
        "mail",
        "server",
        "folder",
        "message",
        "quota",
        "domain",
        "invoice",
        "meeting",
        "report",
        "travel",
        "budget",
        "draft",
        "project",
        "review",
        "schedule",
        "update",
        "question",
        "answer",
        "thanks",
        "regards",
        "please",
        "attached",
        "today",
        "tomorrow",
        "week",
        "month",
        "team",
        "customer",
        "support",
        "release",
        "change",
        "request",
        "note",
        "summary",
    ]
)


# --- data -------------------------------------------------------------------------------------


def addresses(count: int = MAILBOXES) -> list[str]:
    return [f"user{n:02d}@{DOMAIN}" for n in range(count)]


def text_block(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        lines.append(line)
        length += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def make_message(rng: random.Random, number: int, address: str) -> bytes:
    """One message of 2-50 KB: plain text, or (one in three) text plus a base64 attachment."""
    size = rng.randint(2 * 1024, 50 * 1024)
    message = EmailMessage()
    message["From"] = f"Sender {number % 37} <sender{number % 37}@outside.test>"
    message["To"] = address
    message["Subject"] = f"{rng.choice(WORDS)} {rng.choice(WORDS)} #{number}"
    message["Date"] = time.strftime(
        "%a, %d %b %Y %H:%M:%S +0000", time.gmtime(1_700_000_000 + number * 600)
    )
    message["Message-ID"] = f"<bench-{number}-{address}>"
    if number % 3 == 0:
        text_size = rng.randint(500, 2000)
        message.set_content(text_block(rng, text_size))
        attachment = rng.randbytes(max(1024, (size - text_size) * 3 // 4))
        message.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename=f"f{number}.bin"
        )
    else:
        message.set_content(text_block(rng, size))
    return message.as_bytes(policy=SMTP)


def fill_store(mail_root: Path, count: int = MAILBOXES, messages: int = MESSAGES) -> None:
    """Every mailbox's INBOX holds `messages` messages; done once (kept when --data is given)."""
    store = MailStore(mail_root)
    for index, address in enumerate(addresses(count)):
        inbox = store.create(address).folder("INBOX")
        have = len(inbox.messages())
        if have >= messages:
            continue
        rng = random.Random(index * 100_003 + have)
        batch: list[IncomingMessage] = []
        for number in range(have, messages):
            flags = [f for f, odds in (("\\Seen", 0.6), ("\\Answered", 0.1)) if rng.random() < odds]
            keywords = ["$Forwarded"] if rng.random() < 0.05 else []
            data = make_message(rng, number, address)
            batch.append(IncomingMessage(data, flags, keywords, 1_700_000_000 + number * 600))
            if len(batch) == 100:
                inbox.deliver_many(batch)
                batch = []
        inbox.deliver_many(batch)
        print(f"  {address}: {messages} messages", file=sys.stderr)


# --- clients ----------------------------------------------------------------------------------


@dataclass
class ClientReport:
    sessions: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def timed(report: ClientReport, call: object, *args: object) -> object:
    started = time.perf_counter()
    result = call(*args)  # type: ignore[operator]
    report.latencies.append(time.perf_counter() - started)
    status = result[0] if isinstance(result, tuple) else None
    if status not in ("OK", "BYE"):
        raise imaplib.IMAP4.error(f"{getattr(call, '__name__', call)}{args}: {result!r}")
    return result


def one_session(host: str, port: int, user: str, rng: random.Random, report: ClientReport) -> None:
    started = time.perf_counter()
    client = imaplib.IMAP4(host, port, timeout=60)
    report.latencies.append(time.perf_counter() - started)  # connect and greeting
    timed(report, client.login, user, PASSWORD)
    _status, data = timed(report, client.select, "INBOX")  # type: ignore[misc]
    exists = int(data[0])
    _status, listing = timed(report, client.fetch, "1:*", "(UID FLAGS RFC822.SIZE)")  # type: ignore[misc]
    uids = [int(m.group(1)) for m in re.finditer(rb"UID (\d+)", b" ".join(listing))]
    if len(uids) != exists:
        raise imaplib.IMAP4.error(f"FETCH 1:* listed {len(uids)} of {exists} messages")
    for uid in rng.sample(uids, BODY_FETCHES):
        timed(report, client.uid, "FETCH", str(uid), "(BODY.PEEK[])")
    flagged = str(rng.choice(uids))
    timed(report, client.uid, "STORE", flagged, "+FLAGS.SILENT", "(\\Flagged)")
    timed(report, client.uid, "STORE", flagged, "-FLAGS.SILENT", "(\\Flagged)")
    timed(report, client.search, None, "UNSEEN")
    timed(report, client.logout)
    report.sessions += 1


def client_loop(
    host: str, port: int, user: str, seed: int, stop_at: float, report: ClientReport
) -> None:
    rng = random.Random(seed)
    while time.time() < stop_at:
        try:
            one_session(host, port, user, rng, report)
        except (OSError, imaplib.IMAP4.error) as exc:
            report.errors.append(f"{user}: {exc}")
            if len(report.errors) > 20:
                return


def client_process(
    host: str, port: int, users: list[str], seed: int, start_at: float, stop_at: float
) -> tuple[int, list[float], list[str], float]:
    """Run one thread per user from start_at to stop_at; (sessions, latencies, errors, CPU s)."""
    reports = [ClientReport() for _ in users]
    threads = [
        threading.Thread(target=client_loop, args=(host, port, user, seed + n, stop_at, reports[n]))
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
        [latency for r in reports for latency in r.latencies],
        [error for r in reports for error in r.errors],
        cpu,
    )


@dataclass
class Result:
    target: str
    sessions: int
    commands: int
    elapsed: float
    p50_ms: float
    p99_ms: float
    client_cpu: float
    errors: list[str]

    def row(self) -> str:
        return (
            f"{self.target:<10} {self.sessions / self.elapsed:>10.1f} "
            f"{self.commands / self.elapsed:>11.1f} {self.p50_ms:>8.2f} {self.p99_ms:>8.2f} "
            f"{self.client_cpu:>13.1f}"
        )


HEADER = f"{'target':<10} {'sessions/s':>10} {'commands/s':>11} {'p50 ms':>8} {'p99 ms':>8} " + (
    f"{'client CPU s':>13}"
)


def warm_up(host: str, port: int, users: list[str]) -> None:
    """One session per mailbox, not measured: page cache, and Dovecot's indexes built."""
    rng = random.Random(0)
    for user in users:
        report = ClientReport()
        one_session(host, port, user, rng, report)


def measure(
    target: str, host: str, port: int, users: list[str], options: argparse.Namespace
) -> Result:
    warm_up(host, port, users)
    clients = [users[n % len(users)] for n in range(options.clients)]
    processes = max(1, min(options.processes, len(clients)))
    shares = [clients[n::processes] for n in range(processes)]
    start_at = time.time() + 1.0 + 0.2 * processes  # time for the workers to start
    stop_at = start_at + options.duration
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        pending = [
            pool.apply_async(client_process, (host, port, share, 1000 * n, start_at, stop_at))
            for n, share in enumerate(shares)
        ]
        outcomes = [p.get(timeout=options.duration + 300) for p in pending]
    elapsed = max(time.time(), stop_at) - start_at
    latencies = sorted(latency for o in outcomes for latency in o[1])
    if not latencies:
        raise SystemExit(f"{target}: no command completed: {outcomes[0][2][:3]}")
    percentiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return Result(
        target=target,
        sessions=sum(o[0] for o in outcomes),
        commands=len(latencies),
        elapsed=elapsed,
        p50_ms=percentiles[49] * 1000,
        p99_ms=percentiles[98] * 1000,
        client_cpu=sum(o[3] for o in outcomes),
        errors=[error for o in outcomes for error in o[2]],
    )


# --- targets ----------------------------------------------------------------------------------


def bench_dovecot(data: Path, users: list[str], options: argparse.Namespace) -> Result:
    try:
        secret = PASSWORD
        if options.dovecot_hash == "argon2id":
            # The same argon2id cost as our own stored hashes: a login costs both servers alike.
            from provider.services.auth import HashParams, hash_password

            secret = hash_password(PASSWORD, HashParams())
        with running_dovecot(data / "mail", dict.fromkeys(users, secret)) as dovecot:
            result = measure("dovecot", dovecot.host, dovecot.port, users, options)
            problems = dovecot.log_problems()
    except (DovecotUnavailable, DovecotFailed) as exc:
        raise TargetUnavailable(f"dovecot: {exc}") from exc
    if problems:
        result.errors.extend(f"dovecot log: {line}" for line in problems[:5])
    return result


def provision_provider(instance: Path, data: Path) -> dict[str, str]:
    """A provider instance over `data` (its mailboxes are added once the mail is there)."""
    env = provider_env(instance, data, "imap")
    run_provider(env, "init")
    with provider_serving(env, "imap"):  # fails fast, before minutes of filling, without IMAP
        pass
    return env


def bench_provider(env: dict[str, str], users: list[str], options: argparse.Namespace) -> Result:
    with provider_serving(env, "imap") as (host, port):
        return measure("provider", host, port, users, options)


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("both", "dovecot", "provider"), default="both")
    parser.add_argument(
        "--dovecot-hash",
        choices=("argon2id", "plain"),
        default="argon2id",
        help="Dovecot's stored passwords: our argon2id hashes (fair) or plaintext",
    )
    parser.add_argument(
        "--auth-cache",
        type=float,
        default=None,
        metavar="SECONDS",
        help="our MAILBOX_AUTH_CACHE_SECONDS (default: the setting's default; 0 = verify "
        "argon2id on every login, as Dovecot does)",
    )
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per target")
    parser.add_argument("--mailboxes", type=int, default=MAILBOXES)
    parser.add_argument("--messages", type=int, default=MESSAGES, help="per mailbox")
    parser.add_argument("--data", type=Path, default=None, help="keep the mail here for reuse")
    options = parser.parse_args()

    # Under /tmp with mode 0755: Dovecot's mail processes run as 'nobody'.
    scratch = make_work_dir("provider-imap-bench-")
    data = options.data.resolve() if options.data else scratch / "data"
    if options.data:
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o755)
    users = addresses(options.mailboxes)
    results: list[Result] = []
    failures: list[str] = []
    try:
        env = None
        if options.target in ("both", "provider"):
            try:
                env = provision_provider(scratch / "instance", data)
                if options.auth_cache is not None:
                    env["PROVIDER_MAILBOX_AUTH_CACHE_SECONDS"] = str(options.auth_cache)
            except TargetUnavailable as exc:
                if options.target == "provider":
                    print(exc, file=sys.stderr)
                    return 1
                failures.append(str(exc))
        print(f"filling {len(users)} x {options.messages} messages in {data}", file=sys.stderr)
        started = time.perf_counter()
        fill_store(data / "mail", options.mailboxes, options.messages)
        print(f"  ready in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        if options.target in ("both", "dovecot"):
            try:
                results.append(bench_dovecot(data, users, options))
            except TargetUnavailable as exc:
                failures.append(str(exc))
        if env is not None:
            try:
                add_mailboxes(env, data, DOMAIN, users, PASSWORD)
                results.append(bench_provider(env, users, options))
            except TargetUnavailable as exc:
                failures.append(str(exc))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"{options.clients} clients in {min(options.processes, options.clients)} processes, "
        f"{options.duration:g} s per target, {len(users)} mailboxes x {options.messages} "
        f"messages, {os.cpu_count()} CPUs shared by clients and server"
    )
    print(HEADER)
    for result in results:
        print(result.row())
    by_target = {r.target: r for r in results}
    if "provider" in by_target and "dovecot" in by_target:
        ours, theirs = by_target["provider"], by_target["dovecot"]
        ratios = {
            "sessions/s": ours.sessions / ours.elapsed / (theirs.sessions / theirs.elapsed),
            "commands/s": ours.commands / ours.elapsed / (theirs.commands / theirs.elapsed),
            "p50": ours.p50_ms / theirs.p50_ms,
            "p99": ours.p99_ms / theirs.p99_ms,
        }
        print("ratio provider/dovecot: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    for result in results:
        for error in result.errors[:5]:
            print(f"{result.target} error: {error}", file=sys.stderr)
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures or any(r.errors for r in results) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
