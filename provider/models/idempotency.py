"""Idempotency keys of /api/v1 POSTs: the first answer, replayed for a retry of the same request."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from provider.extensions import db
from provider.models.types import UTCDateTime
from provider.services.clock import now


class ApiIdempotencyKey(db.Model):  # type: ignore[name-defined,misc]
    """One `Idempotency-Key` a token sent with a POST, the request's fingerprint and the
    response it got; kept 24 hours (services/idempotency)."""

    __tablename__ = "api_idempotency_keys"
    __table_args__ = (UniqueConstraint("token_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    # sha256 hex of method, path and body: the same key with another request is refused.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now, index=True)

    def __repr__(self) -> str:
        return f"<ApiIdempotencyKey {self.key!r} of token {self.token_id}>"
