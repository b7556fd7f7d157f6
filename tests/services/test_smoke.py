"""Smoke test of the fixtures."""

from tests.conftest import make_mailbox


def test_mailbox_factory_creates_mailbox(session):
    mailbox = make_mailbox(session)
    assert mailbox.address == "alice@example.test"
