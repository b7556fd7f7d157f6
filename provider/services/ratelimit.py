"""Failure counters for login and signup throttling, in separate buckets per key."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from datetime import timedelta

from flask import Flask

from provider.services.clock import now


class FailureLimiter:
    """Counts failures per key within a sliding window; a key over the limit is blocked.

    Keys are namespaced strings ("email:alice@x", "ip:192.0.2.1"): OWASP's advice is to keep
    the per-account and per-address buckets apart, so one attacker cannot lock everybody out
    from one address and a spray across accounts is still caught.
    """

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures = max_failures
        self.window = timedelta(seconds=window_seconds)
        self._failures: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def _trim(self, key: str) -> deque:
        cutoff = now() - self.window
        failures = self._failures[key]
        while failures and failures[0] <= cutoff:
            failures.popleft()
        return failures

    def blocked(self, *keys: str) -> bool:
        with self._lock:
            return any(len(self._trim(key)) >= self.max_failures for key in keys)

    def fail(self, *keys: str) -> None:
        with self._lock:
            moment = now()
            for key in keys:
                self._trim(key).append(moment)

    def reset(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


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
