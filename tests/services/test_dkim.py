"""DKIM keys (made with the domain, rotated, retired) and signing that verifies (RFC 6376)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.errors import AlreadyExists, InvalidInput, NotFound
from provider.models import AuditEvent
from provider.models.sending import DkimKey
from provider.services import dkim, provisioning
from provider.services.clock import frozen_at
from tests.conftest import TEST_ACTOR, make_domain

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: quarterly figures\r\n"
    b"Date: Sun, 06 Dec 2026 15:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: not signed\r\n"
    b"\r\n"
    b"Numbers  went   up.\r\n"
)


def dns_of(session: Session, domain_name: str) -> Any:
    """A dkimpy dnsfunc answering with the records we tell customers to publish."""
    domain = provisioning.get_domain(session, domain_name)
    records = {
        f"{key.selector}._domainkey.{domain.name}.".encode(): dkim.dns_value(key).encode()
        for key in dkim.published_keys(session, domain)
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


def events(session: Session, action: str) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def signature_tags(message: bytes) -> dict[bytes, bytes]:
    header = dkimpy.DKIM(message).headers[0]
    assert header[0] == b"DKIM-Signature"
    return dkimpy.util.parse_tag_value(header[1])


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.real_dkim_keys
def test_a_new_domain_gets_a_real_rsa_2048_key_and_its_selector_is_audited(
    session: Session,
) -> None:
    with frozen_at(datetime(2026, 12, 6, 15, tzinfo=UTC)):
        domain = make_domain(session, "example.test")
    key = dkim.signing_key(session, domain)
    assert key is not None
    assert (key.selector, key.algorithm, dkim.key_state(key)) == ("s202612", "rsa", "active")
    private = serialization.load_pem_private_key(key.private_key_pem.encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    public = serialization.load_der_public_key(base64.b64decode(key.public_key))
    assert public.public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]
    (created,) = events(session, "domain.create")
    assert created.after is not None and created.after["dkim_selector"] == "s202612"
    assert "PRIVATE" not in str(created.after)


@pytest.mark.real_dkim_keys
def test_real_keys_differ_per_domain(session: Session) -> None:
    first = dkim.signing_key(session, make_domain(session, "one.test"))
    second = dkim.signing_key(session, make_domain(session, "two.test"))
    assert first is not None and second is not None
    assert first.public_key != second.public_key


def test_rotation_makes_a_new_active_key_and_keeps_the_old_one_published(
    session: Session,
) -> None:
    with frozen_at(datetime(2026, 12, 6, tzinfo=UTC)):
        domain = make_domain(session)
        old = dkim.signing_key(session, domain)
        new = dkim.rotate(session, domain, actor=TEST_ACTOR)
        newer = dkim.rotate(session, domain, actor=TEST_ACTOR)
    session.commit()
    assert old is not None
    assert [old.selector, new.selector, newer.selector] == ["s202612", "s202612b", "s202612c"]
    assert dkim.signing_key(session, domain) == newer
    states = {k.selector: dkim.key_state(k) for k in dkim.list_keys(session, domain)}
    assert states == {"s202612": "published", "s202612b": "published", "s202612c": "active"}
    assert {k.selector for k in dkim.published_keys(session, domain)} == set(states)
    rotated = events(session, "dkim.rotate")
    assert [e.after["selector"] for e in rotated if e.after] == ["s202612b", "s202612c"]
    assert all(e.domain == "example.test" for e in rotated)
    assert "BEGIN" not in str([(e.before, e.after) for e in rotated])


def test_a_new_month_gives_a_new_plain_selector(session: Session) -> None:
    with frozen_at(datetime(2026, 12, 31, tzinfo=UTC)):
        domain = make_domain(session)
    with frozen_at(datetime(2027, 1, 1, tzinfo=UTC)):
        key = dkim.rotate(session, domain, actor=TEST_ACTOR)
    assert key.selector == "s202701"


def test_retire_unpublishes_the_key_wipes_it_and_is_audited(session: Session) -> None:
    domain = make_domain(session)
    old = dkim.signing_key(session, domain)
    assert old is not None
    dkim.rotate(session, domain, actor=TEST_ACTOR)
    retired = dkim.retire(session, domain, f"  {old.selector.upper()} ", actor=TEST_ACTOR)
    session.commit()
    assert retired.id == old.id and dkim.key_state(retired) == "retired"
    assert retired.private_key_pem == ""
    assert old.selector not in {k.selector for k in dkim.published_keys(session, domain)}
    (event,) = events(session, "dkim.retire")
    assert event.before and event.before["state"] == "published"
    assert event.after and event.after["state"] == "retired"


def test_the_active_key_cannot_be_retired(session: Session) -> None:
    domain = make_domain(session)
    active = dkim.signing_key(session, domain)
    assert active is not None
    with pytest.raises(InvalidInput, match="rotate to a new key"):
        dkim.retire(session, domain, active.selector, actor=TEST_ACTOR)
    assert dkim.key_state(active) == "active"


def test_retire_refuses_unknown_and_already_retired_selectors(session: Session) -> None:
    domain = make_domain(session)
    other = make_domain(session, "other.test")
    old = dkim.signing_key(session, domain)
    assert old is not None
    new = dkim.rotate(session, domain, actor=TEST_ACTOR)
    for selector in ("nope", "", "\x00", "s" * 10_000):
        with pytest.raises(NotFound) as refused:
            dkim.retire(session, domain, selector, actor=TEST_ACTOR)
        assert len(refused.value.message) < 200
    with pytest.raises(NotFound):  # another domain's key is not this domain's
        dkim.retire(session, other, new.selector, actor=TEST_ACTOR)
    dkim.retire(session, domain, old.selector, actor=TEST_ACTOR)
    with pytest.raises(InvalidInput, match="already retired"):
        dkim.retire(session, domain, old.selector, actor=TEST_ACTOR)


def test_a_retired_selector_is_never_given_again(session: Session) -> None:
    with frozen_at(datetime(2026, 12, 6, tzinfo=UTC)):
        domain = make_domain(session)
        dkim.rotate(session, domain, actor=TEST_ACTOR)
        dkim.retire(session, domain, "s202612", actor=TEST_ACTOR)
        key = dkim.rotate(session, domain, actor=TEST_ACTOR)
    assert key.selector == "s202612c"


def test_selectors_run_past_z_with_numbers(session: Session) -> None:
    with frozen_at(datetime(2026, 12, 6, tzinfo=UTC)):
        domain = make_domain(session)
        for _ in range(27):
            key = dkim.rotate(session, domain, actor=TEST_ACTOR)
    assert key.selector == "s202612-3"
    assert len({k.selector for k in dkim.list_keys(session, domain)}) == 28


def test_ensure_key_makes_one_only_when_missing(session: Session) -> None:
    domain = make_domain(session)
    for key in dkim.list_keys(session, domain):
        session.delete(key)
    session.flush()
    made = dkim.ensure_key(session, domain)
    assert dkim.ensure_key(session, domain) == made
    assert len(dkim.list_keys(session, domain)) == 1


def test_serve_gives_a_key_to_every_domain_made_before_dkim(app: Any, session: Session) -> None:
    """Domains that existed before DKIM have no key: serve's start-up task makes one each
    (audited), once; domains with a key keep theirs."""
    old = make_domain(session, "old.test")
    keeps = make_domain(session, "keeps.test")
    kept_selector = dkim.signing_key(session, keeps).selector  # type: ignore[union-attr]
    for key in dkim.list_keys(session, old):
        session.delete(key)
    session.commit()
    assert dkim.give_keys_to_domains_without(app) == 1
    assert dkim.give_keys_to_domains_without(app) == 0
    session.expire_all()
    assert dkim.signing_key(session, old) is not None
    assert dkim.signing_key(session, keeps).selector == kept_selector  # type: ignore[union-attr]
    [event] = events(session, "dkim.create")
    assert (event.target, event.actor) == ("old.test", "serve")


def test_unknown_algorithm_is_refused(session: Session) -> None:
    domain = make_domain(session)
    with pytest.raises(InvalidInput, match="unknown DKIM key algorithm"):
        dkim.create_key(session, domain, algorithm="dsa")


def test_deleting_the_domain_deletes_its_keys(session: Session) -> None:
    domain = make_domain(session)
    provisioning.delete_domain(session, domain, actor=TEST_ACTOR)
    session.commit()
    assert session.scalars(select(DkimKey)).all() == []


# --- signing -------------------------------------------------------------------------------


@pytest.mark.real_dkim_keys
def test_a_signed_message_verifies_against_the_record_we_tell_them_to_publish(
    session: Session,
) -> None:
    make_domain(session, "example.test")
    signed = dkim.sign(session, MESSAGE, "Example.TEST")
    assert signed.endswith(MESSAGE) and signed.startswith(b"DKIM-Signature: ")
    assert dkimpy.verify(signed, dnsfunc=dns_of(session, "example.test"))
    tags = signature_tags(signed)
    assert tags[b"c"] == b"relaxed/relaxed" and tags[b"d"] == b"example.test"
    assert tags[b"a"] == b"rsa-sha256" and tags[b"s"].startswith(b"s")
    signed_fields = [h.strip() for h in tags[b"h"].split(b":")]
    assert signed_fields == [
        b"from",
        b"to",
        b"subject",
        b"date",
        b"message-id",
        b"mime-version",
        b"content-type",
        b"from",
    ]


def test_relaxed_canonicalization_survives_rewrapping_and_whitespace(session: Session) -> None:
    make_domain(session, "example.test")
    signed = dkim.sign(session, MESSAGE, "example.test")
    mangled = signed.replace(b"Subject: quarterly", b"subject:   quarterly").replace(
        b"Numbers  went   up.", b"Numbers went up."
    )
    assert dkimpy.verify(mangled, dnsfunc=dns_of(session, "example.test"))


def test_changing_a_signed_header_or_adding_a_from_breaks_the_signature(
    session: Session,
) -> None:
    make_domain(session, "example.test")
    signed = dkim.sign(session, MESSAGE, "example.test")
    dnsfunc = dns_of(session, "example.test")
    assert not dkimpy.verify(signed.replace(b"quarterly", b"QUARTERLY"), dnsfunc=dnsfunc)
    # Oversigned From: a second From added below the signature does not verify.
    forged = signed.replace(b"X-Mailer", b"From: ceo@example.test\r\nX-Mailer")
    assert not dkimpy.verify(forged, dnsfunc=dnsfunc)
    # X-Mailer is not signed: a relay may change it.
    assert dkimpy.verify(signed.replace(b"not signed", b"changed"), dnsfunc=dnsfunc)


def test_a_rotated_out_key_still_verifies_mail_it_signed(session: Session) -> None:
    domain = make_domain(session, "example.test")
    signed_before = dkim.sign(session, MESSAGE, "example.test")
    dkim.rotate(session, domain, actor=TEST_ACTOR)
    dnsfunc = dns_of(session, "example.test")
    assert dkimpy.verify(signed_before, dnsfunc=dnsfunc)
    signed_after = dkim.sign(session, MESSAGE, "example.test")
    assert signature_tags(signed_after)[b"s"] != signature_tags(signed_before)[b"s"]
    assert dkimpy.verify(signed_after, dnsfunc=dnsfunc)


def test_bare_lf_messages_are_signed_with_lf(session: Session) -> None:
    make_domain(session, "example.test")
    message = MESSAGE.replace(b"\r\n", b"\n")
    signed = dkim.sign(session, message, "example.test")
    assert b"\r" not in signed and signed.endswith(message)
    assert dkimpy.verify(signed, dnsfunc=dns_of(session, "example.test"))


def test_eight_bit_and_nul_bytes_are_signed_or_left_alone_never_raised(
    session: Session,
) -> None:
    make_domain(session, "example.test")
    utf8 = MESSAGE.replace(b"quarterly", "Quartalszahlen für März".encode())
    assert dkimpy.verify(
        dkim.sign(session, utf8, "example.test"), dnsfunc=dns_of(session, "example.test")
    )
    for odd in (
        b"\x00\xff garbage",
        b"",
        b"\r\n\r\n",
        b"From: \x00\r\n\r\nx",
        b"no headers at all",
    ):
        result = dkim.sign(session, odd, "example.test")
        assert result.endswith(odd)


@pytest.mark.parametrize("name", ["unknown.test", "", "\x00", "a" * 1000, "éxample.test"])
def test_unknown_domains_leave_the_message_unchanged(session: Session, name: str) -> None:
    make_domain(session, "example.test")
    assert dkim.sign(session, MESSAGE, name) == MESSAGE


def test_a_message_without_from_is_not_signed(session: Session) -> None:
    make_domain(session, "example.test")
    message = MESSAGE.replace(b"From: Alice <alice@example.test>\r\n", b"")
    assert dkim.sign(session, message, "example.test") == message


def test_a_domain_without_key_or_with_only_retired_keys_sends_unsigned(session: Session) -> None:
    domain = make_domain(session, "example.test")
    old = dkim.signing_key(session, domain)
    assert old is not None
    old.active = False
    session.flush()
    assert dkim.sign(session, MESSAGE, "example.test") == MESSAGE


def test_a_broken_key_logs_and_sends_unsigned(
    session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    domain = make_domain(session, "example.test")
    key = dkim.signing_key(session, domain)
    assert key is not None
    key.private_key_pem = "-----BEGIN RSA PRIVATE KEY-----\nbroken\n-----END RSA PRIVATE KEY-----"
    session.flush()
    assert dkim.sign(session, MESSAGE, "example.test") == MESSAGE
    assert "DKIM signing for example.test failed" in caplog.text
    assert "broken" not in caplog.text


def test_a_lost_race_for_a_selector_is_a_clear_error(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rotations at once pick the same selector; the loser gets a message, not a 500."""
    domain = make_domain(session)
    taken = dkim.signing_key(session, domain)
    assert taken is not None
    monkeypatch.setattr(dkim, "_free_selector", lambda _session, _domain: taken.selector)
    with pytest.raises(AlreadyExists, match=r"another DKIM key was just made for example\.test"):
        dkim.rotate(session, domain, actor=TEST_ACTOR)
    session.expire_all()
    assert [dkim.key_state(k) for k in dkim.list_keys(session, domain)] == ["active"]
