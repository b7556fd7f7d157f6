"""Login turns and connection limits shared by separate processes through one lock file, and
freed when a holder is killed."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from provider.errors import TooManyConnections
from provider.services.mail_access import ConnectionLimit, LoginTurns, shared_slots
from provider.services.shared_slots import SharedSlots
from tests.conftest import wait_until

FORK = multiprocessing.get_context("fork")


def hold_connections(path: str, count: int, pipe: Connection) -> None:
    """In a child: log `count` sessions of alice from 192.0.2.7 in, say how many got in, and
    hold them until killed."""
    limit = ConnectionLimit(3, SharedSlots(path), "imap")
    got = 0
    for _ in range(count):
        try:
            limit.acquire("alice@example.test", "192.0.2.7")
            got += 1
        except TooManyConnections:
            pass
    pipe.send(got)
    signal.pause()


def child(path: Path, count: int) -> tuple[multiprocessing.process.BaseProcess, int]:
    ours, theirs = FORK.Pipe()
    process = FORK.Process(target=hold_connections, args=(str(path), count, theirs), daemon=True)
    process.start()
    assert ours.poll(10), "the child did not report"
    return process, int(ours.recv())


def test_a_connection_limit_holds_across_processes_and_a_killed_one_frees_its_slots(tmp_path):
    path = tmp_path / "run" / "slots.lock"
    first, got = child(path, 2)
    assert got == 2
    second, got = child(path, 5)
    assert got == 1  # the limit is 3 for the installation, not 3 per process
    here = ConnectionLimit(3, SharedSlots(path), "imap")
    with pytest.raises(TooManyConnections):
        here.acquire("alice@example.test", "192.0.2.7")
    # Another user, another address, another protocol: slots of their own.
    here.acquire("bob@example.test", "192.0.2.7")
    here.acquire("alice@example.test", "198.51.100.1")
    ConnectionLimit(3, SharedSlots(path), "pop3").acquire("alice@example.test", "192.0.2.7")
    assert first.pid is not None
    os.kill(first.pid, signal.SIGKILL)  # no release, no clean-up: the kernel frees its slots
    first.join(10)
    here.acquire("alice@example.test", "192.0.2.7")
    here.acquire("alice@example.test", "192.0.2.7")
    with pytest.raises(TooManyConnections):
        here.acquire("alice@example.test", "192.0.2.7")
    here.release("alice@example.test", "192.0.2.7")
    here.acquire("alice@example.test", "192.0.2.7")  # a released slot is taken again
    second.kill()
    second.join(10)


def test_a_process_is_not_granted_slots_it_already_holds(tmp_path):
    slots = shared_slots(str(tmp_path / "slots.lock"))
    assert shared_slots(str(tmp_path / "slots.lock")) is slots  # one object per file
    taken = [slots.acquire("key", 4) for _ in range(5)]
    assert None not in taken[:4] and len(set(taken[:4])) == 4 and taken[4] is None
    for slot in taken[:4]:
        assert slot is not None
        slots.release(slot)
    assert slots.held() == 0


def take_turn_and_wait(path: str, taken: Connection, go: Connection) -> None:
    """In a child: take a login turn of 192.0.2.7 (limit 1), say so, give it back on a word."""

    async def main() -> None:
        turns = LoginTurns(1, SharedSlots(path))
        async with turns.turn("192.0.2.7"):
            taken.send(True)
            await asyncio.to_thread(go.recv)

    asyncio.run(main())


def test_login_turns_are_counted_across_processes(tmp_path):
    path = str(tmp_path / "slots.lock")
    taken, taken_child = FORK.Pipe()
    go, go_child = FORK.Pipe()
    process = FORK.Process(target=take_turn_and_wait, args=(path, taken_child, go_child))
    process.start()
    assert taken.poll(10) and taken.recv()
    turns = LoginTurns(1, SharedSlots(path), poll_seconds=0.01)
    events: list[str] = []

    async def main() -> None:
        async def mine(remote: str) -> None:
            async with turns.turn(remote):
                events.append(remote)

        other = asyncio.ensure_future(mine("198.51.100.1"))  # another address: no wait
        waiting = asyncio.ensure_future(mine("192.0.2.7"))
        await other
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the other process holds 192.0.2.7's only turn
        go.send(True)
        await asyncio.wait_for(waiting, 10)

    asyncio.run(main())
    process.join(10)
    assert events == ["198.51.100.1", "192.0.2.7"]


def test_a_killed_process_gives_its_login_turn_back(tmp_path):
    path = str(tmp_path / "slots.lock")
    taken, taken_child = FORK.Pipe()
    _go, go_child = FORK.Pipe()  # never told: it is killed holding the turn
    process = FORK.Process(target=take_turn_and_wait, args=(path, taken_child, go_child))
    process.start()
    assert taken.poll(10) and taken.recv()
    slots = SharedSlots(path)
    assert slots.acquire("turn\x00192.0.2.7", 1) is None
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    assert wait_until(lambda: slots.acquire("turn\x00192.0.2.7", 1) is not None)


def test_an_unusable_slot_file_falls_back_to_counting_in_this_process(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    limit = ConnectionLimit(2, SharedSlots(blocker / "slots.lock"), "imap")
    limit.acquire("alice@example.test", "192.0.2.7")
    limit.acquire("alice@example.test", "192.0.2.7")
    with pytest.raises(TooManyConnections):
        limit.acquire("alice@example.test", "192.0.2.7")
    limit.release("alice@example.test", "192.0.2.7")
    limit.acquire("alice@example.test", "192.0.2.7")
