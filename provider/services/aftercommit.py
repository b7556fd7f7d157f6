"""Side effects that must wait for the database: run after COMMIT, dropped on ROLLBACK."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)
_KEY = "provider_after_commit"


def on_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once the session's current transaction commits (never if it rolls back).

    Used for changes on disk that must not happen for a database change that did not: removing
    a deleted mailbox's mail, for one.
    """
    session.info.setdefault(_KEY, []).append(action)


@event.listens_for(Session, "after_commit")
def _run_actions(session: Session) -> None:
    for action in session.info.pop(_KEY, []):
        try:
            action()
        except Exception:  # the commit stands; a failed cleanup is logged for the operator
            log.exception("after-commit action %r failed", action)


@event.listens_for(Session, "after_rollback")
def _drop_actions(session: Session) -> None:
    session.info.pop(_KEY, None)
