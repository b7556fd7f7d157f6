"""Benchmark: first and incremental snapshot of a 10,000-message mailbox against restic backup.

    .venv/bin/python bench/backup_bench.py [--messages 10000] [--changes 100] [--data DIR]

Fills one Maildir (bench/imap_load.py's messages: 2-50 KB, a third with attachments), then in
the same run: our first snapshot, `restic backup` of the same Maildir (first), then the same
changes for both (--changes new messages delivered and as many flag changes), our incremental
snapshot and restic's incremental backup. Prints the times and the ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from imap_load import make_message

from provider.backup.manifest import Manifest
from provider.backup.snapshot import take_snapshot
from provider.backup.store import BackupStore
from provider.mailstore import IncomingMessage, MailStore, forget_cached_state

ADDRESS = "bench@backup.test"


def fill(store: MailStore, messages: int) -> None:
    inbox = store.create(ADDRESS).folder("INBOX")
    rng = random.Random(6)
    have = len(inbox.messages())
    for start in range(have, messages, 500):
        inbox.deliver_many(
            [
                IncomingMessage(
                    make_message(rng, n, ADDRESS),
                    flags=["\\Seen"] if rng.random() < 0.6 else [],
                    internal_date=1_700_000_000 + n * 600,
                )
                for n in range(start, min(messages, start + 500))
            ]
        )


def change(store: MailStore, count: int, offset: int) -> None:
    inbox = store.open(ADDRESS).folder("INBOX")
    rng = random.Random(offset)
    for message in inbox.messages()[:count]:
        inbox.change_flags(message.uid, "add", ["\\Flagged"])
    inbox.deliver_many(
        [IncomingMessage(make_message(rng, offset + n, ADDRESS)) for n in range(count)]
    )


def ours(
    store: MailStore, backup: BackupStore, previous: Manifest | None
) -> tuple[float, Manifest]:
    forget_cached_state()  # as a fresh process would: no folder listing cached in memory
    started = time.perf_counter()
    with backup.locked():
        result = take_snapshot(
            backup, store.open(ADDRESS), ADDRESS, datetime.now(UTC), previous, None
        )
    return time.perf_counter() - started, result.manifest


def restic(env: dict[str, str], maildir: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["restic", "backup", "--quiet", str(maildir)], env=env, check=True, capture_output=True
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--data", type=Path, default=None, help="keep the filled Maildir here")
    args = parser.parse_args()
    if shutil.which("restic") is None:
        raise SystemExit("restic is not installed (apt-get install -y restic)")
    work = Path(tempfile.mkdtemp(prefix="backup-bench-"))
    data = args.data or work / "data"
    try:
        store = MailStore(data / "mail")
        started = time.perf_counter()
        fill(store, args.messages)
        maildir = store.path_for(ADDRESS)
        size = sum(f.stat().st_size for f in maildir.rglob("*") if f.is_file())
        print(
            f"mailbox: {args.messages} messages, {size / 2**20:.0f} MiB on disk "
            f"(filled in {time.perf_counter() - started:.1f} s)"
        )

        backup = BackupStore(work / "backups" / ADDRESS)
        (work / "restic-password").write_text("bench password\n")
        env = {
            **os.environ,
            "RESTIC_REPOSITORY": str(work / "restic-repo"),
            "RESTIC_PASSWORD_FILE": str(work / "restic-password"),
            "RESTIC_CACHE_DIR": str(work / "restic-cache"),
        }
        subprocess.run(["restic", "init", "--quiet"], env=env, check=True, capture_output=True)

        ours_first, manifest = ours(store, backup, None)
        restic_first = restic(env, maildir)
        change(store, args.changes, offset=args.messages)
        ours_incremental, _ = ours(store, backup, manifest)
        restic_incremental = restic(env, maildir)

        stored = sum(f.stat().st_size for f in (work / "backups").rglob("*") if f.is_file())
        repo = sum(f.stat().st_size for f in (work / "restic-repo").rglob("*") if f.is_file())
        print(f"changes before the incremental run: {args.changes} new, {args.changes} flagged")
        print(f"{'':12} {'first s':>9} {'incremental s':>14} {'store MiB':>10}")
        print(f"{'provider':12} {ours_first:9.2f} {ours_incremental:14.2f} {stored / 2**20:10.1f}")
        print(f"{'restic':12} {restic_first:9.2f} {restic_incremental:14.2f} {repo / 2**20:10.1f}")
        print(
            f"ratio restic/provider: first {restic_first / ours_first:.2f}, "
            f"incremental {restic_incremental / ours_incremental:.2f} (above 1: we are faster)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
