"""Benchmark: a mixed IMAP load from client processes, this server against Dovecot, A B A B.

The load of issue 14: N client *processes* (one IMAP client each) loop over sessions of about
nine commands: LOGIN, SELECT (INBOX, sometimes Archive), UID FETCH 1:* (FLAGS) as a client's
resync, then a random mix of

* FETCH of flags (1:*), of envelopes (a page of 20) and of full bodies (BODY.PEEK[]);
* SEARCH (UNSEEN, FLAGGED, FROM, SUBJECT);
* UID STORE +/-FLAGS of \\Seen, \\Flagged and a keyword, and +FLAGS (\\Deleted);
* EXPUNGE; UID COPY to another folder; APPEND of a real message (2-50 KB, a third multipart);

then LOGOUT. Deletions and APPENDs are equally likely; COPY adds too, so the folders grow by
about a tenth of the commands (from 300 to ~1,000 messages per folder over a dozen runs kept
with --data: a later run works on bigger folders).
The mailboxes are filled once with realistic messages (bench/imap_load.py's generator) through
our MailStore; both servers serve the very same Maildirs (Dovecot's control files are shared
by design) and both run for the whole benchmark, taking turns: provider, dovecot, provider,
dovecot ... so that a slow moment of the machine does not favour one of them.

* dovecot  - the real Dovecot (bench/dovecot.py) with a plaintext passdb: logins are cheap;
* provider - `provider serve --services imap` with the password memory on (its default), so
             a repeated login does not verify argon2id either; the servers' own work is compared.

Reported per round: commands/s, the server's CPU seconds (its whole process tree, from /proc:
live processes plus the children they reaped), CPU per command, cores used, the clients' CPU;
then p50/p99 per command type over all rounds, and the ratio provider/dovecot.

    .venv/bin/python bench/imap_mixed.py [--rounds 3] [--duration 30] [--clients 10]
        [--mailboxes 10] [--messages 300] [--data DIR] [--target both|provider|dovecot]
        [--auth-cache SECONDS] [--mail-workers N]

Dovecot needs root (its mail processes run as 'nobody').
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
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

if not __package__:  # run as a script: make `bench` and `provider` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dovecot import (
    DovecotFailed,
    DovecotUnavailable,
    give_to_mail_user,
    make_work_dir,
    running_dovecot,
)
from bench.imap_load import DOMAIN, PASSWORD, WORDS, addresses, fill_store, make_message
from bench.provider_target import (
    TargetUnavailable,
    add_mailboxes,
    provider_env,
    provider_process,
    run_provider,
)

MESSAGES = 300
OTHER_FOLDER = "Archive"  # a special-use folder every MailStore mailbox has
# Operations after the resync FETCH, with their weights.
OPERATIONS: dict[str, int] = {
    "FETCH flags": 1,
    "FETCH envelope": 2,
    "FETCH body": 3,
    "SEARCH": 2,
    "STORE": 3,
    "STORE deleted": 1,
    "EXPUNGE": 1,
    "COPY": 1,
    "APPEND": 1,
}
COMMAND_TYPES = (
    "LOGIN",
    "SELECT",
    *OPERATIONS,
    "LOGOUT",
)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- CPU of a process tree ------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of `root` and every live descendant, each with the children it reaped:
    a process that ended is counted once, in its reaper's cutime/cstime."""
    children: dict[int, list[int]] = defaultdict(list)
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children[int(fields[1])].append(int(entry))
        # utime, stime, cutime, cstime are fields 14-17 (here 11-14, counted from state).
        times[int(entry)] = sum(int(value) for value in fields[11:15])
    total = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        total += times.get(pid, 0)
        pending.extend(children.get(pid, ()))
    return total / CLOCK_TICKS


# --- clients ----------------------------------------------------------------------------------


class CommandFailed(Exception):
    """A command got NO or BAD."""


@dataclass
class ClientReport:
    sessions: int = 0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)


class Client:
    """One IMAP session's worth of commands, each timed under its command type."""

    def __init__(self, host: str, port: int, rng: random.Random, report: ClientReport) -> None:
        self.host, self.port, self.rng, self.report = host, port, rng, report
        self.imap: imaplib.IMAP4 | None = None
        self.uids: list[int] = []

    def timed(self, kind: str, call: Callable[..., object], *args: object) -> object:
        started = time.perf_counter()
        result = call(*args)
        self.report.latencies[kind].append(time.perf_counter() - started)
        status = result[0] if isinstance(result, tuple) else None
        if status not in ("OK", "BYE"):
            raise CommandFailed(f"{kind} {args!r}: {result!r}")
        return result

    def session(self, user: str, appendable: list[bytes]) -> None:
        started = time.perf_counter()
        imap = self.imap = imaplib.IMAP4(self.host, self.port, timeout=60)
        self.report.latencies["connect"].append(time.perf_counter() - started)
        rng = self.rng
        self.timed("LOGIN", imap.login, user, PASSWORD)
        folder = "INBOX" if rng.random() < 0.8 else OTHER_FOLDER
        self.timed("SELECT", imap.select, folder)
        self.resync("FETCH flags")
        for _ in range(rng.randint(3, 7)):
            operation = rng.choices(list(OPERATIONS), weights=list(OPERATIONS.values()))[0]
            self.run(operation, folder, appendable)
        self.timed("LOGOUT", imap.logout)
        self.report.sessions += 1

    def resync(self, kind: str) -> None:
        assert self.imap is not None
        _status, data = self.timed(kind, self.imap.uid, "FETCH", "1:*", "(FLAGS)")  # type: ignore[misc]
        self.uids = [
            int(m.group(1)) for m in re.finditer(rb"UID (\d+)", b" ".join(d for d in data if d))
        ]

    def some_uid(self) -> str:
        return str(self.rng.choice(self.uids)) if self.uids else "1"

    def run(self, operation: str, folder: str, appendable: list[bytes]) -> None:
        imap, rng = self.imap, self.rng
        assert imap is not None
        if operation == "FETCH flags":
            self.resync(operation)
        elif operation == "FETCH envelope":
            start = rng.randrange(len(self.uids)) if self.uids else 0
            page = self.uids[start : start + 20] or [1]
            self.timed(
                operation,
                imap.uid,
                "FETCH",
                f"{page[0]}:{page[-1]}",
                "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)",
            )
        elif operation == "FETCH body":
            self.timed(operation, imap.uid, "FETCH", self.some_uid(), "(BODY.PEEK[])")
        elif operation == "SEARCH":
            criteria = rng.choice(
                (
                    "UNSEEN",
                    "FLAGGED",
                    f'FROM "sender{rng.randrange(37)}@"',
                    f'SUBJECT "{rng.choice(WORDS)}"',
                )
            )
            self.timed(operation, imap.uid, "SEARCH", criteria)
        elif operation == "STORE":
            sign = rng.choice("+-")
            flag = rng.choice(("\\Seen", "\\Flagged", "$Label1"))
            self.timed(operation, imap.uid, "STORE", self.some_uid(), f"{sign}FLAGS", f"({flag})")
        elif operation == "STORE deleted":
            self.timed(operation, imap.uid, "STORE", self.some_uid(), "+FLAGS", "(\\Deleted)")
        elif operation == "EXPUNGE":
            self.timed(operation, imap.expunge)
        elif operation == "COPY":
            target = OTHER_FOLDER if folder == "INBOX" else "INBOX"
            self.timed(operation, imap.uid, "COPY", self.some_uid(), target)
        elif operation == "APPEND":
            message = rng.choice(appendable)
            flags = rng.choice(("", "(\\Seen)"))
            self.timed(operation, imap.append, folder, flags, None, message)
        else:  # pragma: no cover - OPERATIONS and this chain are edited together
            raise AssertionError(operation)


def client_process(
    host: str, port: int, user: str, seed: int, start_at: float, stop_at: float
) -> tuple[int, dict[str, list[float]], list[str], float]:
    """One client looping over sessions from start_at to stop_at: (sessions, latencies by
    command type, errors, this process's CPU seconds)."""
    rng = random.Random(seed)
    appendable = [make_message(rng, 10_000 + n, user) for n in range(20)]
    report = ClientReport()
    client = Client(host, port, rng, report)
    time.sleep(max(0.0, start_at - time.time()))  # every process begins together
    before = resource.getrusage(resource.RUSAGE_SELF)
    while time.time() < stop_at:
        try:
            client.session(user, appendable)
        except (OSError, imaplib.IMAP4.error, CommandFailed) as exc:
            report.errors.append(f"{user}: {exc}"[:300])
            with contextlib.suppress(Exception):
                if client.imap is not None:
                    client.imap.shutdown()
            if len(report.errors) > 50:
                break
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return report.sessions, dict(report.latencies), report.errors, cpu


# --- one measured round -----------------------------------------------------------------------


@dataclass
class Round:
    target: str
    sessions: int
    latencies: dict[str, list[float]]
    elapsed: float
    server_cpu: float
    client_cpu: float
    errors: list[str]

    @property
    def commands(self) -> int:
        return sum(len(v) for k, v in self.latencies.items() if k != "connect")

    def row(self, number: int) -> str:
        return (
            f"{number:>5} {self.target:<9} {self.commands / self.elapsed:>10.1f} "
            f"{self.sessions / self.elapsed:>10.1f} {self.server_cpu:>8.1f} "
            f"{1000 * self.server_cpu / max(1, self.commands):>8.2f} "
            f"{self.server_cpu / self.elapsed:>6.2f} {self.client_cpu:>8.1f} {len(self.errors):>6}"
        )


ROUND_HEADER = (
    f"{'round':>5} {'target':<9} {'commands/s':>10} {'sessions/s':>10} {'srv CPU':>8} "
    f"{'ms/cmd':>8} {'cores':>6} {'cli CPU':>8} {'errors':>6}"
)


def measure(
    pool: multiprocessing.pool.Pool,
    target: str,
    host: str,
    port: int,
    server_pid: int,
    users: list[str],
    options: argparse.Namespace,
    seed: int,
) -> Round:
    clients = [users[n % len(users)] for n in range(options.clients)]
    start_at = time.time() + 2.0  # each client makes its messages to append meanwhile
    stop_at = start_at + options.duration
    cpu_before = tree_cpu_seconds(server_pid)
    pending = [
        pool.apply_async(client_process, (host, port, user, seed + n, start_at, stop_at))
        for n, user in enumerate(clients)
    ]
    outcomes = [p.get(timeout=options.duration + 300) for p in pending]
    elapsed = max(time.time(), stop_at) - start_at
    cpu_after = tree_cpu_seconds(server_pid)
    latencies: dict[str, list[float]] = defaultdict(list)
    for outcome in outcomes:
        for kind, values in outcome[1].items():
            latencies[kind].extend(values)
    return Round(
        target=target,
        sessions=sum(o[0] for o in outcomes),
        latencies=dict(latencies),
        elapsed=elapsed,
        server_cpu=cpu_after - cpu_before,
        client_cpu=sum(o[3] for o in outcomes),
        errors=[error for o in outcomes for error in o[2]],
    )


def worker_ready(seconds: float) -> int:
    """A task that makes sure the pool's worker processes have started (and imported)."""
    time.sleep(seconds)
    return os.getpid()


def warm_up(host: str, port: int, users: list[str]) -> None:
    """One session per mailbox, not measured (page cache; Dovecot builds its indexes)."""
    rng = random.Random(0)
    for user in users:
        appendable = [make_message(rng, 20_000, user)]
        Client(host, port, rng, ClientReport()).session(user, appendable)


# --- targets ----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    host: str
    port: int
    pid: int
    before_round: Callable[[], None]


@contextlib.contextmanager
def dovecot_target(data: Path, users: list[str]) -> Iterator[Target]:
    try:
        with running_dovecot(data / "mail", dict.fromkeys(users, PASSWORD)) as dovecot:
            # Files our server wrote during its round belong to root: give them back.
            yield Target(
                "dovecot",
                dovecot.host,
                dovecot.port,
                dovecot.process.pid,
                lambda: give_to_mail_user(data / "mail"),
            )
            problems = dovecot.log_problems()
            for line in problems[:5]:
                print(f"dovecot log: {line}", file=sys.stderr)
    except (DovecotUnavailable, DovecotFailed) as exc:
        raise TargetUnavailable(f"dovecot: {exc}") from exc


@contextlib.contextmanager
def provider_target(env: dict[str, str]) -> Iterator[Target]:
    with provider_process(env, "imap") as (host, port, pid):
        yield Target("provider", host, port, pid, lambda: None)


# --- report -----------------------------------------------------------------------------------


def percentile_ms(values: list[float], fraction: float) -> float:
    if len(values) == 1:
        return values[0] * 1000
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(fraction * 100) - 1] * 1000


def report(rounds: list[Round]) -> None:
    print(ROUND_HEADER)
    for number, result in enumerate(rounds, 1):
        print(result.row((number + 1) // 2 if len({r.target for r in rounds}) == 2 else number))
    targets = list(dict.fromkeys(r.target for r in rounds))
    merged: dict[str, dict[str, list[float]]] = {t: defaultdict(list) for t in targets}
    for result in rounds:
        for kind, values in result.latencies.items():
            merged[result.target][kind].extend(values)
    print()
    print(
        f"{'command':<16}" + "".join(f"{t + ' p50/p99 ms':>24} {'n':>7}" for t in targets),
    )
    for kind in ("connect", *COMMAND_TYPES):
        cells = []
        for target in targets:
            values = merged[target].get(kind, [])
            cells.append(
                f"{percentile_ms(values, 0.5):>11.2f} / {percentile_ms(values, 0.99):>8.2f}"
                f" {len(values):>7}"
                if values
                else f"{'-':>24} {0:>7}"
            )
        print(f"{kind:<16}" + "".join(f"{c:>32}" for c in cells))
    worked = all(r.commands for r in rounds)
    if set(targets) == {"provider", "dovecot"} and worked:
        by = {t: [r for r in rounds if r.target == t] for t in targets}
        ratios = [
            (o.commands / o.elapsed) / (d.commands / d.elapsed)
            for o, d in zip(by["provider"], by["dovecot"], strict=False)
        ]
        cpu = {
            t: sum(r.server_cpu for r in by[t]) / max(1, sum(r.commands for r in by[t]))
            for t in targets
        }
        rate = {t: statistics.median(r.commands / r.elapsed for r in by[t]) for t in targets}
        print()
        print(
            f"median commands/s: provider {rate['provider']:.1f}, dovecot {rate['dovecot']:.1f}; "
            f"ratio provider/dovecot per round: {', '.join(f'{r:.2f}' for r in ratios)} "
            f"(median {statistics.median(ratios):.2f})"
        )
        print(
            f"server CPU per command: provider {1000 * cpu['provider']:.2f} ms, dovecot "
            f"{1000 * cpu['dovecot']:.2f} ms (ratio {cpu['provider'] / cpu['dovecot']:.2f})"
        )


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("both", "dovecot", "provider"), default="both")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per round")
    parser.add_argument("--clients", type=int, default=10, help="client processes")
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--messages", type=int, default=MESSAGES, help="per mailbox, at first")
    parser.add_argument("--data", type=Path, default=None, help="keep the mail here for reuse")
    parser.add_argument(
        "--auth-cache",
        type=float,
        default=None,
        metavar="SECONDS",
        help="our MAILBOX_AUTH_CACHE_SECONDS (default: the setting's default, on)",
    )
    parser.add_argument(
        "--mail-workers",
        type=int,
        default=None,
        metavar="N",
        help="our MAIL_WORKERS (default: the setting's default, one per core)",
    )
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()

    scratch = make_work_dir("provider-imap-mixed-")
    data = options.data.resolve() if options.data else scratch / "data"
    if options.data:
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o755)
    users = addresses(options.mailboxes)
    rounds: list[Round] = []
    try:
        with contextlib.ExitStack() as stack:
            targets: list[Target] = []
            env = None
            if options.target in ("both", "provider"):
                env = provider_env(scratch / "instance", data, "imap")
                if options.auth_cache is not None:
                    env["PROVIDER_MAILBOX_AUTH_CACHE_SECONDS"] = str(options.auth_cache)
                if options.mail_workers is not None:
                    env["PROVIDER_MAIL_WORKERS"] = str(options.mail_workers)
                run_provider(env, "init")
            print(f"filling {len(users)} x {options.messages} messages", file=sys.stderr)
            fill_store(data / "mail", options.mailboxes, options.messages)
            if env is not None:
                add_mailboxes(env, data, DOMAIN, users, PASSWORD)
                targets.append(stack.enter_context(provider_target(env)))
            if options.target in ("both", "dovecot"):
                targets.append(stack.enter_context(dovecot_target(data, users)))
            for target in targets:
                target.before_round()
                warm_up(target.host, target.port, users)
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(context.Pool(options.clients))
            pool.map(worker_ready, [0.5] * options.clients, chunksize=1)
            for number in range(options.rounds):
                for target in targets:
                    target.before_round()
                    result = measure(
                        pool,
                        target.name,
                        target.host,
                        target.port,
                        target.pid,
                        users,
                        options,
                        seed=options.seed * 1_000_000 + number * 1000,
                    )
                    rounds.append(result)
                    print(result.row(number + 1), file=sys.stderr)
    except TargetUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(
        f"{options.clients} client processes, {options.rounds} x {options.duration:g} s per "
        f"target alternating, {len(users)} mailboxes x ~{options.messages} messages, "
        f"{os.cpu_count()} CPUs shared by clients and servers"
    )
    report(rounds)
    for result in rounds:
        for error in result.errors[:3]:
            print(f"{result.target} error: {error}", file=sys.stderr)
    return 1 if any(r.errors for r in rounds) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
