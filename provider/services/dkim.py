"""DKIM: every domain's signing keys, and signing what leaves for remote domains (RFC 6376)."""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from provider.errors import AlreadyExists, InvalidInput, NotFound
from provider.models import Domain
from provider.models.sending import DkimKey
from provider.services import audit
from provider.services.audit import Actor
from provider.services.clock import now

log = logging.getLogger(__name__)

RSA_BITS = 2048
ALGORITHMS = ("rsa",)
# RFC 6376 §5.4.1's list of the fields that matter, narrowed to those a reader sees or that
# change how the body reads. From is signed once more than it occurs (oversigning), so nobody
# can add a second From that some readers would show instead (RFC 6376 §8.15).
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"mime-version",
    b"content-type",
    b"in-reply-to",
    b"references",
)
OVERSIGNED_HEADERS = (b"from",)
# Suffixes tried after the month's plain selector is taken: s202612, s202612b, s202612c, …
SELECTOR_SUFFIXES = "bcdefghijklmnopqrstuvwxyz"
SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# A name that can be a hosted domain's (checked before it reaches a query: PostgreSQL refuses
# NUL bytes in text, and a refused query must not turn "sign" into "fail").
DOMAIN_NAME = re.compile(r"^[a-z0-9.-]{1,253}$")


def generate_rsa_key() -> tuple[str, str]:
    """A new RSA key pair: (PKCS#1 PEM private key, base64 DER public key for p=).

    PKCS#1 ("BEGIN RSA PRIVATE KEY") is the form dkimpy reads. The test suite swaps this
    function for one returning a pre-made key (tests/conftest.py): generating 2048-bit keys
    for the thousands of domains the tests make would cost minutes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, base64.b64encode(public_der).decode("ascii")


def key_state(key: DkimKey) -> str:
    """'active' (signs and is published), 'published' (rotated out, still in DNS so mail in
    transit verifies) or 'retired' (may be removed from DNS)."""
    if key.retired_at is not None:
        return "retired"
    return "active" if key.active else "published"


def key_record(key: DkimKey) -> dict[str, Any]:
    """What the CLI, the panel and the audit trail show of a key: never the private key."""
    return {
        "selector": key.selector,
        "algorithm": key.algorithm,
        "state": key_state(key),
        "created_at": key.created_at.isoformat() if key.created_at else None,
        "retired_at": key.retired_at.isoformat() if key.retired_at else None,
    }


def dns_value(key: DkimKey) -> str:
    """The TXT record to publish at <selector>._domainkey.<domain> (RFC 6376 §3.6.1)."""
    return f"v=DKIM1; k={key.algorithm}; p={key.public_key}"


def list_keys(session: Session, domain: Domain) -> list[DkimKey]:
    """The domain's keys, newest first."""
    return list(
        session.scalars(
            select(DkimKey)
            .where(DkimKey.domain_id == domain.id)
            .order_by(DkimKey.created_at.desc(), DkimKey.id.desc())
        )
    )


def published_keys(session: Session, domain: Domain) -> list[DkimKey]:
    """The keys whose record must be in DNS: every key not retired, newest first."""
    return [key for key in list_keys(session, domain) if key.retired_at is None]


def signing_key(session: Session, domain: Domain) -> DkimKey | None:
    """The key that signs the domain's mail (the newest active one), or None."""
    return session.scalar(
        select(DkimKey)
        .where(
            DkimKey.domain_id == domain.id, DkimKey.active.is_(True), DkimKey.retired_at.is_(None)
        )
        .order_by(DkimKey.created_at.desc(), DkimKey.id.desc())
        .limit(1)
    )


def _free_selector(session: Session, domain: Domain) -> str:
    """ "s" + the year and month, with a letter added when that selector is taken here
    (retired ones included: a resolver may still cache the old record)."""
    base = "s" + now().strftime("%Y%m")
    taken = set(
        session.scalars(
            select(DkimKey.selector).where(
                DkimKey.domain_id == domain.id, DkimKey.selector.startswith(base)
            )
        )
    )
    for candidate in [base, *(base + suffix for suffix in SELECTOR_SUFFIXES)]:
        if candidate not in taken:
            return candidate
    number = 2
    while f"{base}-{number}" in taken:
        number += 1
    return f"{base}-{number}"


def create_key(session: Session, domain: Domain, algorithm: str = "rsa") -> DkimKey:
    """Make a new active key for the domain; the previous active key stops signing but stays
    published. Not audited here: the caller's action (domain.create, dkim.rotate) is."""
    if algorithm not in ALGORITHMS:
        raise InvalidInput(
            f"unknown DKIM key algorithm {algorithm!r}: choose {', '.join(ALGORITHMS)}",
            "algorithm",
        )
    private_pem, public_key = generate_rsa_key()
    domain_name = domain.name
    for old in session.scalars(
        select(DkimKey).where(DkimKey.domain_id == domain.id, DkimKey.active.is_(True))
    ):
        old.active = False
    key = DkimKey(
        domain_id=domain.id,
        selector=_free_selector(session, domain),
        algorithm=algorithm,
        private_key_pem=private_pem,
        public_key=public_key,
        active=True,
        created_at=now(),
    )
    session.add(key)
    try:
        session.flush()
    except IntegrityError:
        # Two rotations of one domain at once picked the same selector: the other one won.
        session.rollback()
        raise AlreadyExists(
            f"another DKIM key was just made for {domain_name}; look again before rotating",
            "selector",
        ) from None
    return key


def ensure_key(session: Session, domain: Domain) -> DkimKey:
    """The domain's signing key, made when it has none (domains created before DKIM)."""
    return signing_key(session, domain) or create_key(session, domain)


def domains_without_key(session: Session) -> list[Domain]:
    """Domains with no signing key (created before DKIM existed here), by name."""
    signing = select(DkimKey.domain_id).where(
        DkimKey.active.is_(True), DkimKey.retired_at.is_(None)
    )
    return list(
        session.scalars(select(Domain).where(Domain.id.not_in(signing)).order_by(Domain.name))
    )


def give_keys_to_domains_without(app: Flask) -> int:
    """Start-up task of `provider serve`: a key for every domain that has none, so mail of
    domains made before DKIM is signed too (their DNS page then shows the record to publish).
    Returns how many keys were made; one domain that fails does not stop the others."""
    from provider.extensions import db

    made = 0
    with app.app_context():
        session = db.session
        for domain in domains_without_key(session):
            name = domain.name
            try:
                key = create_key(session, domain)
                audit.record(
                    session,
                    Actor("serve"),
                    "dkim.create",
                    name,
                    domain=name,
                    after={"selector": key.selector, "reason": "domain had no DKIM key"},
                )
                session.commit()
                made += 1
            except Exception:
                session.rollback()
                log.exception("could not make a DKIM key for %s", name)
        db.session.remove()
    return made


def rotate(session: Session, domain: Domain, *, actor: Actor) -> DkimKey:
    """A new signing key; the old one stays published (not signing) until it is retired."""
    before = [key_record(key) for key in published_keys(session, domain)]
    key = create_key(session, domain)
    audit.record(
        session,
        actor,
        "dkim.rotate",
        domain.name,
        domain=domain.name,
        before={"keys": before},
        after={
            "selector": key.selector,
            "keys": [key_record(k) for k in published_keys(session, domain)],
        },
    )
    return key


def retire(session: Session, domain: Domain, selector: str, *, actor: Actor) -> DkimKey:
    """Stop publishing a rotated-out key: its record may leave DNS. The active key cannot be
    retired (rotate first). The private key is wiped: a retired key never signs again."""
    wanted = selector.strip().lower()
    key = None
    if SELECTOR.match(wanted):
        key = session.scalar(
            select(DkimKey).where(DkimKey.domain_id == domain.id, DkimKey.selector == wanted)
        )
    if key is None:
        shown = selector if len(selector) <= 63 else selector[:60] + "..."
        raise NotFound(f"domain {domain.name} has no DKIM key {shown!r}", "selector")
    if key.retired_at is not None:
        raise InvalidInput(f"DKIM key {key.selector} is already retired", "selector")
    if key.active:
        raise InvalidInput(
            f"DKIM key {key.selector} signs {domain.name}'s mail; rotate to a new key before "
            "retiring it",
            "selector",
        )
    before = key_record(key)
    key.retired_at = now()
    key.private_key_pem = ""
    session.flush()
    audit.record(
        session,
        actor,
        "dkim.retire",
        domain.name,
        domain=domain.name,
        before=before,
        after=key_record(key),
    )
    return key


def sign(session: Session, message: bytes, domain_name: str) -> bytes:
    """`message` with a DKIM-Signature for `domain_name` (relaxed/relaxed, the active key)
    prepended; unchanged when the domain has no key here. Never raises for a message it
    cannot sign: an unsigned message is better than one not sent."""
    try:
        name = domain_name.strip().lower().rstrip(".")
        if not DOMAIN_NAME.match(name):
            return message
        domain = session.scalar(select(Domain).where(Domain.name == name))
        key = signing_key(session, domain) if domain is not None else None
        if domain is None or key is None:
            return message
        return _signed(message, domain.name, key)
    except Exception:
        log.exception("DKIM signing for %s failed; the message leaves unsigned", domain_name)
        return message


def _signed(message: bytes, domain_name: str, key: DkimKey) -> bytes:
    head = message.split(b"\n\n", 1)[0]
    linesep = b"\r\n" if b"\r\n" in head or b"\r\n" in message[:1000] else b"\n"
    signer = dkimpy.DKIM(message, linesep=linesep)
    present = [name.lower() for name, _value in signer.headers if name.lower() in SIGNED_HEADERS]
    if b"from" not in present:
        log.warning("not DKIM-signing a message without From for %s", domain_name)
        return message
    include = present + [name for name in OVERSIGNED_HEADERS if name in present]
    signature = signer.sign(
        key.selector.encode("ascii"),
        domain_name.encode("ascii"),
        key.private_key_pem.encode("ascii"),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=include,
    )
    return bytes(signature) + message
