"""The test DNS server answers what the tests publish, and nothing else."""

from __future__ import annotations

from pathlib import Path

import dns.resolver
import pytest

from tests.dnszone import DnsZone


def resolver_for(zone: DnsZone) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [zone.host]
    resolver.port = zone.port
    resolver.lifetime = 5
    return resolver


def test_the_zone_serves_mx_a_txt_cname_and_srv_records(tmp_path: Path):
    dkim = "v=DKIM1; k=rsa; p=" + "A" * 400  # longer than one TXT character-string
    with DnsZone(tmp_path) as zone:
        zone.mx("example.net", "mx.example.net", 10)
        zone.a("mx.example.net", "127.0.0.5")
        zone.txt("example.net", "v=spf1 mx -all")
        zone.txt("s1._domainkey.example.net", dkim)
        zone.a("mail.example.net", "127.0.0.6")
        zone.cname("autoconfig.example.net", "mail.example.net")
        zone.srv("_submissions._tcp.example.net", "mail.example.net", 465, 0, 1)
        zone.reload()
        resolver = resolver_for(zone)

        [mx] = resolver.resolve("example.net", "MX")
        assert (mx.preference, mx.exchange.to_text()) == (10, "mx.example.net.")
        assert [r.address for r in resolver.resolve("mx.example.net", "A")] == ["127.0.0.5"]
        assert [b"".join(r.strings).decode() for r in resolver.resolve("example.net", "TXT")] == [
            "v=spf1 mx -all"
        ]
        [key] = resolver.resolve("s1._domainkey.example.net", "TXT")
        assert b"".join(key.strings).decode() == dkim
        cname = resolver.resolve("autoconfig.example.net", "CNAME")
        assert [r.target.to_text() for r in cname] == ["mail.example.net."]
        [srv] = resolver.resolve("_submissions._tcp.example.net", "SRV")
        assert (srv.target.to_text(), srv.port) == ("mail.example.net.", 465)


def test_names_not_published_do_not_exist_and_nothing_is_forwarded(tmp_path: Path):
    with DnsZone(tmp_path) as zone:
        zone.a("mx.example.net", "127.0.0.5")
        zone.reload()
        resolver = resolver_for(zone)
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("missing.example.net", "A")
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("debian.org", "A")
        with pytest.raises(dns.resolver.NoAnswer):
            resolver.resolve("mx.example.net", "MX")
