"""`provider domain dns` and `provider domain dkim`: records, the DNS check's exit code, keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from provider.models import AuditEvent, Domain
from provider.services import dkim, dns_records
from tests.conftest import make_domain
from tests.dnszone import DnsZone
from tests.services.test_dns_records import HOST, publish_all


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


def invoke(runner: FlaskCliRunner, *args: str) -> Any:
    return runner.invoke(args=list(args))


def assert_one_line_error(result: Any, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]


def test_dns_prints_zone_file_lines(
    runner: FlaskCliRunner, session: Session, domain: Domain
) -> None:
    key = dkim.signing_key(session, domain)
    assert key is not None
    result = invoke(runner, "domain", "dns", "EXAMPLE.test")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"example.test. 3600 IN MX 10 {HOST}."
    assert f'example.test. 3600 IN TXT "v=spf1 mx a:{HOST} ~all"' in lines
    assert any(
        line.startswith(f"{key.selector}._domainkey.example.test. 3600 IN TXT ") for line in lines
    )
    assert "PRIVATE" not in result.output


def test_dns_json_gives_each_record(runner: FlaskCliRunner, domain: Domain) -> None:
    result = invoke(runner, "domain", "dns", "example.test", "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert {r["type"] for r in records} == {"MX", "TXT", "CNAME", "SRV"}
    assert records[0] == {
        "name": "example.test",
        "type": "MX",
        "value": f"10 {HOST}",
        "purpose": "incoming mail",
        "zone_line": f"example.test. 3600 IN MX 10 {HOST}.",
    }


def test_check_exits_0_when_all_is_published(
    runner: FlaskCliRunner, session: Session, domain: Domain, zone: DnsZone
) -> None:
    publish_all(zone, dns_records.expected_records(session, domain))
    zone.start()
    result = invoke(runner, "domain", "dns", "example.test", "--check", "--resolver", zone.resolver)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "ok       MX    example.test"
    assert result.output.splitlines()[-1] == "10 of 10 records ok"


def test_check_names_what_is_missing_or_wrong_and_exits_1(
    app: Any, runner: FlaskCliRunner, session: Session, domain: Domain, zone: DnsZone
) -> None:
    key = dkim.signing_key(session, domain)
    assert key is not None
    records = dns_records.expected_records(session, domain)
    selector_name = f"{key.selector}._domainkey.example.test"
    publish_all(
        zone, [r for r in records if r.value != dns_records.spf_value()], skip=(selector_name,)
    )
    zone.txt("example.test", "v=spf1 a:elsewhere.example.net -all")
    zone.start()
    app.config["DNS_RESOLVER"] = zone.resolver  # the setting is used without --resolver
    result = invoke(runner, "domain", "dns", "example.test", "--check")
    assert result.exit_code == 1, result.output
    out = result.output
    assert f"missing  TXT   {selector_name}: {selector_name} does not exist (NXDOMAIN)" in out
    assert f"wrong    TXT   example.test: does not let {HOST} send" in out
    assert "published: v=spf1 a:elsewhere.example.net -all" in out
    assert out.splitlines()[-1] == "8 of 10 records ok"

    as_json = invoke(runner, "domain", "dns", "example.test", "--check", "--json")
    assert as_json.exit_code == 1
    by_name = {(r["name"], r["type"]): r for r in json.loads(as_json.output)}
    assert by_name[(selector_name, "TXT")]["status"] == "missing"
    assert by_name[("example.test", "TXT")]["published"] == ["v=spf1 a:elsewhere.example.net -all"]


def test_check_with_a_dead_resolver_exits_1_saying_unknown(
    runner: FlaskCliRunner, domain: Domain, zone: DnsZone
) -> None:
    # The zone's port with nothing listening (never started): refused or silent, not an answer.
    result = invoke(runner, "domain", "dns", "example.test", "--check", "--resolver", zone.resolver)
    assert result.exit_code == 1
    assert all(line.startswith(("unknown", " ", "0 of")) for line in result.output.splitlines())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("domain", "dns", "nowhere.test"), "domain nowhere.test does not exist"),
        (("domain", "dns", "not a domain\x00"), "does not exist"),
        (("domain", "dns", "nowhere.test", "--check"), "domain nowhere.test does not exist"),
        (("domain", "dkim", "nowhere.test"), "domain nowhere.test does not exist"),
        (
            ("domain", "dns", "example.test", "--resolver", "1.2.3.4"),
            "--resolver only applies with --check",
        ),
        (
            ("domain", "dns", "example.test", "--check", "--resolver", "x:99999"),
            "resolver port must be 1-65535",
        ),
        (("domain", "dns", "example.test", "--check", "--resolver", "a b"), "is not host[:port]"),
        (
            ("domain", "dkim", "example.test", "--rotate", "--retire", "s1"),
            "choose one of --rotate and --retire",
        ),
        (("domain", "dkim", "example.test", "--retire", "nope"), "has no DKIM key 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    runner: FlaskCliRunner, domain: Domain, args: tuple[str, ...], fragment: str
) -> None:
    assert_one_line_error(invoke(runner, *args), fragment)


def test_dkim_lists_rotates_and_retires_with_audit(
    runner: FlaskCliRunner, session: Session, domain: Domain
) -> None:
    first = dkim.signing_key(session, domain)
    assert first is not None
    listed = invoke(runner, "domain", "dkim", "example.test")
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith(f"{first.selector:<12} rsa      active     created ")

    rotated = invoke(runner, "domain", "dkim", "example.test", "--rotate", "--json")
    assert rotated.exit_code == 0, rotated.output
    keys = json.loads(rotated.output)
    assert [k["state"] for k in keys] == ["active", "published"]
    assert keys[1]["selector"] == first.selector
    assert "private" not in rotated.output.lower()

    refused = invoke(runner, "domain", "dkim", "example.test", "--retire", keys[0]["selector"])
    assert_one_line_error(refused, "rotate to a new key before retiring it")

    retired = invoke(runner, "domain", "dkim", "example.test", "--retire", first.selector)
    assert retired.exit_code == 0, retired.output
    assert "retired" in retired.output.splitlines()[1]
    actions = session.scalars(select(AuditEvent.action).where(AuditEvent.actor == "cli")).all()
    assert sorted(actions) == ["dkim.retire", "dkim.rotate"]


def test_dkim_for_a_domain_without_keys_says_how_to_make_one(
    runner: FlaskCliRunner, session: Session, domain: Domain
) -> None:
    for key in dkim.list_keys(session, domain):
        session.delete(key)
    session.commit()
    listed = invoke(runner, "domain", "dkim", "example.test")
    assert listed.exit_code == 0
    assert (
        listed.output.strip()
        == "example.test has no DKIM key (provider domain dkim example.test --rotate)"
    )
    assert invoke(runner, "domain", "dkim", "example.test", "--rotate").exit_code == 0
    assert dkim.signing_key(session, domain) is not None
