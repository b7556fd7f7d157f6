"""A domain admin's token adding a sender identity: another tenant's domain reads as missing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from provider.models import Identity
from tests.api.conftest import ApiClient, token_for
from tests.conftest import make_admin, make_domain, make_mailbox


def test_an_identity_in_another_tenants_domain_is_404_like_a_missing_domain(
    client_for: Any, session: Session
) -> None:
    mine = make_domain(session, "mine.test")
    make_mailbox(session, "me@mine.test")
    make_mailbox(session, "victim@theirs.test")
    tenant = make_admin(session, "tenant@example.com", superadmin=False, domains=[mine])
    session.commit()
    client: ApiClient = client_for(token_for(session, tenant))
    path = "/api/v1/mailboxes/me@mine.test/identities"
    foreign = client.post(path, json={"address": "ceo@theirs.test"})
    missing = client.post(path, json={"address": "ceo@nowhere.test"})
    assert (foreign.status_code, missing.status_code) == (404, 404)
    assert foreign.json()["detail"] == missing.json()["detail"]
    assert "address" in foreign.json()["errors"]
    assert session.scalar(select(func.count()).select_from(Identity)) == 0
    own = client.post(path, json={"address": "info@mine.test"})
    assert own.status_code == 201, own.text
