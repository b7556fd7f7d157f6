"""The Sieve duplicate test's memory (RFC 7352): the IDs each mailbox has seen, in the database."""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from provider.models import SieveDuplicate
from provider.services.clock import now

log = logging.getLogger(__name__)


def _key(handle: str, value: str) -> str:
    return hashlib.sha256(f"{handle}\0{value}".encode("utf-8", "replace")).hexdigest()


class DuplicateTracker:
    """Answers one delivery's duplicate tests, and tracks their IDs once the delivery succeeded.

    RFC 7352 §3: an ID is tracked only when the message was delivered (a rejected or failed
    delivery leaves nothing behind, so the retry is not taken for a duplicate); its period runs
    from the first sighting, or with `:last` from the latest one; two tests of one ID in one
    run both see the state from before the run.
    """

    def __init__(self, session: Session, mailbox_id: int) -> None:
        self.session = session
        self.mailbox_id = mailbox_id
        # key -> (seconds, last, was a duplicate)
        self.pending: dict[str, tuple[int, bool, bool]] = {}

    def seen(self, handle: str, value: str, seconds: int, last: bool) -> bool:
        key = _key(handle, value)
        expires = self.session.scalar(
            select(SieveDuplicate.expires_at).where(
                SieveDuplicate.mailbox_id == self.mailbox_id, SieveDuplicate.key == key
            )
        )
        duplicate = expires is not None and expires > now()
        before = self.pending.get(key)
        if before is not None:
            seconds, last = max(seconds, before[0]), last or before[1]
        self.pending[key] = (seconds, last, duplicate)
        return duplicate

    def record(self) -> None:
        """Track the IDs of the delivered message; a failure is logged, never raised (the
        message is stored already: at worst a later copy is not known as a duplicate)."""
        rows = [
            (key, seconds)
            for key, (seconds, last, duplicate) in self.pending.items()
            if last or not duplicate
        ]
        self.pending.clear()
        if not rows:
            return
        try:
            dialect = self.session.get_bind().dialect.name
            insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
            moment = now()
            for key, seconds in rows:
                statement = insert(SieveDuplicate).values(
                    mailbox_id=self.mailbox_id,
                    key=key,
                    expires_at=moment + timedelta(seconds=seconds),
                )
                statement = statement.on_conflict_do_update(
                    index_elements=["mailbox_id", "key"],
                    set_={"expires_at": statement.excluded.expires_at},
                )
                self.session.execute(statement)
            self.session.commit()
        except Exception:
            self.session.rollback()
            log.exception("could not track Sieve duplicate IDs of mailbox %s", self.mailbox_id)


def prune(session: Session) -> int:
    """Forget tracked IDs whose period is over (the outbound-cleanup job)."""
    result = session.execute(delete(SieveDuplicate).where(SieveDuplicate.expires_at <= now()))
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
