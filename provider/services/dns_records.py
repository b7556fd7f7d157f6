"""A hosted domain's DNS: the records its owner must publish, and a check of what is published."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from flask import current_app
from sqlalchemy.orm import Session

from provider.errors import InvalidInput
from provider.models import Domain
from provider.services import dkim
from provider.services.trials import public_hostname
from provider.web.autoconfig import client_settings

TTL = 3600
MX_PREFERENCE = 10
# Seconds one question may take; after one times out the rest are not asked (reported as
# unknown), so a dead resolver costs one timeout, not one per record.
DEFAULT_TIMEOUT_SECONDS = 4.0
TXT_CHUNK = 255  # bytes per character-string in a TXT record (RFC 1035 §3.3.14)

OK = "ok"
MISSING = "missing"
WRONG = "wrong"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Record:
    """One record to publish. `value` is what a DNS panel's value box takes (TXT unquoted,
    host names without the final dot); `zone_line` is the same in zone-file syntax."""

    name: str
    type: str
    value: str
    purpose: str

    @property
    def zone_line(self) -> str:
        return f"{self.name}. {TTL} IN {self.type} {_zone_rdata(self.type, self.value)}"


@dataclass(frozen=True)
class CheckResult:
    """What DNS says about one expected record: ok, missing, wrong or unknown (no answer)."""

    record: Record
    status: str
    published: list[str] = field(default_factory=list)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.record),
            "status": self.status,
            "published": self.published,
            "detail": self.detail,
        }


# --- what to publish -------------------------------------------------------------------------


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def mail_host() -> str:
    """The name the domain's MX, SPF and (unless PUBLIC_*_HOST says otherwise) SRV records
    point at: HOSTNAME, else this machine's FQDN."""
    return public_hostname().strip().rstrip(".").lower()


def web_host() -> str:
    """Where autoconfig.<domain> must lead: PUBLIC_WEB_URL's host, else the mail host."""
    url = str(current_app.config.get("PUBLIC_WEB_URL") or "").strip()
    host = urlsplit(url).hostname if url else None
    return (host or mail_host()).rstrip(".").lower()


def _named(host: str) -> str:
    """A record can only point at a name: where autoconfig would give a client an address
    (BIND_HOST 127.0.0.1 in development), DNS names the mail host instead."""
    host = host.strip().rstrip(".").lower()
    return mail_host() if not host or _is_address(host) else host


def _port_setting(name: str) -> int:
    try:
        return max(int(current_app.config.get(name) or 0), 0)
    except (TypeError, ValueError):
        return 0


def _submission_services() -> list[tuple[str, int]]:
    """(service, port) for SMTP submission: PUBLIC_SMTP_PORT when set (465 implicit TLS),
    else both listeners (RFC 8314 submissions first). Unlike autoconfig, which names only a
    server that runs here now, the records name what the installation offers."""
    public = _port_setting("PUBLIC_SMTP_PORT")
    if public:
        return [("_submissions" if public == 465 else "_submission", public)]
    services = [("_submissions", _port_setting("SUBMISSIONS_PORT"))]
    services.append(("_submission", _port_setting("SUBMISSION_PORT")))
    return [(service, port) for service, port in services if port]


def spf_value() -> str:
    """Our SPF policy (RFC 7208): the mail host may send (`a:` it, and `mx`, which is it
    too once the MX record is in), plus the smarthost when mail leaves through one. `~all`
    (softfail), not `-all`: a customer often still sends from elsewhere at first."""
    terms = ["v=spf1", "mx", f"a:{mail_host()}"]
    relay = _relay_host()
    if relay and relay != mail_host():
        terms.append(f"a:{relay}")
    return " ".join([*terms, "~all"])


def _relay_host() -> str:
    relay = str(current_app.config.get("OUTBOUND_RELAY") or "").strip()
    if not relay:
        return ""
    host = urlsplit(f"//{relay}").hostname or ""
    return host.rstrip(".").lower()


def dmarc_value(domain: Domain) -> str:
    """A monitoring DMARC policy (RFC 7489): p=none delivers as before and sends aggregate
    reports to the domain's postmaster (an address every hosted domain has)."""
    return f"v=DMARC1; p=none; rua=mailto:postmaster@{domain.name}"


def expected_records(session: Session, domain: Domain) -> list[Record]:
    """The records to publish for a hosted domain, in the order a DNS panel takes them.

    Ports and TLS of IMAP/POP3 come from autoconfig's own computation, so the SRV records
    (RFC 6186, 8314) say what autoconfig says; needs an app context."""
    host = mail_host()
    name = domain.name
    records = [
        Record(name, "MX", f"{MX_PREFERENCE} {host}", "incoming mail"),
        Record(name, "TXT", spf_value(), "SPF: who may send as the domain"),
    ]
    for key in reversed(dkim.published_keys(session, domain)):
        state = "signing" if key.active else "rotated out; keep until retired"
        records.append(
            Record(
                f"{key.selector}._domainkey.{name}",
                "TXT",
                dkim.dns_value(key),
                f"DKIM key {key.selector} ({state})",
            )
        )
    records.append(Record(f"_dmarc.{name}", "TXT", dmarc_value(domain), "DMARC policy"))
    web = web_host()
    records.append(Record(f"autoconfig.{name}", "CNAME", web, "Thunderbird autoconfig"))
    records.append(Record(f"autodiscover.{name}", "CNAME", web, "Outlook autodiscover"))
    for service, port in _submission_services():
        target = _named(str(current_app.config.get("PUBLIC_SMTP_HOST") or ""))
        records.append(
            Record(f"{service}._tcp.{name}", "SRV", f"0 1 {port} {target}", "sending (SMTP)")
        )
    for setting in client_settings(("imap", "pop3")):
        service = f"_{setting.protocol}{'s' if setting.tls == 'SSL' else ''}"
        records.append(
            Record(
                f"{service}._tcp.{name}",
                "SRV",
                f"0 1 {setting.port} {_named(setting.host)}",
                f"{setting.protocol.upper()} (reading mail)",
            )
        )
    return records


def _quoted_txt(text: str) -> str:
    raw = text.encode()
    chunks = [raw[i : i + TXT_CHUNK] for i in range(0, len(raw), TXT_CHUNK)] or [b""]
    return " ".join(
        '"' + c.decode().replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks
    )


def _zone_rdata(record_type: str, value: str) -> str:
    if record_type == "TXT":
        return _quoted_txt(value)
    if record_type == "MX":
        preference, host = value.split(" ", 1)
        return f"{preference} {host}."
    if record_type == "CNAME":
        return f"{value}."
    if record_type == "SRV":
        return f"{value}."
    return value


def zone_text(records: list[Record]) -> str:
    """The records as zone-file lines (BIND syntax), ready to paste."""
    return "\n".join(record.zone_line for record in records)


# --- asking DNS ------------------------------------------------------------------------------


def parse_resolver(value: str) -> tuple[str, int]:
    """Read "host[:port]" ("[v6]:port" for IPv6); the host may be a name (looked up here)."""
    text = value.strip()
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d{1,5}))?|([^:\s\[\]]+)(?::(\d{1,5}))?", text)
    bare_v6 = ":" in text and "[" not in text and _is_address(text)
    if not match and not bare_v6:
        raise InvalidInput(f"resolver {value!r} is not host[:port]", "resolver")
    if bare_v6:
        host, port_text = text, None
    else:
        assert match is not None
        host = match.group(1) or match.group(3)
        port_text = match.group(2) or match.group(4)
    port = int(port_text) if port_text else 53
    if not 1 <= port <= 65535:
        raise InvalidInput(f"resolver port must be 1-65535, not {port_text}", "resolver")
    if not _is_address(host):
        try:
            host = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]
        except (OSError, UnicodeError):
            raise InvalidInput(f"resolver {host!r} cannot be found", "resolver") from None
    return host, port


def make_resolver(resolver: str | None, timeout: float) -> dns.resolver.Resolver:
    """A resolver asking `resolver` ("host[:port]"), else DNS_RESOLVER, else the system's."""
    chosen = resolver if resolver is not None else str(current_app.config.get("DNS_RESOLVER") or "")
    if chosen.strip():
        host, port = parse_resolver(chosen)
        answerer = dns.resolver.Resolver(configure=False)
        answerer.nameservers = [host]
        answerer.port = port
    else:
        answerer = dns.resolver.Resolver()
    answerer.timeout = timeout
    answerer.lifetime = timeout
    answerer.cache = None
    return answerer


class _Unanswered(Exception):
    """The resolver did not give an answer (timeout, SERVFAIL, refused)."""


class _Asker:
    """Asks one resolver, remembering a failure so one dead resolver costs one timeout."""

    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver
        self.failure: str | None = None

    def ask(self, name: str, record_type: str) -> list[Any] | None:
        """The answer's records; [] when the name exists without records of the type; None
        for NXDOMAIN; _Unanswered when the resolver does not tell."""
        if self.failure:
            raise _Unanswered(self.failure)
        try:
            # Absolute names: a system resolver's search list must not turn a missing
            # "_dmarc.example.com" into an answer for "_dmarc.example.com.corp.lan".
            answer = self.resolver.resolve(
                dns.name.from_text(name), record_type, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel) as exc:
            raise _Unanswered(f"{name} is not a valid DNS name: {exc}") from None
        except dns.exception.Timeout:
            self.failure = f"no answer from the resolver within {self.resolver.lifetime:g} s"
            raise _Unanswered(self.failure) from None
        except dns.resolver.NoNameservers:
            raise _Unanswered("the resolver failed to answer (SERVFAIL or refused)") from None
        except dns.exception.DNSException as exc:
            raise _Unanswered(f"DNS error: {exc}") from None
        if answer.rrset is None:
            return []
        # A CNAME chain answers for the name: keep only records of the type asked.
        wanted = dns.rdatatype.from_text(record_type)
        return [rdata for rdata in answer.rrset if rdata.rdtype == wanted]


def _host(name: Any) -> str:
    return str(name).rstrip(".").lower()


def _txt(rdata: Any) -> str:
    return b"".join(rdata.strings).decode("utf-8", "replace")


def _tags(text: str) -> dict[str, str]:
    """Tag=value pairs of a DKIM or DMARC record (RFC 6376 §3.2), whitespace ignored."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        tag, equals, value = part.partition("=")
        if equals:
            tags[tag.strip().lower()] = (
                re.sub(r"\s+", "", value) if tag.strip() == "p" else value.strip()
            )
    return tags


def _missing(record: Record, answer: list[Any] | None, what: str) -> CheckResult:
    if answer is None:
        return CheckResult(record, MISSING, [], f"{record.name} does not exist (NXDOMAIN)")
    return CheckResult(record, MISSING, [], f"no {what} record at {record.name}")


def _check_mx(asker: _Asker, record: Record) -> CheckResult:
    answer = asker.ask(record.name, "MX")
    if not answer:
        return _missing(record, answer, "MX")
    published = sorted(f"{r.preference} {_host(r.exchange)}" for r in answer)
    want = record.value.split(" ", 1)[1]
    if any(_host(r.exchange) == want for r in answer):
        return CheckResult(record, OK, published)
    return CheckResult(record, WRONG, published, f"no MX record names {want}")


def _spf_authorizes(policy: str) -> bool:
    """Whether an SPF record lets our mail out: `mx` or `a:<mail host>` for the mail host,
    and for a smarthost `a:<relay>` or an `include:` (relay providers publish their own)."""
    terms = {term.lower().lstrip("+") for term in policy.split()[1:]}
    ours = "mx" in terms or f"a:{mail_host()}" in terms
    relay = _relay_host()
    if not relay or relay == mail_host():
        return ours
    return ours and (f"a:{relay}" in terms or any(t.startswith("include:") for t in terms))


def _check_spf(asker: _Asker, record: Record) -> CheckResult:
    answer = asker.ask(record.name, "TXT")
    if answer is None:
        return _missing(record, answer, "TXT")
    policies = [_txt(r) for r in answer if _txt(r).lower().split(" ", 1)[0] == "v=spf1"]
    if not policies:
        return CheckResult(record, MISSING, [], f"no SPF (v=spf1) record at {record.name}")
    if len(policies) > 1:
        return CheckResult(
            record, WRONG, policies, "more than one SPF record: receivers treat that as an error"
        )
    policy = policies[0]
    if {"+all", "all"} & set(policy.lower().split()):
        return CheckResult(record, WRONG, policies, "'+all' lets anyone send as the domain")
    if not _spf_authorizes(policy):
        return CheckResult(record, WRONG, policies, f"does not let {mail_host()} send")
    return CheckResult(record, OK, policies)


def _check_dkim(asker: _Asker, record: Record) -> CheckResult:
    answer = asker.ask(record.name, "TXT")
    if not answer:
        return _missing(record, answer, "TXT")
    published = [_txt(r) for r in answer]
    want = _tags(record.value)
    for text in published:
        tags = _tags(text)
        if tags.get("p") == want["p"] and tags.get("k", "rsa") == want["k"]:
            return CheckResult(record, OK, published)
    return CheckResult(record, WRONG, published, "the published key is not this key")


def _check_dmarc(asker: _Asker, record: Record) -> CheckResult:
    answer = asker.ask(record.name, "TXT")
    if answer is None:
        return _missing(record, answer, "TXT")
    policies = [_txt(r) for r in answer if _txt(r).replace(" ", "").upper().startswith("V=DMARC1")]
    if not policies:
        return CheckResult(record, MISSING, [], f"no DMARC (v=DMARC1) record at {record.name}")
    if len(policies) > 1:
        return CheckResult(record, WRONG, policies, "more than one DMARC record")
    if _tags(policies[0]).get("p", "").lower() not in ("none", "quarantine", "reject"):
        return CheckResult(record, WRONG, policies, "no valid p= policy")
    return CheckResult(record, OK, policies)


def _check_cname(asker: _Asker, record: Record) -> CheckResult:
    answer = asker.ask(record.name, "CNAME")
    if answer is None:
        return _missing(record, answer, "CNAME")
    if answer:
        published = [_host(r.target) for r in answer]
        if record.value in published:
            return CheckResult(record, OK, published)
        return CheckResult(record, WRONG, published, f"points at {published[0]}")
    # No CNAME: A records with the web host's addresses work as well.
    addresses = asker.ask(record.name, "A")
    if not addresses:
        return _missing(record, addresses, "CNAME or A")
    published = sorted(f"A {r.address}" for r in addresses)
    wanted = asker.ask(record.value, "A") or []
    if {r.address for r in addresses} & {r.address for r in wanted}:
        return CheckResult(record, OK, published)
    return CheckResult(record, WRONG, published, f"not the address of {record.value}")


def _check_srv(asker: _Asker, record: Record) -> CheckResult:
    answer = asker.ask(record.name, "SRV")
    if not answer:
        return _missing(record, answer, "SRV")
    published = sorted(f"{r.priority} {r.weight} {r.port} {_host(r.target)}" for r in answer)
    _priority, _weight, port, target = record.value.split(" ")
    if any(r.port == int(port) and _host(r.target) == target for r in answer):
        return CheckResult(record, OK, published)
    return CheckResult(record, WRONG, published, f"expected port {port} on {target}")


def _checker(record: Record) -> Callable[[_Asker, Record], CheckResult]:
    if record.type == "MX":
        return _check_mx
    if record.type == "CNAME":
        return _check_cname
    if record.type == "SRV":
        return _check_srv
    if record.name.startswith("_dmarc."):
        return _check_dmarc
    if "._domainkey." in record.name:
        return _check_dkim
    return _check_spf


def check(
    session: Session,
    domain: Domain,
    resolver: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> list[CheckResult]:
    """Ask DNS for each expected record: ok, missing (NXDOMAIN or no such record), wrong
    (with what is published) or unknown (the resolver did not answer)."""
    asker = _Asker(make_resolver(resolver, timeout))
    results = []
    for record in expected_records(session, domain):
        try:
            results.append(_checker(record)(asker, record))
        except _Unanswered as exc:
            results.append(CheckResult(record, UNKNOWN, [], str(exc)))
    return results


def all_ok(results: list[CheckResult]) -> bool:
    return all(result.status == OK for result in results)
