"""Side effects that must follow the database: run after COMMIT (or undone after ROLLBACK)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger(__name__)
_KEY = "provider_after_commit"
_UNDO_KEY = "provider_after_rollback"


def on_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once the session's current transaction commits (never if it rolls back).

    Used for changes on disk that must not happen for a database change that did not: removing
    a deleted mailbox's mail, for one.
    """
    session.info.setdefault(_KEY, []).append(action)


def on_rollback(session: Session, undo: Callable[[], None]) -> None:
    """Run `undo` if the session's current transaction rolls back (never once it commits).

    For what was written on disk ahead of the commit and must not outlive a rollback: the
    Maildirs of a CSV import, made before its rows are committed.
    """
    session.info.setdefault(_UNDO_KEY, []).append(undo)


@event.listens_for(Session, "after_commit")
def _run_actions(session: Session) -> None:
    session.info.pop(_UNDO_KEY, None)
    for action in session.info.pop(_KEY, []):
        try:
            action()
        except Exception:  # the commit stands; a failed cleanup is logged for the operator
            log.exception("after-commit action %r failed", action)


@event.listens_for(Session, "after_rollback")
def _drop_actions(session: Session) -> None:
    session.info.pop(_KEY, None)
    _undo(session)


@event.listens_for(Session, "after_transaction_end")
def _transaction_ended(session: Session, transaction: SessionTransaction) -> None:
    # A session closed (or removed at the end of a request) with its transaction still open
    # discards it without an after_rollback event; the undo actions must run all the same.
    if transaction.parent is None:
        session.info.pop(_KEY, None)
        _undo(session)


def _undo(session: Session) -> None:
    for undo in reversed(session.info.pop(_UNDO_KEY, [])):
        try:
            undo()
        except Exception:  # the rollback stands; a failed undo is logged for the operator
            log.exception("after-rollback action %r failed", undo)
