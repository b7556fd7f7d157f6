"""The DNS records a domain must publish, and the check against a real DNS server (dnsmasq)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim as dkimpy
import dns.resolver
import pytest
from flask import Flask
from sqlalchemy.orm import Session

from provider.errors import InvalidInput
from provider.models import Domain
from provider.services import dkim, dns_records
from provider.services.dns_records import MISSING, OK, UNKNOWN, WRONG, CheckResult, Record
from tests.conftest import TEST_ACTOR, make_domain
from tests.dnszone import DnsZone

HOST = "mail.provider.test"
WEB = "panel.provider.test"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        HOSTNAME=HOST,
        PUBLIC_WEB_URL=f"https://{WEB}/",
        BIND_HOST="127.0.0.1",
        IMAP_PORT=1143,
        IMAPS_PORT=1993,
        POP3_PORT=1110,
        POP3S_PORT=1995,
        SUBMISSION_PORT=1587,
        SUBMISSIONS_PORT=1465,
    )
    return app_config


@pytest.fixture
def domain(session: Session) -> Domain:
    return make_domain(session, "example.test")


def by_name(records: list[Record]) -> dict[tuple[str, str], str]:
    return {(r.name, r.type): r.value for r in records}


def publish_all(zone: DnsZone, records: list[Record], skip: tuple[str, ...] = ()) -> None:
    """Put the expected records into the zone, as a customer following the page would."""
    for record in records:
        if record.name in skip:
            continue
        if record.type == "MX":
            preference, host = record.value.split(" ")
            zone.mx(record.name, host, int(preference))
        elif record.type == "TXT":
            zone.txt(record.name, record.value)
        elif record.type == "CNAME":
            zone.cname(record.name, record.value)
        elif record.type == "SRV":
            priority, weight, port, target = record.value.split(" ")
            zone.srv(record.name, target, int(port), int(priority), int(weight))
    zone.a(HOST, "127.0.0.9")
    zone.a(WEB, "127.0.0.10")


def statuses(results: list[CheckResult]) -> dict[str, str]:
    return {f"{r.record.name} {r.record.type}": r.status for r in results}


# --- what to publish -------------------------------------------------------------------------


def test_expected_records_name_the_mail_host_keys_policies_and_services(
    session: Session, domain: Domain
) -> None:
    key = dkim.signing_key(session, domain)
    assert key is not None
    records = by_name(dns_records.expected_records(session, domain))
    assert records == {
        ("example.test", "MX"): f"10 {HOST}",
        ("example.test", "TXT"): f"v=spf1 mx a:{HOST} ~all",
        (f"{key.selector}._domainkey.example.test", "TXT"): f"v=DKIM1; k=rsa; p={key.public_key}",
        ("_dmarc.example.test", "TXT"): "v=DMARC1; p=none; rua=mailto:postmaster@example.test",
        ("autoconfig.example.test", "CNAME"): WEB,
        ("autodiscover.example.test", "CNAME"): WEB,
        ("_submissions._tcp.example.test", "SRV"): f"0 1 1465 {HOST}",
        ("_submission._tcp.example.test", "SRV"): f"0 1 1587 {HOST}",
        # autoconfig's own choice: implicit TLS ports when they are set (RFC 8314)
        ("_imaps._tcp.example.test", "SRV"): f"0 1 1993 {HOST}",
        ("_pop3s._tcp.example.test", "SRV"): f"0 1 1995 {HOST}",
    }


def test_public_settings_and_a_relay_change_the_records(
    app: Flask, session: Session, domain: Domain
) -> None:
    app.config.update(
        PUBLIC_IMAP_HOST="imap.example.net",
        PUBLIC_IMAP_PORT=993,
        PUBLIC_SMTP_HOST="smtp.example.net",
        PUBLIC_SMTP_PORT=465,
        IMAPS_PORT=0,
        POP3S_PORT=0,
        PUBLIC_WEB_URL="",
        OUTBOUND_RELAY="smarthost.example.net:2525",
    )
    records = by_name(dns_records.expected_records(session, domain))
    assert records[("_imaps._tcp.example.test", "SRV")] == "0 1 993 imap.example.net"
    assert records[("_submissions._tcp.example.test", "SRV")] == "0 1 465 smtp.example.net"
    assert ("_submission._tcp.example.test", "SRV") not in records
    assert records[("_pop3._tcp.example.test", "SRV")] == f"0 1 1110 {HOST}"  # STARTTLS
    assert records[("autoconfig.example.test", "CNAME")] == HOST
    spf = records[("example.test", "TXT")]
    assert spf == f"v=spf1 mx a:{HOST} a:smarthost.example.net ~all"


def test_rotation_publishes_both_selectors_and_retire_drops_the_old(
    session: Session, domain: Domain
) -> None:
    old = dkim.signing_key(session, domain)
    assert old is not None
    new = dkim.rotate(session, domain, actor=TEST_ACTOR)
    names = [r.name for r in dns_records.expected_records(session, domain)]
    assert f"{old.selector}._domainkey.example.test" in names
    assert f"{new.selector}._domainkey.example.test" in names
    dkim.retire(session, domain, old.selector, actor=TEST_ACTOR)
    names = [r.name for r in dns_records.expected_records(session, domain)]
    assert f"{old.selector}._domainkey.example.test" not in names


def test_zone_text_quotes_and_splits_long_txt_records(session: Session, domain: Domain) -> None:
    text = dns_records.zone_text(dns_records.expected_records(session, domain))
    lines = {line.split(" ")[0]: line for line in text.splitlines() if " TXT " in line}
    dkim_line = next(line for name, line in lines.items() if "_domainkey" in name)
    strings = dkim_line.split(" IN TXT ", 1)[1].split('" "')
    assert len(strings) == 2 and len(strings[0].strip('"')) == 255
    assert f"example.test. 3600 IN MX 10 {HOST}." in text
    assert f"_imaps._tcp.example.test. 3600 IN SRV 0 1 1993 {HOST}." in text


# --- resolvers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("[::1]:5353", ("::1", 5353)),
        ("::1", ("::1", 53)),
        ("localhost:53", ("127.0.0.1", 53)),
    ],
)
def test_resolver_settings_are_read(given: str, expected: tuple[str, int]) -> None:
    assert dns_records.parse_resolver(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "127.0.0.1:99999999999",
        "a b",
        "host:port",
        "\x00",
        "[::1",
    ],
)
def test_bad_resolver_settings_are_refused(given: str) -> None:
    with pytest.raises(InvalidInput, match="resolver"):
        dns_records.parse_resolver(given)


def test_an_unknown_resolver_name_is_refused() -> None:
    with pytest.raises(InvalidInput, match="cannot be found"):
        dns_records.parse_resolver("no-such-resolver.invalid")


# --- checking against dnsmasq ---------------------------------------------------------------


@pytest.fixture
def zone(tmp_path: Path) -> Iterator[DnsZone]:
    zone = DnsZone(tmp_path)
    yield zone
    zone.stop()


def test_everything_published_checks_ok(session: Session, domain: Domain, zone: DnsZone) -> None:
    publish_all(zone, dns_records.expected_records(session, domain))
    zone.start()
    results = dns_records.check(session, domain, zone.resolver)
    assert set(statuses(results).values()) == {OK}, [r.to_dict() for r in results if r.status != OK]
    assert dns_records.all_ok(results)
    mx = next(r for r in results if r.record.type == "MX")
    assert mx.published == [f"10 {HOST}"]


def test_the_check_names_a_missing_dkim_record_and_a_wrong_spf(
    session: Session, domain: Domain, zone: DnsZone
) -> None:
    key = dkim.signing_key(session, domain)
    assert key is not None
    selector_name = f"{key.selector}._domainkey.example.test"
    records = dns_records.expected_records(session, domain)
    publish_all(
        zone,
        [r for r in records if r.type != "TXT" or r.name != "example.test"],
        skip=(selector_name,),
    )
    zone.txt("example.test", "v=spf1 a:elsewhere.example.net -all")
    zone.start()
    results = {
        f"{r.record.name} {r.record.type}": r
        for r in dns_records.check(session, domain, zone.resolver)
    }
    dkim_result = results[f"{selector_name} TXT"]
    assert dkim_result.status == MISSING
    assert "NXDOMAIN" in dkim_result.detail
    spf = results["example.test TXT"]
    assert spf.status == WRONG
    assert spf.published == ["v=spf1 a:elsewhere.example.net -all"]
    assert HOST in spf.detail
    others = {name: r.status for name, r in results.items() if r not in (dkim_result, spf)}
    assert set(others.values()) == {OK}
    assert not dns_records.all_ok(list(results.values()))


def test_wrong_values_are_reported_with_what_is_published(
    session: Session, domain: Domain, zone: DnsZone
) -> None:
    key = dkim.signing_key(session, domain)
    assert key is not None
    zone.mx("example.test", "mx.elsewhere.test", 5)
    zone.txt("example.test", "v=spf1 mx ~all")
    zone.txt("example.test", "v=spf1 a ~all")
    zone.txt(f"{key.selector}._domainkey.example.test", "v=DKIM1; k=rsa; p=AAAAnotourkey")
    zone.txt("_dmarc.example.test", "v=DMARC1; p=nonsense")
    zone.cname("autoconfig.example.test", "other.example.net")
    zone.a("other.example.net", "127.0.0.77")
    zone.a("autodiscover.example.test", "127.0.0.78")
    zone.a(WEB, "127.0.0.10")
    zone.srv("_imaps._tcp.example.test", HOST, 993)
    zone.start()
    results = {
        f"{r.record.name} {r.record.type}": r
        for r in dns_records.check(session, domain, zone.resolver)
    }
    assert results["example.test MX"].status == WRONG
    assert results["example.test MX"].published == ["5 mx.elsewhere.test"]
    assert results["example.test TXT"].status == WRONG
    assert "more than one SPF" in results["example.test TXT"].detail
    assert results[f"{key.selector}._domainkey.example.test TXT"].status == WRONG
    assert results["_dmarc.example.test TXT"].status == WRONG
    assert results["autoconfig.example.test CNAME"].status == WRONG
    assert results["autoconfig.example.test CNAME"].published == ["other.example.net"]
    assert results["autodiscover.example.test CNAME"].status == WRONG
    assert results["autodiscover.example.test CNAME"].published == ["A 127.0.0.78"]
    assert results["_imaps._tcp.example.test SRV"].status == WRONG
    assert results["_imaps._tcp.example.test SRV"].published == [f"0 0 993 {HOST}"]
    assert results["_pop3s._tcp.example.test SRV"].status == MISSING


def test_an_a_record_with_the_web_hosts_address_is_as_good_as_the_cname(
    session: Session, domain: Domain, zone: DnsZone
) -> None:
    zone.a("autoconfig.example.test", "127.0.0.10")
    zone.a(WEB, "127.0.0.10")
    zone.txt("example.test", "v=spf1 +all")
    zone.start()
    results = {
        f"{r.record.name} {r.record.type}": r
        for r in dns_records.check(session, domain, zone.resolver)
    }
    assert results["autoconfig.example.test CNAME"].status == OK
    assert results["example.test TXT"].status == WRONG
    assert "anyone" in results["example.test TXT"].detail


def test_no_record_of_the_type_is_told_apart_from_nxdomain(
    session: Session, domain: Domain, zone: DnsZone
) -> None:
    zone.a("example.test", "127.0.0.1")  # the name exists, with no MX and no TXT
    zone.start()
    results = {
        f"{r.record.name} {r.record.type}": r
        for r in dns_records.check(session, domain, zone.resolver)
    }
    assert results["example.test MX"].status == MISSING
    assert results["example.test MX"].detail == "no MX record at example.test"
    assert results["_dmarc.example.test TXT"].status == MISSING
    assert "NXDOMAIN" in results["_dmarc.example.test TXT"].detail


@pytest.mark.real_dkim_keys
def test_a_signed_message_verifies_through_real_dns(
    session: Session, domain: Domain, zone: DnsZone
) -> None:
    """dkimpy fetches the key with dnspython from dnsmasq serving our expected record."""
    publish_all(zone, dns_records.expected_records(session, domain))
    zone.start()
    message = b"From: a@example.test\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"
    signed = dkim.sign(session, message, "example.test")
    resolver = dns_records.make_resolver(zone.resolver, 5)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)

    assert dkimpy.verify(signed, dnsfunc=dnsfunc)
    tampered = signed.replace(b"hello", b"hullo")
    assert not dkimpy.verify(tampered, dnsfunc=dnsfunc)


def test_a_silent_resolver_costs_one_timeout_and_every_record_says_unknown(
    session: Session, domain: Domain
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        started = time.monotonic()
        results = dns_records.check(session, domain, f"127.0.0.1:{port}", timeout=0.5)
        elapsed = time.monotonic() - started
    assert {r.status for r in results} == {UNKNOWN}
    assert "within 0.5 s" in results[0].detail
    assert elapsed < 3, elapsed


def test_a_resolver_sending_garbage_is_reported_not_raised(
    session: Session, domain: Domain
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as liar:
        liar.bind(("127.0.0.1", 0))
        port = liar.getsockname()[1]
        stop = threading.Event()

        def answer_garbage() -> None:
            liar.settimeout(0.05)
            while not stop.is_set():
                try:
                    _data, peer = liar.recvfrom(4096)
                except TimeoutError:
                    continue
                liar.sendto(b"\x00\xff" * 20, peer)

        thread = threading.Thread(target=answer_garbage)
        thread.start()
        try:
            results = dns_records.check(session, domain, f"127.0.0.1:{port}", timeout=0.5)
        finally:
            stop.set()
            thread.join()
    assert {r.status for r in results} == {UNKNOWN}


def test_a_domain_too_long_for_its_srv_names_is_reported_not_raised(
    session: Session, zone: DnsZone
) -> None:
    """A 253-character domain is valid, but "_submissions._tcp." before it is not a DNS name."""
    long_name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 56, "test"])
    assert len(long_name) == 253
    domain = make_domain(session, long_name)
    zone.start()
    results = {r.record.name: r for r in dns_records.check(session, domain, zone.resolver)}
    too_long = results[f"_submissions._tcp.{long_name}"]
    assert too_long.status == UNKNOWN and "not a valid DNS name" in too_long.detail
    assert results[long_name].status == MISSING
