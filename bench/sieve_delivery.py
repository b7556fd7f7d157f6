"""Benchmark: LMTP deliveries per second with a 20-rule Sieve script against none (issue 13).

Starts `provider serve --services lmtp` (this tree's code) on a fresh instance with
--mailboxes IMAP mailboxes, each holding the same 20-rule script (RULES below: header and
address tests with :contains/:matches/:regex, size, envelope :detail, a numeric comparison,
fileinto into 12 folders, flags). Then, on the same server and the same mailboxes, rounds
alternate between the script active and no script active; in each round --clients LMTP
connections in parallel (one thread each, smtplib.LMTP) deliver --messages messages drawn from
a mix of list mail, newsletters, notifications and personal mail (MIX below), each to the
mailbox its connection serves. After each round the folders are counted: a round with the
script must have filed each kind where the rules say, a round without it all into INBOX.

    .venv/bin/python bench/sieve_delivery.py [--messages 1000] [--rounds 3] [--postgres URL]
        [--profile]

--profile adds an in-process cProfile of the Sieve part alone (sieve_delivery.plan_for on the
same messages and the same stored script) and the time one run takes per kind of message.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import cProfile
import io
import os
import pstats
import queue
import shutil
import smtplib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, make_url, text

from bench.provider_target import provider_serving, run_provider
from provider.mailstore import MailStore
from provider.mailstore.maildir import FolderNotFound
from provider.services import sieve_delivery, sieve_scripts

DOMAIN = "bench.test"
SCRIPT_NAME = "rules"
# What a customer's rule editor (or Roundcube's managesieve plugin) writes: one rule after
# another, most ending in stop; personal mail goes through all twenty and is kept.
RULES = r"""# rules made with the editor
require ["fileinto", "mailbox", "imap4flags", "regex", "envelope", "subaddress",
         "relational", "comparator-i;ascii-numeric"];

# rule 1: spam marked by the filter upstream
if header :is "X-Spam-Flag" "YES" { fileinto :create "Junk"; stop; }
# rule 2: subjects the filter tagged
if header :regex "Subject" "^\\[(SPAM|spam|Suspected Spam)\\]" { fileinto :create "Junk"; stop; }
# rule 3: python-dev
if header :contains "List-Id" "python-dev.python.org" { fileinto :create "Lists/python-dev"; stop; }
# rule 4: debian-devel
if header :contains "List-Id" "<debian-devel.lists.debian.org>" {
    fileinto :create "Lists/debian-devel"; stop;
}
# rule 5: any other list of the club
if header :matches "List-Id" "*<*.lists.club.example>" { fileinto :create "Lists/club"; stop; }
# rule 6: code review notifications
if address :domain :is "from" ["github.com", "gitlab.com"] {
    fileinto :create "Dev/Notifications"; stop;
}
# rule 7: the ticket tracker
if header :matches "Subject" "*[JIRA]*" { fileinto :create "Work/Jira"; stop; }
# rule 8: the boss: flag it, keep going
if address :is "from" ["boss@work.example", "ceo@work.example"] { addflag "\\Flagged"; }
# rule 9: receipts and invoices
if header :contains "Subject" ["invoice", "receipt", "order confirmation", "your order"] {
    fileinto :create "Receipts"; stop;
}
# rule 10: the bank
if address :domain :matches "from" ["*.bank.example", "bank.example"] {
    fileinto :create "Finance"; stop;
}
# rule 11: big attachments
if size :over 2M { fileinto :create "Large"; stop; }
# rule 12: the shopping alias (user+shopping@)
if envelope :detail "to" "shopping" { fileinto :create "Shopping"; stop; }
# rule 13: newsletters with an unsubscribe link
if exists "List-Unsubscribe" { fileinto :create "Newsletters"; stop; }
# rule 14: bulk mail
if header :is "Precedence" ["bulk", "junk"] { fileinto :create "Newsletters"; stop; }
# rule 15: robots: file them read
if address :localpart :matches "from" ["noreply*", "no-reply*", "donotreply*", "notifications"] {
    fileinto :create :flags "\\Seen" "Notifications"; stop;
}
# rule 16: meetings
if header :regex "Subject" "^[^:]{0,4}:? *(meeting|call|sync)[[:space:]:]" {
    fileinto :create "Work/Meetings"; stop;
}
# rule 17: the team list
if header :contains ["To", "Cc"] "team@work.example" { fileinto :create "Work/Team"; stop; }
# rule 18: family
if address :all :contains "from" "family.example" { addflag "family"; }
# rule 19: low priority
if header :value "ge" :comparator "i;ascii-numeric" "X-Priority" "4" { addflag "lowprio"; }
# rule 20: urgent
if header :contains "Subject" ["[URGENT]", "urgent:"] { addflag "\\Flagged"; }
"""

RECEIVED = (
    "Received: from mx{n}.outside.example (mx{n}.outside.example [192.0.2.{n}])\r\n"
    "\tby mx.bench.test (Postfix) with ESMTPS id 4Xy{n}Kq2z\r\n"
    "\tfor <{to}>; Mon, 7 Dec 2026 10:{n:02d}:12 +0000 (UTC)\r\n"
)
DKIM = (
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=outside.example; s=s1;\r\n"
    "\th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
    "\tb=dzdVyOfAKCdLXdJOc9G2q8LoXSlEniSbav+yuU4zGeeruD00lszZVoG4ZHRNiYzR\r\n"
)
LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"


@dataclass(frozen=True)
class Kind:
    """One kind of message in the mix: its headers, body size, share, where the rules file it."""

    name: str
    headers: str
    size: int
    weight: int
    folder: str  # with the script active
    envelope_detail: str = ""


MIX = [
    Kind(
        "python-dev",
        "From: Guido <guido@python.example>\r\nTo: python-dev@python.org\r\n"
        "Subject: Re: PEP 9999 discussion\r\nList-Id: Python core developers "
        "<python-dev.python.org>\r\nList-Unsubscribe: <mailto:leave@python.org>\r\n"
        "Precedence: list\r\n",
        12_000,
        15,
        "Lists/python-dev",
    ),
    Kind(
        "debian-devel",
        "From: dev@debian.example\r\nTo: debian-devel@lists.debian.org\r\n"
        "Subject: Bug#100000: intent to package\r\n"
        "List-Id: <debian-devel.lists.debian.org>\r\nPrecedence: list\r\n",
        8_000,
        10,
        "Lists/debian-devel",
    ),
    Kind(
        "club list",
        "From: member@club.example\r\nTo: hiking@lists.club.example\r\n"
        "Subject: Saturday walk\r\nList-Id: Hiking <hiking.lists.club.example>\r\n",
        6_000,
        5,
        "Lists/club",
    ),
    Kind(
        "github",
        "From: Someone <notifications@github.com>\r\nTo: user@bench.test\r\n"
        "Subject: Re: [org/repo] Fix the thing (PR #123)\r\n",
        5_000,
        10,
        "Dev/Notifications",
    ),
    Kind(
        "newsletter",
        "From: News <news@shop.example>\r\nTo: user@bench.test\r\n"
        "Subject: This week's offers\r\nList-Unsubscribe: <https://shop.example/u>\r\n",
        40_000,
        15,
        "Newsletters",
    ),
    Kind(
        "receipt",
        "From: Shop <orders@shop.example>\r\nTo: user@bench.test\r\n"
        "Subject: Your order confirmation #1234\r\n",
        10_000,
        5,
        "Receipts",
    ),
    Kind(
        "robot",
        "From: Service <no-reply@service.example>\r\nTo: user@bench.test\r\n"
        "Subject: Your weekly report\r\n",
        8_000,
        5,
        "Notifications",
    ),
    Kind(
        "shopping alias",
        "From: Store <hello@store.example>\r\nTo: user+shopping@bench.test\r\nSubject: Welcome\r\n",
        6_000,
        5,
        # Pigeonhole files this into "Shopping" (its envelope "to" is the RCPT, +shopping
        # included); delivery.filtered_store runs the script with the mailbox's address, so
        # rule 12 never matches here yet. Kept in the mix: the rule is still evaluated.
        "INBOX",
        envelope_detail="shopping",
    ),
    Kind(
        "personal",
        "From: Anna <anna@friends.example>\r\nTo: user@bench.test\r\n"
        "Subject: dinner on saturday?\r\nX-Priority: 3\r\n",
        4_000,
        20,
        "INBOX",
    ),
    Kind(
        "family",
        "From: Mum <mum@family.example>\r\nTo: user@bench.test\r\nCc: dad@family.example\r\n"
        "Subject: photos from the weekend\r\n",
        30_000,
        5,
        "INBOX",
    ),
    Kind(
        "boss",
        "From: The Boss <boss@work.example>\r\nTo: user@bench.test\r\n"
        "Subject: urgent: numbers for tomorrow\r\nX-Priority: 1\r\n",
        5_000,
        5,
        "INBOX",
    ),
]
FOLDERS = sorted({kind.folder for kind in MIX if kind.folder != "INBOX"})


def message(kind: Kind, number: int, recipient: str) -> bytes:
    """A message of this kind to `recipient`, about `kind.size` bytes, with trace headers."""
    head = "".join(RECEIVED.format(n=n % 60, to=recipient) for n in (number, number + 1))
    head += DKIM + kind.headers.replace("user@bench.test", recipient)
    head += (
        f"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{number}.{kind.name.replace(' ', '-')}@outside.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    data = head.encode()
    body = LINE * max(1, (kind.size - len(data)) // len(LINE))
    return data + body


def schedule(total: int) -> list[Kind]:
    """`total` kinds in a fixed interleaved order that keeps the mix's shares."""
    weights = sum(kind.weight for kind in MIX)
    order = [kind for kind in MIX for _ in range(kind.weight)]
    # Interleave: step through the weighted list by a stride prime to its length.
    stride = 37 if weights % 37 else 41
    return [order[(i * stride) % len(order)] for i in range(total)]


def recipient_of(mailbox: str, kind: Kind) -> str:
    if not kind.envelope_detail:
        return mailbox
    local, _, domain = mailbox.partition("@")
    return f"{local}+{kind.envelope_detail}@{domain}"


def folder_counts(store: MailStore, mailboxes: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for address in mailboxes:
        maildir = store.open(address)
        for name in ["INBOX", *FOLDERS]:
            with contextlib.suppress(FolderNotFound):  # made by the first round with rules
                counts[name] += len(maildir.folder(name).messages())
    return counts


def deliver_round(port: int, mailboxes: list[str], kinds: list[Kind], clients: int) -> float:
    """Deliver one message per entry of `kinds` over `clients` parallel LMTP connections
    (connection w serves mailbox w % len(mailboxes)); return deliveries per second."""
    errors: queue.Queue[BaseException] = queue.Queue()
    start = threading.Barrier(clients + 1)

    def client(worker: int) -> None:
        mailbox = mailboxes[worker % len(mailboxes)]
        mine = [
            (recipient_of(mailbox, kind), message(kind, number, mailbox))
            for number, kind in enumerate(kinds)
            if number % clients == worker
        ]
        try:
            with smtplib.LMTP("127.0.0.1", port, timeout=120) as lmtp:
                lmtp.ehlo("bench.test")
                start.wait()
                for rcpt, data in mine:
                    refused = lmtp.sendmail("sender@outside.example", [rcpt], data)
                    if refused:
                        raise RuntimeError(f"refused: {refused}")
        except BaseException as exc:
            errors.put(exc)
            start.abort()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: reported below
        start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if not errors.empty():
        raise errors.get()
    return len(kinds) / elapsed


def expected_counts(kinds: list[Kind], with_script: bool) -> Counter[str]:
    return Counter(kind.folder if with_script else "INBOX" for kind in kinds)


def set_active(env: dict[str, str], mailboxes: list[str], name: str) -> None:
    """`provider sieve activate ADDRESS NAME` ('' deactivates) for every mailbox, in parallel."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in pool.map(
            lambda address: run_provider(env, "sieve", "activate", address, name), mailboxes
        ):
            pass


def profile_sieve(data: Path, mailbox: str, kinds: list[Kind]) -> None:
    """cProfile the Sieve decision alone, in this process, on the stored active script."""
    home = sieve_scripts.home_of(MailStore(data / "mail"), mailbox)
    print("\nSieve alone, in-process (sieve_delivery.plan_for, compiled script cached):")
    for kind in MIX:
        body = message(kind, 1, mailbox)
        rcpt = mailbox  # as delivery passes it (see the "shopping alias" kind)
        runs = 200
        started = time.perf_counter()
        for _ in range(runs):
            plan = sieve_delivery.plan_for(
                home, body, "sender@outside.example", rcpt, imap_allowed=True
            )
        per_run = (time.perf_counter() - started) / runs * 1e6
        assert plan is not None and plan.stores[0].folder == kind.folder, (kind.name, plan)
        print(f"  {kind.name:15} {len(body):7,} B  -> {kind.folder:18} {per_run:8.0f} µs")
    bodies = [(mailbox, message(k, n, mailbox)) for n, k in enumerate(kinds)]
    profiler = cProfile.Profile()
    profiler.enable()
    for rcpt, body in bodies:
        sieve_delivery.plan_for(home, body, "sender@outside.example", rcpt, imap_allowed=True)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    print(f"\ncProfile of {len(bodies)} runs over the mix, by own time:")
    print("\n".join(out.getvalue().splitlines()[4:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="per round")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of rounds")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--postgres", default=None, help="server URL; a bench database is made")
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args()
    if not (1 <= options.clients <= 200 and 1 <= options.mailboxes <= 1000):
        parser.error("--clients 1-200, --mailboxes 1-1000")
    if options.messages < options.clients or options.rounds < 1:
        parser.error("--messages must be at least --clients, --rounds at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="provider-sieve-bench-"))
    data = workdir / "data"
    tree = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVIDER_")}
    env.update(
        PROVIDER_INSTANCE_DIR=str(workdir),
        PROVIDER_DATA_DIR=str(data),
        PROVIDER_LMTP_PORT="0",
        PROVIDER_ADMIN_PASSWORD="sieve bench admin passphrase",
        PYTHONUNBUFFERED="1",
        # `provider serve` runs this tree's code, not the one the venv was installed from.
        PYTHONPATH=os.pathsep.join(p for p in (tree, env.get("PYTHONPATH", "")) if p),
    )
    admin_engine = database = None
    if options.postgres:
        database = f"provider_bench_{uuid.uuid4().hex[:8]}"
        admin_engine = create_engine(options.postgres, isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{database}"'))
        url = make_url(options.postgres).set(database=database)
        env["PROVIDER_DATABASE_URL"] = url.render_as_string(hide_password=False)
    try:
        run_provider(env, "init")
        run_provider(env, "domain", "add", DOMAIN)
        mailboxes = [f"user{n}@{DOMAIN}" for n in range(options.mailboxes)]
        script = workdir / "rules.sieve"
        script.write_text(RULES)
        for address in mailboxes:
            run_provider(env, "mailbox", "add", address, "--quota-gb", "100", "--protocols", "imap")
            run_provider(env, "sieve", "put", address, SCRIPT_NAME, str(script))
        store = MailStore(data / "mail")
        kinds = schedule(options.messages)
        backend = "PostgreSQL" if options.postgres else "SQLite"
        average = sum(len(message(k, n, mailboxes[0])) for n, k in enumerate(kinds)) // len(kinds)
        print(
            f"{backend}: {options.messages} messages a round (average {average:,} B), "
            f"{options.clients} LMTP connections, {options.mailboxes} mailboxes, "
            f"20-rule script ({len(RULES.encode()):,} B)"
        )
        rates: dict[bool, list[float]] = {False: [], True: []}
        with provider_serving(env, "lmtp") as (_host, port):
            for round_number in range(options.rounds):
                for with_script in (False, True):
                    set_active(env, mailboxes, SCRIPT_NAME if with_script else "")
                    before = folder_counts(store, mailboxes)
                    rate = deliver_round(port, mailboxes, kinds, options.clients)
                    filed = folder_counts(store, mailboxes) - before
                    wanted = expected_counts(kinds, with_script)
                    if filed != wanted:
                        raise SystemExit(f"misfiled: wanted {dict(wanted)}, got {dict(filed)}")
                    rates[with_script].append(rate)
                    label = "20 rules " if with_script else "no script"
                    print(f"  round {round_number + 1} {label} {rate:7.1f} deliveries/s")
        without = statistics.mean(rates[False])
        with_rules = statistics.mean(rates[True])
        ratios = [w / o for o, w in zip(rates[False], rates[True], strict=True)]
        print(
            f"mean: no script {without:.1f}/s, 20 rules {with_rules:.1f}/s; "
            f"ratio per pair {' '.join(f'{r:.2f}' for r in ratios)}; "
            f"cost {100 * (1 - with_rules / without):.1f} % (target < 20 %)"
        )
        print(
            "filed per round with the script: "
            + ", ".join(
                f"{folder} {count}"
                for folder, count in sorted(expected_counts(kinds, True).items())
            )
        )
        errors = [
            address
            for address in mailboxes
            if (sieve_scripts.home_of(store, address) / ".dovecot.sieve.log").exists()
        ]
        if errors:
            raise SystemExit(f"Sieve errors recorded for {errors}")
        if options.profile:
            set_active(env, mailboxes[:1], SCRIPT_NAME)
            profile_sieve(data, mailboxes[0], kinds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if admin_engine is not None:
            with admin_engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            admin_engine.dispose()


if __name__ == "__main__":
    main()
