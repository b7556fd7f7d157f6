"""Throttling state for logins and signups: per-key counters that expire and never outgrow a cap."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from flask import Flask
from limits.storage import Storage

from provider.services.clock import now

V = TypeVar("V")

# Keys one table keeps at most. Past it the oldest key goes first (a flood of new keys forgets
# old ones, never the process's memory); the two-table limiters below keep the keys that are
# blocked apart, so a flood of single failures cannot push a blocked key out.
MAX_KEYS = 20_000
# How often (s) a table looks past its front for expired keys (its order is by last touch,
# not by expiry, where keys have different lifetimes).
SWEEP_SECONDS = 60.0


class BoundedTable(Generic[V]):
    """Per-key values with an expiry time each, in the order the keys were last written.

    Expired keys are dropped from the front as new ones are written (and by a full sweep at
    most once per SWEEP_SECONDS), and past `max_keys` the least recently written key is
    evicted, so memory stays bounded whatever keys arrive. Not locked: its owner locks.
    """

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max(int(max_keys), 1)
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def get(self, key: str, moment: float) -> V | None:
        """The value of `key` unless it expired by `moment` (then it is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= moment:
            del self._entries[key]
            return None
        return entry[1]

    def expires(self, key: str) -> float | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[0]

    def put(self, key: str, value: V, expires: float, moment: float) -> None:
        """Write `key` (now the most recent), then drop what expired and what is over the cap."""
        self._entries[key] = (expires, value)
        self._entries.move_to_end(key)
        self.prune(moment)

    def pop(self, key: str) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry[1]

    def pop_oldest(self) -> tuple[str, V] | None:
        if not self._entries:
            return None
        key, (_expires, value) = self._entries.popitem(last=False)
        return key, value

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        return count

    def prune(self, moment: float) -> None:
        """Drop the expired keys at the front (all of them, once per SWEEP_SECONDS), then the
        oldest keys over the cap."""
        entries = self._entries
        while entries:
            key, (expires, _value) = next(iter(entries.items()))
            if expires > moment:
                break
            del entries[key]
        if moment >= self._next_sweep:
            self._next_sweep = moment + SWEEP_SECONDS
            for key in [key for key, (expires, _) in entries.items() if expires <= moment]:
                del entries[key]
        while len(entries) > self.max_keys:
            entries.popitem(last=False)


class FailureLimiter:
    """Counts failures per key within a sliding window; a key over the limit is blocked.

    Keys are namespaced strings ("email:alice@x", "ip:192.0.2.1"): OWASP's advice is to keep
    the per-account and per-address buckets apart, so one attacker cannot lock everybody out
    from one address and a spray across accounts is still caught.

    Memory is bounded (issue 11): asking about a key stores nothing, a key is forgotten a
    window after its last failure, and each of the two tables (keys still counting, keys
    blocked) holds at most `max_keys`, the oldest evicted first. Blocked keys have a table of
    their own, so new keys (one failure each) can only push out other counting keys.
    """

    def __init__(self, max_failures: int, window_seconds: float, max_keys: int = MAX_KEYS) -> None:
        self.max_failures = max(int(max_failures), 1)
        self.window = float(window_seconds)
        self._counting: BoundedTable[tuple[float, ...]] = BoundedTable(max_keys)
        self._blocked: BoundedTable[tuple[float, ...]] = BoundedTable(max_keys)
        self._lock = threading.Lock()

    def key_count(self) -> int:
        """Keys held now, in both tables (a measure of its memory)."""
        with self._lock:
            return len(self._counting) + len(self._blocked)

    def _is_blocked(self, key: str, moment: float) -> bool:
        failures = self._blocked.get(key, moment)
        if failures is None:
            return False
        recent = tuple(t for t in failures if t > moment - self.window)
        if len(recent) >= self.max_failures:
            return True
        # The oldest failure left the window: the key counts again with what is still in it.
        self._blocked.pop(key)
        if recent:
            self._counting.put(key, recent, recent[-1] + self.window, moment)
        return False

    def blocked(self, *keys: str) -> bool:
        moment = now().timestamp()
        with self._lock:
            return any(self._is_blocked(key, moment) for key in keys)

    def fail(self, *keys: str) -> None:
        moment = now().timestamp()
        with self._lock:
            for key in keys:
                earlier = self._blocked.pop(key) or self._counting.pop(key) or ()
                recent = (*(t for t in earlier if t > moment - self.window), moment)
                recent = recent[-self.max_failures :]
                table = self._blocked if len(recent) >= self.max_failures else self._counting
                table.put(key, recent, moment + self.window, moment)
            self._blocked.prune(moment)  # expire blocked keys that nobody writes any more

    def reset(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._counting.pop(key)
                self._blocked.pop(key)


def login_limiter(app: Flask, name: str) -> FailureLimiter:
    """The app's limiter of failed web logins called `name` ("admin", "account"): each its own
    buckets, both with the LOGIN_MAX_FAILURES per LOGIN_WINDOW_SECONDS limits."""
    key = f"{name}_login_limiter"
    limiter = app.extensions.get(key)
    if limiter is None:
        limiter = app.extensions[key] = FailureLimiter(
            int(app.config["LOGIN_MAX_FAILURES"]), float(app.config["LOGIN_WINDOW_SECONDS"])
        )
    return limiter  # type: ignore[no-any-return]


class BoundedMemoryStorage(Storage):
    """Flask-Limiter's counters in this process (`bounded-memory://`, what `memory://` in
    RATELIMIT_STORAGE_URI is served by), bounded like FailureLimiter.

    The `limits` package's own memory storage keeps every key until its window ends, however
    many arrive. Here keys hit once (what a flood of new keys is made of) are evicted before
    keys hit more often (those near or at their limit), each table capped at `max_keys`.
    Fixed windows only (Flask-Limiter's default strategy, the one the signup uses).
    """

    STORAGE_SCHEME = ["bounded-memory"]

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        max_keys: int = MAX_KEYS,
        **options: Any,
    ) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._once: BoundedTable[int] = BoundedTable(max_keys)
        self._more: BoundedTable[int] = BoundedTable(max_keys)
        self._lock = threading.Lock()

    def key_count(self) -> int:
        """Keys held now (a measure of its memory)."""
        with self._lock:
            return len(self._once) + len(self._more)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def _find(self, key: str, moment: float) -> tuple[BoundedTable[int], int] | None:
        for table in (self._more, self._once):
            count = table.get(key, moment)
            if count is not None:
                return table, count
        return None

    def incr(self, key: str, expiry: int | float, amount: int = 1) -> int:
        moment = time.time()
        with self._lock:
            found = self._find(key, moment)
            if found is None:
                count, expires = amount, moment + expiry
            else:
                table, count = found
                expires = table.expires(key) or moment + expiry
                table.pop(key)
                count += amount
            (self._once if count <= 1 else self._more).put(key, count, expires, moment)
            return count

    def get(self, key: str) -> int:
        with self._lock:
            found = self._find(key, time.time())
            return 0 if found is None else found[1]

    def get_expiry(self, key: str) -> float:
        with self._lock:
            moment = time.time()
            found = self._find(key, moment)
            return (found[0].expires(key) or moment) if found else moment

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            return self._once.clear() + self._more.clear()

    def clear(self, key: str) -> None:
        with self._lock:
            self._once.pop(key)
            self._more.pop(key)


def storage_uri(configured: str) -> str:
    """RATELIMIT_STORAGE_URI for Flask-Limiter: `memory://` becomes the bounded storage above;
    any other (redis://…) is used as given (Redis expires its keys itself)."""
    return "bounded-memory://" if configured.strip() in {"", "memory://"} else configured
