"""Concurrent processes and threads on one folder: no UID lost, duplicated or reused."""

from __future__ import annotations

import multiprocessing
import queue
import threading

import pytest

from provider.mailstore import MailStore, MessageNotFound, forget_cached_state
from tests.mailstore import files_in, sample_message, uidlist_lines

ADDRESS = "alice@example.com"
DEADLINE = 120  # seconds: a generous bound for a slow CI machine, not a wait


@pytest.fixture
def root(tmp_path):
    MailStore(tmp_path / "mail").create(ADDRESS)
    return str(tmp_path / "mail")


def _deliver_batch(root: str, worker: str, count: int, threads: int, go, results) -> None:
    """Child process: `threads` threads each deliver `count` messages once `go` is set."""
    found: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def run(thread: int) -> None:
        folder = MailStore(root).open(ADDRESS).folder("INBOX")
        go.wait(DEADLINE)
        for n in range(count):
            tag = f"{worker}-t{thread}-{n}"
            stored = folder.deliver(sample_message(tag))
            with lock:
                found.append((stored.uid, stored.basename, tag))

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((worker, found))


def _meddle(root: str, go, stop, results) -> None:
    """Child process: list, flag and expunge while others deliver, until `stop` is set."""
    folder = MailStore(root).open(ADDRESS).folder("INBOX")
    expunged: list[tuple[int, str]] = []
    flagged = 0
    go.wait(DEADLINE)
    last_round = False
    while True:
        last_round = stop.is_set()
        for info in folder.messages():
            if info.uid % 5 == 0:
                expunged += [(m.uid, m.basename) for m in folder.expunge([info.uid])]
            elif "\\Seen" not in info.flags:
                try:
                    folder.set_flags(info.uid, ["\\Seen"])
                    flagged += 1
                except MessageNotFound:  # pragma: no cover - nobody else expunges
                    raise
        if last_round:
            break
    results.put(("meddler", (expunged, flagged)))


def collect(results, expected: int) -> dict:
    got = {}
    for _ in range(expected):
        name, value = results.get(timeout=DEADLINE)
        got[name] = value
    return got


def check_uidlist_consistent(folder) -> None:
    lines = uidlist_lines(folder.path)
    uids = [int(line.split(" ", 1)[0]) for line in lines[1:]]
    assert uids == sorted(uids) and len(set(uids)) == len(uids)
    on_disk = {
        name.split(":", 1)[0] for sub in ("new", "cur") for name in files_in(folder.path, sub)
    }
    # Every file has its line; an expunge may leave lines naming no file until enough gather
    # (maildir._STALE_UIDLIST_LINES).
    assert on_disk <= {line.split(" :", 1)[1] for line in lines[1:]}
    assert files_in(folder.path, "tmp") == []


def test_processes_and_threads_delivering_at_once_get_distinct_increasing_uids(root):
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=_deliver_batch, args=(root, f"p{n}", 25, 2, go, results))
        for n in range(4)
    ]
    for worker in workers:
        worker.start()
    go.set()
    got = collect(results, len(workers))
    for worker in workers:
        worker.join(DEADLINE)
        assert worker.exitcode == 0
    delivered = [item for found in got.values() for item in found]
    assert len(delivered) == 200
    uids = sorted(uid for uid, _, _ in delivered)
    assert uids == list(range(1, 201))  # distinct, none lost, none skipped
    for found in got.values():  # each thread saw its own UIDs increase
        for thread in {tag.rsplit("-", 1)[0] for _, _, tag in found}:
            mine = [uid for uid, _, tag in found if tag.startswith(thread + "-")]
            assert mine == sorted(mine)
    forget_cached_state()
    folder = MailStore(root).open(ADDRESS).folder("INBOX")
    assert [(m.uid, m.basename) for m in folder.messages()] == sorted(
        (uid, basename) for uid, basename, _ in delivered
    )
    for uid, _, tag in delivered:
        assert folder.read(uid) == sample_message(tag)
    check_uidlist_consistent(folder)


def test_deliveries_racing_with_listing_flagging_and_expunging_lose_nothing(root):
    context = multiprocessing.get_context("spawn")
    go, stop, results = context.Event(), context.Event(), context.Queue()
    deliverers = [
        context.Process(target=_deliver_batch, args=(root, f"d{n}", 50, 1, go, results))
        for n in range(2)
    ]
    meddler = context.Process(target=_meddle, args=(root, go, stop, results))
    for process in (*deliverers, meddler):
        process.start()
    go.set()
    got = {}
    for _ in deliverers:
        name, value = results.get(timeout=DEADLINE)
        got[name] = value
    stop.set()
    got.update(collect(results, 1))
    for process in (*deliverers, meddler):
        process.join(DEADLINE)
        assert process.exitcode == 0
    delivered = {(uid, basename): tag for n in range(2) for uid, basename, tag in got[f"d{n}"]}
    expunged, _flagged = got["meddler"]
    assert len(delivered) == 100
    assert set(expunged) <= set(delivered)
    assert len(set(expunged)) == len(expunged)
    assert {uid for uid, _ in expunged} == {uid for uid, _ in delivered if uid % 5 == 0}
    forget_cached_state()
    folder = MailStore(root).open(ADDRESS).folder("INBOX")
    remaining = {(m.uid, m.basename): m for m in folder.messages()}
    assert set(remaining) == set(delivered) - set(expunged)
    for (uid, basename), info in remaining.items():
        assert folder.read(uid) == sample_message(delivered[(uid, basename)])
        assert info.flags == {"\\Seen"}
    check_uidlist_consistent(folder)


def test_threads_sharing_one_folder_object_and_a_reader(root):
    folder = MailStore(root).open(ADDRESS).folder("INBOX")
    errors: queue.Queue[BaseException] = queue.Queue()
    stored: queue.Queue[tuple[int, str]] = queue.Queue()
    done = threading.Event()

    def deliver(thread: int) -> None:
        try:
            target = folder if thread % 2 else MailStore(root).open(ADDRESS).folder("INBOX")
            for n in range(25):
                tag = f"t{thread}-{n}"
                stored.put((target.deliver(sample_message(tag)).uid, tag))
        except BaseException as error:  # pragma: no cover - reported below
            errors.put(error)

    def read() -> None:
        try:
            while not done.is_set():
                uids = [m.uid for m in folder.messages()]
                assert uids == sorted(uids) and len(set(uids)) == len(uids)
        except BaseException as error:  # pragma: no cover - reported below
            errors.put(error)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=deliver, args=(t,)) for t in range(6)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(DEADLINE)
    done.set()
    reader.join(DEADLINE)
    assert errors.empty(), errors.get()
    results = [stored.get() for _ in range(stored.qsize())]
    assert sorted(uid for uid, _ in results) == list(range(1, 151))
    for uid, tag in results:
        assert folder.read(uid) == sample_message(tag)
    check_uidlist_consistent(folder)
