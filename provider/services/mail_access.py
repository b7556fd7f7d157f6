"""Who may read mail over IMAP/POP3 or send it over submission: credentials, then policy;
failure delays, bans, login turns and connection limits (shared by every process)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from flask import Flask
from sqlalchemy.orm import Session

from provider.errors import AccessRefused, AuthenticationFailed, TooManyConnections
from provider.models import Mailbox
from provider.models.mailbox import MailboxStatus, Plan
from provider.services import auth
from provider.services.clock import now
from provider.services.login_store import LoginStore, StoreUnavailable, shared_store
from provider.services.ratelimit import MAX_KEYS, BoundedTable
from provider.services.shared_slots import SharedSlots, SlotsUnavailable

AUTHENTICATION_FAILED = "Authentication failed."
SUBMISSION = "submission"
MANAGESIEVE = "managesieve"
PROTOCOL_NAMES = {
    "imap": "IMAP",
    "pop3": "POP3",
    SUBMISSION: "Submission",
    MANAGESIEVE: "ManageSieve",
}
# Logins every mailbox may use whatever its protocol policy: sending (what it may send as is
# the identities' rule) and managing its Sieve scripts (vacation and forwarding are for every
# mailbox; what a POP3-only mailbox may store is services/sieve_scripts' rule).
ANY_POLICY = frozenset({SUBMISSION, MANAGESIEVE})
# Dovecot's mail_max_userip_connections, applied to submission sessions too.
DEFAULT_MAX_CONNECTIONS_PER_USER_IP = 10
MAX_PENALTY_SECONDS = 15.0
PENALTY_EXPIRES_SECONDS = 3600.0
REMEMBERED_ATTEMPTS = 10
# A login whose address's turns are all held by other processes looks again this often (s).
TURN_POLL_SECONDS = 0.05


def check_policy(mailbox: Mailbox, protocol: str) -> None:
    """Refuse a mailbox whose status or policy forbids `protocol`; call only after the password
    was verified (RELIABILITY A6), so the reason never leaks to someone without it."""
    name = PROTOCOL_NAMES.get(protocol, protocol.upper())
    if mailbox.status == MailboxStatus.SUSPENDED.value:
        raise AccessRefused("This mailbox is suspended; contact your provider")
    expired = mailbox.status == MailboxStatus.EXPIRED.value or (
        mailbox.plan == Plan.TRIAL.value
        and mailbox.trial_expires_at is not None
        and mailbox.trial_expires_at <= now()
    )
    if expired:
        raise AccessRefused("The trial of this mailbox has expired; contact your provider")
    if protocol not in ANY_POLICY and not mailbox.protocol_allowed(protocol):
        raise AccessRefused(f"{name} access is not enabled for this mailbox; contact your provider")


def login(session: Session, address: str, password: str, protocol: str) -> Mailbox:
    """The mailbox for these credentials if it may use `protocol` now.

    Raises AuthenticationFailed (same text, same work, for a wrong password and an unknown
    user) or AccessRefused (only after a correct password). Commits a rehashed password.
    """
    mailbox = auth.authenticate_mailbox(session, address, password)
    if mailbox is None:
        session.rollback()
        raise AuthenticationFailed(AUTHENTICATION_FAILED)
    # Only a rehashed password has anything to commit; a commit regardless would expire the
    # mailbox and make check_policy and the caller load it again (a SELECT per login).
    if session.dirty:
        session.commit()
    check_policy(mailbox, protocol)
    return mailbox


def address_group(remote: str) -> str:
    """The key failures are counted under: the IPv4 address, or the IPv6 /48 (RELIABILITY A1)."""
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/48", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


@dataclass
class _Penalty:
    failures: int = 0
    last: float = 0.0
    attempts: deque[bytes] = field(default_factory=lambda: deque(maxlen=REMEMBERED_ATTEMPTS))


def _default_clock(store: LoginStore | None) -> Callable[[], float]:
    # Times in the shared file are compared across processes and restarts: the wall clock.
    return time.time if store is not None else time.monotonic


class FailureDelay:
    """Per-address delay before answering a failed login: doubling, capped at 15 s (A1).

    Repeating one of the last ten user+password attempts does not escalate (a client retrying
    a saved wrong password is not guessing). Penalties expire an hour after the last failure
    and are cleared by a successful login from the address. At most `max_keys` addresses are
    remembered, the least recently failed forgotten first (bounded memory under a scan from
    many addresses, e.g. the /48s of one IPv6 /32).

    With a `store`, the penalties live in its file and so count across every process of the
    installation; while the file is unusable, this process's own table (always kept too)
    answers instead. The store's writes can wait for its lock (BUSY_TIMEOUT_MS): call
    `failed` and `succeeded` off the event loop.
    """

    def __init__(
        self,
        base_seconds: float,
        clock: Callable[[], float] | None = None,
        max_keys: int = MAX_KEYS,
        store: LoginStore | None = None,
    ) -> None:
        self.base_seconds = base_seconds
        self.clock = clock or _default_clock(store)
        self.store = store
        self._penalties: BoundedTable[_Penalty] = BoundedTable(max_keys)
        self._lock = threading.Lock()
        self._key = secrets.token_bytes(16)
        self._key_from_store = False

    def _fingerprint_key(self) -> bytes:
        if self.store is not None and not self._key_from_store:
            with contextlib.suppress(StoreUnavailable):
                self._key = self.store.secret()
                self._key_from_store = True
        return self._key

    def key_count(self) -> int:
        """Keys held now (a measure of its memory)."""
        with self._lock:
            return len(self._penalties)

    def failed(self, remote: str, user: str, password: str) -> float:
        """Record a failure and return how many seconds to wait before answering it."""
        secret = self._fingerprint_key()
        attempt = f"{user}\0{password}".encode(errors="surrogateescape")
        fingerprint = hmac.new(secret, attempt, hashlib.sha256).digest()[:16]
        moment = self.clock()
        key = address_group(remote)
        with self._lock:
            penalty = self._penalties.get(key, moment) or _Penalty()
            if fingerprint not in penalty.attempts or penalty.failures == 0:
                penalty.failures += 1
                penalty.attempts.append(fingerprint)
            penalty.last = moment
            failures = penalty.failures
            self._penalties.put(key, penalty, moment + PENALTY_EXPIRES_SECONDS, moment)
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                failures = self.store.penalty_failed(
                    key, fingerprint, moment, PENALTY_EXPIRES_SECONDS, REMEMBERED_ATTEMPTS
                )
        return self.delay(failures)

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th counted failure."""
        if failures <= 0:
            return 0.0
        # 2**n overflows a float past n = 1023: the cap is reached long before.
        return min(self.base_seconds * 2 ** min(failures - 1, 64), MAX_PENALTY_SECONDS)

    def succeeded(self, remote: str) -> None:
        key = address_group(remote)
        with self._lock:
            self._penalties.pop(key)
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                self.store.penalty_clear(key)


class BanList:
    """RELIABILITY A2: an address (group) with `limit` failed logins within `window` seconds —
    IMAP, POP3, submission, the admin panel and the account pages counted together — is
    refused by all of them for `ban_seconds`. Below the limit nothing is slowed by it (the
    failure delay does that), and another address is never affected.

    Bounded: addresses still counting and banned addresses are two tables of at most
    `max_keys` each (oldest evicted first), so a scan from many addresses with a few failures
    each can push out other counting addresses but never a ban.

    With a `store`, counts and bans live in its file (the same two bounded tables), shared by
    every process of the installation; this process's own tables are always kept too and
    answer while the file is unusable (a ban either knows refuses). `banned` only reads
    (WAL: never waits for a writer); `failure` writes and may wait up to the store's busy
    timeout: call it off the event loop.
    """

    def __init__(
        self,
        limit: int,
        window: float = 86400.0,
        ban_seconds: float = 86400.0,
        clock: Callable[[], float] | None = None,
        max_keys: int = MAX_KEYS,
        store: LoginStore | None = None,
    ) -> None:
        self.limit = max(limit, 1)
        self.window = window
        self.ban_seconds = ban_seconds
        self.clock = clock or _default_clock(store)
        self.store = store
        self._failures: BoundedTable[array[float]] = BoundedTable(max_keys)
        self._banned: BoundedTable[float] = BoundedTable(max_keys)
        self._lock = threading.Lock()

    def key_count(self) -> int:
        """Keys held now (a measure of its memory)."""
        with self._lock:
            return len(self._failures) + len(self._banned)

    def failure(self, remote: str) -> bool:
        """Count a failed login from `remote`; True when the address is (now) banned."""
        key = address_group(remote)
        moment = self.clock()
        banned_here = self._count(key, moment)
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                banned_anywhere = self.store.ban_failure(
                    key, moment, self.limit, self.window, self.ban_seconds
                )
                return banned_anywhere or banned_here
        return banned_here

    def _count(self, key: str, moment: float) -> bool:
        with self._lock:
            if self._banned.get(key, moment) is not None:
                return True
            earlier = self._failures.pop(key) or ()
            # Unboxed doubles: up to limit-1 times per address, ~8 bytes each.
            recent = array("d", (t for t in earlier if moment - t <= self.window))
            recent.append(moment)
            if len(recent) >= self.limit:
                until = moment + self.ban_seconds
                self._banned.put(key, until, until, moment)
                return True
            self._failures.put(key, recent, moment + self.window, moment)
            self._banned.prune(moment)  # expired bans go even if nobody asks about them
            return False

    def banned(self, remote: str) -> bool:
        key = address_group(remote)
        moment = self.clock()
        with self._lock:
            if self._banned.get(key, moment) is not None:
                return True
        if self.store is not None:
            with contextlib.suppress(StoreUnavailable):
                return self.store.banned(key, moment)
        return False


class ConnectionLimit:
    """Counts logged-in sessions per user+address; refuses one over the limit (A4).

    With `slots`, the sessions of every process of the installation count together: each
    holds one of the user+address's `limit` slots in the shared lock file, which the kernel
    frees when the process ends, even by kill -9. While the file is unusable, this process's
    own count (always kept too) is the limit. Non-blocking: safe on the event loop."""

    def __init__(self, limit: int, slots: SharedSlots | None = None, name: str = "") -> None:
        self.limit = limit
        self.slots = slots
        self.name = name
        self._counts: dict[tuple[str, str], int] = {}
        self._held: dict[tuple[str, str], list[int]] = {}
        self._lock = threading.Lock()

    def acquire(self, user: str, remote: str) -> None:
        key = (user, address_group(remote))
        with self._lock:
            if self._counts.get(key, 0) >= self.limit:
                raise TooManyConnections("Maximum number of connections from user+IP exceeded")
            if self.slots is not None:
                with contextlib.suppress(SlotsUnavailable):
                    slot = self.slots.acquire(
                        f"connection\0{self.name}\0{key[0]}\0{key[1]}", self.limit
                    )
                    if slot is None:
                        raise TooManyConnections(
                            "Maximum number of connections from user+IP exceeded"
                        )
                    self._held.setdefault(key, []).append(slot)
            self._counts[key] = self._counts.get(key, 0) + 1

    def release(self, user: str, remote: str) -> None:
        key = (user, address_group(remote))
        with self._lock:
            count = self._counts.get(key, 0) - 1
            if count > 0:
                self._counts[key] = count
            else:
                self._counts.pop(key, None)
            held = self._held.get(key)
            if held:
                slot = held.pop()
                if not held:
                    del self._held[key]
                if self.slots is not None:
                    self.slots.release(slot)


def is_loopback(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer.split("%")[0]).is_loopback
    except ValueError:
        return False


def plaintext_login_allowed(tls_active: bool, peer: str) -> bool:
    """DESIGN.md §6: plaintext LOGIN/USER/AUTHENTICATE PLAIN only over TLS or from loopback."""
    return tls_active or is_loopback(peer)


class LoginTurns:
    """At most `limit` logins from one address (group) are checked at a time; the others wait
    their turn. Parallel connections then cannot multiply a guesser's rate past the failure
    delay, which is served inside the turn (RELIABILITY A1: Dovecot's documentation admits that
    parallel attempts get around its penalty). Used on the event loop only.

    With `slots`, a turn is also one of the address's `limit` slots in the shared lock file,
    so the limit holds across every process of the installation: a login that finds them all
    held by other processes looks again every `poll_seconds` (its own process's waiters queue
    on the semaphore, as before). A process that dies gives its turns back at once."""

    def __init__(
        self, limit: int, slots: SharedSlots | None = None, poll_seconds: float = TURN_POLL_SECONDS
    ) -> None:
        self.limit = max(limit, 1)
        self.slots = slots
        self.poll_seconds = poll_seconds
        self._turns: dict[str, asyncio.Semaphore] = {}
        self._waiting: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def turn(self, remote: str) -> AsyncIterator[None]:
        key = address_group(remote)
        semaphore = self._turns.setdefault(key, asyncio.Semaphore(self.limit))
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            async with semaphore:
                slot = await self._shared_turn(key)
                try:
                    yield
                finally:
                    if slot is not None and self.slots is not None:
                        self.slots.release(slot)
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key], self._turns[key]

    async def _shared_turn(self, key: str) -> int | None:
        """One of the address's shared slots, once one is free; None without the file."""
        if self.slots is None:
            return None
        while True:
            try:
                slot = self.slots.acquire(f"turn\0{key}", self.limit)
            except SlotsUnavailable:
                return None
            if slot is not None:
                return slot
            await asyncio.sleep(self.poll_seconds)


class Guards:
    """What every IMAP, POP3 and submission session and the web logins of one installation
    share: one failure-delay table and one ban list for all (a penalty or ban earned on POP3
    also holds on IMAP, submission and the web), kept in INSTANCE_DIR/run/logins.sqlite3 so
    every process counts together; login turns per address and a connection count per
    protocol (Dovecot's mail_max_userip_connections is per protocol too), held as record locks
    in INSTANCE_DIR/run/slots.lock so that they too hold across every process."""

    def __init__(self, app: Flask) -> None:
        config = app.config
        self.store = shared_store(app, MAX_KEYS)
        self.slots = shared_slots(slots_path(app))
        self.failures = FailureDelay(float(config["LOGIN_FAILURE_DELAY_SECONDS"]), store=self.store)
        self.logins = LoginTurns(int(config["LOGIN_PARALLEL_PER_ADDRESS"]), self.slots)
        self.bans = BanList(
            int(config["LOGIN_BAN_FAILURES"]),
            ban_seconds=float(config["LOGIN_BAN_SECONDS"]),
            store=self.store,
        )
        self.imap_connections = ConnectionLimit(
            int(config["IMAP_MAX_CONNECTIONS_PER_USER_IP"]), self.slots, "imap"
        )
        self.pop3_connections = ConnectionLimit(
            int(config["POP3_MAX_CONNECTIONS_PER_USER_IP"]), self.slots, "pop3"
        )
        self.managesieve_connections = ConnectionLimit(
            int(
                config.get("MANAGESIEVE_MAX_CONNECTIONS_PER_USER_IP")
                or DEFAULT_MAX_CONNECTIONS_PER_USER_IP
            ),
            self.slots,
            "managesieve",
        )
        self.submission_connections = ConnectionLimit(
            int(
                config.get("SUBMISSION_MAX_CONNECTIONS_PER_USER_IP")
                or DEFAULT_MAX_CONNECTIONS_PER_USER_IP
            ),
            self.slots,
            "submission",
        )

    def login_failed(self, remote: str, user: str, password: str) -> float | None:
        """Count a failed login everywhere: None when the address is (now) banned, else the
        seconds to wait before answering. Writes the shared file: run it off the event loop."""
        if self.bans.failure(remote):
            return None
        return self.failures.failed(remote, user, password)


def slots_path(app: Flask) -> str:
    """The lock file whose byte ranges are the login turns and connection slots."""
    return os.path.join(app.config["INSTANCE_DIR"], "run", "slots.lock")


_SLOTS: dict[str, SharedSlots] = {}
_SLOTS_LOCK = threading.Lock()


def shared_slots(path: str) -> SharedSlots:
    """One SharedSlots per file per process: record locks belong to the process, so two
    objects on one file would each be granted the other's slots."""
    key = os.path.realpath(path)
    with _SLOTS_LOCK:
        slots = _SLOTS.get(key)
        if slots is None:
            slots = _SLOTS[key] = SharedSlots(key)
        return slots


def guards(app: Flask) -> Guards:
    """The app's one Guards instance, made on first use."""
    state = app.extensions.get("mail_access_guards")
    if state is None:
        state = app.extensions["mail_access_guards"] = Guards(app)
    return state  # type: ignore[no-any-return]
