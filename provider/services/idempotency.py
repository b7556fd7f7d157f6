"""Idempotency keys (draft-ietf-httpapi-idempotency-key-header): a retried POST gets the first
answer again instead of doing the work twice; the same key with another request is refused."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import timedelta

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provider.errors import InvalidInput
from provider.models import ApiIdempotencyKey
from provider.services.clock import now

KEEP_FOR = timedelta(hours=24)
KEY_MAX = 255
ENCRYPTED = "fernet:"
"""Prefix of a stored answer encrypted at rest: an answer may carry a made-up password (a
created mailbox, an import), and a database dump alone must not give it away."""


class KeyReused(InvalidInput):
    """The key was used for a different request (another body, path or method)."""

    http_status = 422


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: str


def check_key(key: str) -> str:
    """A key as given: 1 to 255 visible ASCII characters (no spaces, no control bytes)."""
    if not key or len(key) > KEY_MAX or not all(33 <= ord(ch) <= 126 for ch in key):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {KEY_MAX} visible ASCII characters",
            "Idempotency-Key",
        )
    return key


def _fernet() -> Fernet:
    """The key of stored answers, derived from SECRET_KEY (as the two-factor secrets')."""
    secret_key = str(current_app.config["SECRET_KEY"]).encode()
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"provider api idempotent answer"
    ).derive(secret_key)
    return Fernet(base64.urlsafe_b64encode(key))


def _seal(body: str) -> str:
    return ENCRYPTED + _fernet().encrypt(body.encode()).decode()


def _open(stored: str) -> str | None:
    """The answer as first given; None when it cannot be read (SECRET_KEY changed)."""
    if not stored.startswith(ENCRYPTED):
        return stored  # kept before answers were encrypted
    try:
        return _fernet().decrypt(stored[len(ENCRYPTED) :].encode()).decode()
    except InvalidToken:
        return None


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("utf-8", "surrogatepass"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def find(session: Session, token_id: int, key: str, print_: str) -> StoredResponse | None:
    """The stored answer to replay for this key, None when the key is new (or expired);
    KeyReused when it was used for another request."""
    row = session.scalar(
        select(ApiIdempotencyKey).where(
            ApiIdempotencyKey.token_id == token_id,
            ApiIdempotencyKey.key == key,
            ApiIdempotencyKey.created_at > now() - KEEP_FOR,
        )
    )
    if row is None:
        return None
    if row.fingerprint != print_:
        raise KeyReused(
            "this Idempotency-Key was already used with a different request; "
            "use a new key for a new request",
            "Idempotency-Key",
        )
    body = _open(row.response_body)
    if body is None:
        # Sealed under an earlier SECRET_KEY: the request runs again, and a create that
        # already happened then fails on the taken name rather than happening twice.
        return None
    return StoredResponse(row.status_code, body)


def remember(
    session: Session, token_id: int, key: str, print_: str, status_code: int, body: str
) -> None:
    """Keep the answer (committed at once); keys older than KEEP_FOR go at the same time. A
    concurrent request that stored the same key first wins: its answer is the one kept."""
    moment = now()
    session.execute(
        delete(ApiIdempotencyKey).where(ApiIdempotencyKey.created_at <= moment - KEEP_FOR)
    )
    session.add(
        ApiIdempotencyKey(
            token_id=token_id,
            key=key,
            fingerprint=print_,
            status_code=status_code,
            response_body=_seal(body),
            created_at=moment,
        )
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
