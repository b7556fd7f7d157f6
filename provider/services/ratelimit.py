"""Throttling state for logins, signups and API tokens: per-key counters that expire, never
outgrow a cap, and are shared by every process of an installation through its login store."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from flask import Flask
from limits.storage import Storage

from provider.services.clock import now
from provider.services.login_store import (
    LoginStore,
    StoreUnavailable,
    open_store,
    shared_store,
    store_path,
)

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

    With a `store`, failures are also counted in its file under `name` (the same bounds), so
    every web process of an installation counts together; this process's own tables are kept
    too and answer alone while the file is unusable (a block either knows refuses).
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        max_keys: int = MAX_KEYS,
        store: LoginStore | None = None,
        name: str = "",
    ) -> None:
        self.max_failures = max(int(max_failures), 1)
        self.window = float(window_seconds)
        if ":" in name:
            raise ValueError(f"a limiter's name holds no colon: {name!r}")
        self.store = store
        self.name = name
        self._counting: BoundedTable[tuple[float, ...]] = BoundedTable(max_keys)
        self._blocked: BoundedTable[tuple[float, ...]] = BoundedTable(max_keys)
        self._lock = threading.Lock()

    def _stored(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        """The keys as the store holds them: this limiter's name first (one file for all; a
        name never holds a colon, so no two limiters' keys can meet)."""
        return tuple(f"{self.name}:{key}" for key in keys)

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
            if any(self._is_blocked(key, moment) for key in keys):
                return True
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                return self.store.throttle_blocked(
                    self._stored(keys), moment, self.max_failures, self.window
                )
        return False

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
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                self.store.throttle_failed(
                    self._stored(keys), moment, self.max_failures, self.window
                )

    def reset(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._counting.pop(key)
                self._blocked.pop(key)
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                self.store.throttle_reset(self._stored(keys))


def login_limiter(app: Flask, name: str) -> FailureLimiter:
    """The app's limiter of failed web logins called `name` ("admin", "account"): each its own
    buckets, both with the LOGIN_MAX_FAILURES per LOGIN_WINDOW_SECONDS limits, counted with
    every other process of the installation in its login store."""
    key = f"{name}_login_limiter"
    limiter = app.extensions.get(key)
    if limiter is None:
        limiter = app.extensions[key] = FailureLimiter(
            int(app.config["LOGIN_MAX_FAILURES"]),
            float(app.config["LOGIN_WINDOW_SECONDS"]),
            store=shared_store(app, MAX_KEYS),
            name=f"{name}-login",
        )
    return limiter  # type: ignore[no-any-return]


class BoundedMemoryStorage(Storage):
    """Fixed-window counters in this process (`bounded-memory://`; what SharedWindowStorage
    counts in while its file is unusable), bounded like FailureLimiter.

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


class SharedWindowStorage(BoundedMemoryStorage):
    """Fixed-window counters in the installation's login store
    (`provider-shared:///…/run/logins.sqlite3`, what `memory://` in RATELIMIT_STORAGE_URI is
    served by): the signup limits and the API's per-token limit count every web process's
    requests together. While the file is unusable this process counts alone, in the bounded
    memory it inherits. Fixed windows only (Flask-Limiter's default strategy and the API's)."""

    STORAGE_SCHEME = ["provider-shared"]

    def __init__(self, uri: str | None = None, **options: Any) -> None:
        super().__init__(uri, **options)
        path = (uri or "").partition("://")[2]
        if not path:
            raise ValueError(f"no file in {uri!r}: provider-shared:///path/to/logins.sqlite3")
        self.store = open_store(path, int(options.get("max_keys", MAX_KEYS)))

    def incr(self, key: str, expiry: int | float, amount: int = 1) -> int:
        try:
            return self.store.window_hit(key, time.time(), float(expiry), amount)[0]
        except StoreUnavailable:
            return super().incr(key, expiry, amount)

    def get(self, key: str) -> int:
        try:
            return self.store.window_count(key, time.time())[0]
        except StoreUnavailable:
            return super().get(key)

    def get_expiry(self, key: str) -> float:
        try:
            return self.store.window_count(key, time.time())[1]
        except StoreUnavailable:
            return super().get_expiry(key)

    def reset(self) -> int | None:
        cleared = super().reset() or 0
        with contextlib.suppress(StoreUnavailable):
            cleared += self.store.window_clear()
        return cleared

    def clear(self, key: str) -> None:
        super().clear(key)
        with contextlib.suppress(StoreUnavailable):
            self.store.window_clear(key)


def storage_uri(configured: str, app: Flask) -> str:
    """RATELIMIT_STORAGE_URI for Flask-Limiter and the API: `memory://` becomes the app's
    login store (shared by every process of the installation, SharedWindowStorage); any
    other (redis://…) is used as given (Redis expires its keys itself)."""
    if configured.strip() in {"", "memory://"}:
        return f"provider-shared://{os.path.abspath(store_path(app))}"
    return configured
