"""The domain page's DNS records, "Check DNS" and DKIM keys (rotate, retire): flows, scope, CSRF."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Domain
from provider.services import dkim, dns_records
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, TEST_ACTOR, make_admin, make_domain
from tests.dnszone import DnsZone
from tests.services.test_dns_records import HOST, publish_all
from tests.web.conftest import text_of


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(HOSTNAME=HOST, PUBLIC_WEB_URL="")
    return app_config


@pytest.fixture
def domain(session: Session) -> Domain:
    return make_domain(session, "example.test")


@pytest.fixture
def zone(tmp_path: Path) -> Iterator[DnsZone]:
    zone = DnsZone(tmp_path)
    yield zone
    zone.stop()


def section(page: str, anchor: str) -> str:
    match = re.search(rf'<section class="card grow" id="{anchor}".*?</section>', page, re.S)
    assert match, f"no #{anchor} section"
    return match.group(0)


def result_row(page: str, name: str, record_type: str) -> str:
    for row in re.findall(r"<tr>.*?</tr>", section(page, "dns"), re.S):
        if f"<code>{name}</code>" in row and f"<td>{record_type}</td>" in row:
            return row
    raise AssertionError(f"no row for {name} {record_type}")


def flashes(client: FlaskClient, response: Any) -> str:
    assert response.status_code == 302, text_of(response)
    return text_of(client.get(response.headers["Location"]))


def test_the_domain_page_shows_records_to_publish_and_keys(
    logged_in: FlaskClient, session: Session, domain: Domain
) -> None:
    key = dkim.signing_key(session, domain)
    assert key is not None
    page = text_of(logged_in.get(f"/admin/domains/{domain.id}"))
    dns = section(page, "dns")
    assert f'value="10 {HOST}"' in dns
    assert f'value="v=DKIM1; k=rsa; p={key.public_key}"' in dns
    assert f"<code>{key.selector}._domainkey.example.test</code>" in dns
    assert "_submissions._tcp.example.test" in dns and "_imaps._tcp.example.test" in dns
    assert f"example.test. 3600 IN MX 10 {HOST}." in html.unescape(dns)
    assert "Check DNS" in dns and "In DNS now" not in dns
    keys = section(page, "dkim")
    assert f"<code>{key.selector}</code>" in keys and 'badge-ok">active' in keys
    assert "Rotate key" in keys and "Retire" not in keys  # the active key has no Retire button
    assert "PRIVATE KEY" not in page and key.private_key_pem[40:80] not in page


def test_check_dns_shows_each_records_state(
    logged_in: FlaskClient, app: Flask, session: Session, domain: Domain, zone: DnsZone
) -> None:
    key = dkim.signing_key(session, domain)
    assert key is not None
    selector_name = f"{key.selector}._domainkey.example.test"
    records = dns_records.expected_records(session, domain)
    publish_all(
        zone, [r for r in records if r.value != dns_records.spf_value()], skip=(selector_name,)
    )
    zone.txt("example.test", "v=spf1 a:elsewhere.example.net -all")
    zone.start()
    app.config["DNS_RESOLVER"] = zone.resolver
    response = logged_in.post(f"/admin/domains/{domain.id}/dns/check")
    assert response.status_code == 200
    page = text_of(response)
    assert "2 of 10 not ok" in page
    dkim_row = result_row(page, selector_name, "TXT")
    assert 'badge-bad">missing' in dkim_row and "does not exist (NXDOMAIN)" in dkim_row
    spf_row = result_row(page, "example.test", "TXT")
    assert 'badge-bad">wrong' in spf_row
    assert "published: <code>v=spf1 a:elsewhere.example.net -all</code>" in spf_row
    assert 'badge-ok">ok' in result_row(page, "example.test", "MX")


def test_check_dns_with_everything_published_says_all_ok(
    logged_in: FlaskClient, app: Flask, session: Session, domain: Domain, zone: DnsZone
) -> None:
    publish_all(zone, dns_records.expected_records(session, domain))
    zone.start()
    app.config["DNS_RESOLVER"] = zone.resolver
    page = text_of(logged_in.post(f"/admin/domains/{domain.id}/dns/check"))
    assert "all 10 records ok" in page


def test_a_bad_resolver_setting_is_flashed_not_a_500(
    logged_in: FlaskClient, app: Flask, domain: Domain
) -> None:
    app.config["DNS_RESOLVER"] = "127.0.0.1:99999"
    response = logged_in.post(f"/admin/domains/{domain.id}/dns/check")
    assert "DNS check failed: resolver port must be 1-65535" in flashes(logged_in, response)


def test_rotate_then_retire_with_flash_messages_and_audit(
    logged_in: FlaskClient, session: Session, domain: Domain
) -> None:
    old = dkim.signing_key(session, domain)
    assert old is not None
    response = logged_in.post(f"/admin/domains/{domain.id}/dkim/rotate")
    assert response.headers["Location"].endswith(f"/admin/domains/{domain.id}#dkim")
    page = flashes(logged_in, response)
    session.expire_all()
    new = dkim.signing_key(session, domain)
    assert new is not None and new.selector != old.selector
    assert f"New DKIM key {new.selector} signs example.test" in page
    keys = section(page, "dkim")
    assert keys.count("Retire") == 1 and f'name="selector" value="{old.selector}"' in keys
    assert f"{old.selector}._domainkey.example.test" in section(page, "dns")

    response = logged_in.post(
        f"/admin/domains/{domain.id}/dkim/retire", data={"selector": old.selector}
    )
    page = flashes(logged_in, response)
    assert f"DKIM key {old.selector} retired" in page
    assert f"{old.selector}._domainkey.example.test" not in section(page, "dns")
    assert 'badge ">retired' in section(page, "dkim")
    events = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.action.in_(["dkim.rotate", "dkim.retire"]))
        .order_by(AuditEvent.id)
    ).all()
    assert [(e.action, e.actor) for e in events] == [
        ("dkim.rotate", f"admin:{ADMIN_EMAIL}"),
        ("dkim.retire", f"admin:{ADMIN_EMAIL}"),
    ]


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (None, "rotate to a new key before retiring it"),  # the active key
        ("nope", "has no DKIM key &#39;nope&#39;"),
        ("", "has no DKIM key"),
        ("x" * 5000, "has no DKIM key"),
    ],
)
def test_retire_refusals_are_flashed(
    logged_in: FlaskClient, session: Session, domain: Domain, selector: str | None, message: str
) -> None:
    active = dkim.signing_key(session, domain)
    assert active is not None
    response = logged_in.post(
        f"/admin/domains/{domain.id}/dkim/retire",
        data={"selector": active.selector if selector is None else selector},
    )
    assert message in flashes(logged_in, response)
    session.expire_all()
    assert dkim.signing_key(session, domain) == active


def test_a_lost_rotation_race_is_flashed(
    logged_in: FlaskClient, session: Session, domain: Domain, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = dkim.signing_key(session, domain)
    assert taken is not None
    selector = taken.selector
    monkeypatch.setattr(dkim, "_free_selector", lambda _session, _domain: selector)
    response = logged_in.post(f"/admin/domains/{domain.id}/dkim/rotate")
    assert "another DKIM key was just made for example.test" in flashes(logged_in, response)
    assert len(dkim.list_keys(session, domain)) == 1


def test_a_nul_byte_in_the_selector_is_a_bad_request(
    logged_in: FlaskClient, session: Session, domain: Domain
) -> None:
    dkim.rotate(session, domain, actor=TEST_ACTOR)
    session.commit()
    old = dkim.list_keys(session, domain)[1]
    response = logged_in.post(
        f"/admin/domains/{domain.id}/dkim/retire", data={"selector": old.selector + "\x00"}
    )
    assert response.status_code == 400
    session.expire_all()
    assert dkim.key_state(old) == "published"


def test_a_domain_admin_manages_only_their_domains_keys(
    as_domain_admin: FlaskClient, session: Session, tenants: tuple[Domain, Domain]
) -> None:
    mine, other = tenants
    assert as_domain_admin.get(f"/admin/domains/{other.id}").status_code == 404
    for action in ("dns/check", "dkim/rotate", "dkim/retire"):
        assert as_domain_admin.post(f"/admin/domains/{other.id}/{action}").status_code == 404
    assert len(dkim.list_keys(session, other)) == 1
    own_page = text_of(as_domain_admin.get(f"/admin/domains/{mine.id}"))
    assert "_dmarc.mine.test" in section(own_page, "dns") and "Rotate key" in own_page
    response = as_domain_admin.post(f"/admin/domains/{mine.id}/dkim/rotate")
    assert response.status_code == 302
    assert len(dkim.list_keys(session, mine)) == 2


def test_get_changes_nothing(logged_in: FlaskClient, session: Session, domain: Domain) -> None:
    for action in ("dns/check", "dkim/rotate", "dkim/retire"):
        assert logged_in.get(f"/admin/domains/{domain.id}/{action}").status_code == 405
    assert len(dkim.list_keys(session, domain)) == 1


# --- CSRF ------------------------------------------------------------------------------------


def _token(page: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
        r'name="csrf_token" value="([^"]+)"', page
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


@pytest.mark.parametrize("action", ["dns/check", "dkim/rotate", "dkim/retire"])
def test_posts_without_the_csrf_token_are_refused(
    app_config: dict[str, Any], action: str, request: pytest.FixtureRequest
) -> None:
    app_config["WTF_CSRF_ENABLED"] = True
    app: Flask = request.getfixturevalue("app")
    session: Session = request.getfixturevalue("session")
    make_admin(session)
    domain = make_domain(session, "example.test")
    client = app.test_client()
    login_page = text_of(client.get("/admin/login"))
    client.post(
        "/admin/login",
        data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": _token(login_page)},
    )
    page = text_of(client.get(f"/admin/domains/{domain.id}"))
    assert client.post(f"/admin/domains/{domain.id}/{action}").status_code == 400
    assert len(dkim.list_keys(session, domain)) == 1
    if action == "dkim/rotate":  # with the page's token it works
        response = client.post(
            f"/admin/domains/{domain.id}/{action}", data={"csrf_token": _token(page)}
        )
        assert response.status_code == 302
        assert len(dkim.list_keys(session, domain)) == 2
