"""The outbound SMTP client: find where a domain's mail goes (smarthost or MX, RFC 5321 §5.1,
RFC 7505), and hand a message to it in one transaction, with per-recipient results."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from provider.services.dns_records import make_resolver

log = logging.getLogger(__name__)

RELAY_TLS_MODES = ("opportunistic", "starttls", "required", "tls", "none")
DEFAULT_RELAY_PORT = 25
# RFC 5321 §4.5.3.2: the timeouts a sender should allow, capped by OUTBOUND_TIMEOUT_SECONDS.
MAX_HOSTS_TRIED = 5  # MX hosts (and their addresses) tried per attempt, like Postfix's 5


class DeliveryFailed(Exception):
    """Every recipient of an attempt failed the same way; `reply` is what to record."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply

    @property
    def permanent(self) -> bool:
        return self.reply[:1] == "5"


@dataclass(frozen=True)
class Target:
    """One address to try: where to connect, the name it goes by (for replies and TLS)."""

    host: str  # the name (MX host or relay) shown in replies
    address: str  # the IP address to connect to
    port: int


@dataclass
class Destination:
    """Where one domain's mail goes now: the relay, or its MX hosts' addresses in order."""

    targets: list[Target]
    relay: bool = False
    username: str = ""
    password: str = ""
    tls: str = "opportunistic"
    # Verify the far side's certificate (relay in starttls/tls mode only): against the system
    # CAs, or the PEM bundle in `ca_file` when one is named.
    verify: bool = False
    ca_file: str = ""


@dataclass
class Outcome:
    """What the far side said about each recipient of one transaction: address → reply."""

    replies: dict[str, str] = field(default_factory=dict)
    host: str = ""


def parse_host_port(value: str, default_port: int) -> tuple[str, int]:
    """Read "host[:port]" or "[v6]:port"; ValueError when it is neither."""
    text = value.strip().removeprefix("smtp://")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host or (port_text and not port_text.isdigit()):
        raise ValueError(f"{value!r} is not host[:port]")
    port = int(port_text) if port_text else default_port
    if not 1 <= port <= 65535:
        raise ValueError(f"port of {value!r} must be 1-65535")
    return host, port


def relay_destination(config: Any) -> Destination | None:
    """The smarthost of OUTBOUND_RELAY, or None when mail goes to the MX hosts."""
    relay = str(config.get("OUTBOUND_RELAY") or "").strip()
    if not relay:
        return None
    host, port = parse_host_port(relay, DEFAULT_RELAY_PORT)
    tls = str(config.get("OUTBOUND_RELAY_TLS") or "opportunistic").strip().lower()
    tls = "starttls" if tls == "required" else tls
    return Destination(
        targets=[Target(host, host, port)],
        relay=True,
        username=str(config.get("OUTBOUND_RELAY_USERNAME") or ""),
        password=str(config.get("OUTBOUND_RELAY_PASSWORD") or ""),
        tls=tls,
        # Opportunistic STARTTLS stays unverified, to the relay as to MX hosts (Postfix "may"):
        # it encrypts against a passive listener; a required TLS mode is the one that names
        # whom we talk to, so that is where the certificate is checked.
        verify=tls in ("starttls", "tls") and _true(config.get("OUTBOUND_RELAY_TLS_VERIFY", True)),
        ca_file=str(config.get("OUTBOUND_RELAY_CA_FILE") or "").strip(),
    )


def _true(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in {"0", "false", "no", "off", ""}
    return bool(value)


# --- DNS -------------------------------------------------------------------------------------


def _ask(resolver: dns.resolver.Resolver, name: str, kind: str) -> list[Any] | None:
    """Records of `kind` for `name`; [] when the name has none; None for NXDOMAIN.
    DeliveryFailed("4…") when the resolver gives no answer (try again later)."""
    try:
        answer = resolver.resolve(
            dns.name.from_text(name), kind, raise_on_no_answer=False, search=False
        )
    except dns.resolver.NXDOMAIN:
        return None
    except (dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.EmptyLabel):
        raise DeliveryFailed(f"550 5.1.2 {name!r} is not a valid domain name") from None
    except dns.exception.Timeout:
        raise DeliveryFailed(f"451 4.4.3 DNS lookup of {name} timed out") from None
    except dns.resolver.NoNameservers:
        raise DeliveryFailed(f"451 4.4.3 DNS lookup of {name} failed (SERVFAIL)") from None
    except dns.exception.DNSException as exc:
        raise DeliveryFailed(f"451 4.4.3 DNS lookup of {name} failed: {exc}") from None
    if answer.rrset is None:
        return []
    wanted = dns.rdatatype.from_text(kind)
    return [rdata for rdata in answer.rrset if rdata.rdtype == wanted]


def _addresses(resolver: dns.resolver.Resolver, host: str) -> list[str]:
    found: list[str] = []
    for kind in ("A", "AAAA"):
        for rdata in _ask(resolver, host, kind) or []:
            found.append(str(rdata.address))
    return found


def mx_destination(domain: str, port: int, resolver: dns.resolver.Resolver) -> Destination:
    """The addresses to try for `domain`: its MX hosts by preference, else (no MX record)
    the domain's own A/AAAA (RFC 5321 §5.1). DeliveryFailed: 556 5.1.10 for a null MX
    (RFC 7505), 5.1.2 for a domain that does not exist, 4.4.3 when DNS does not answer."""
    try:
        name = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise DeliveryFailed(f"550 5.1.2 {domain!r} is not a valid domain name") from None
    records = _ask(resolver, name, "MX")
    if records is None:
        raise DeliveryFailed(f"550 5.1.2 domain {domain} does not exist (NXDOMAIN)")
    if len(records) == 1 and str(records[0].exchange) == "." and records[0].preference == 0:
        raise DeliveryFailed(f"556 5.1.10 domain {domain} accepts no mail (null MX)")
    hosts: list[str]
    if records:
        ordered = sorted(records, key=lambda rdata: rdata.preference)
        hosts = [str(rdata.exchange).rstrip(".") for rdata in ordered if str(rdata.exchange) != "."]
    else:
        hosts = [name]
    targets: list[Target] = []
    unanswered: DeliveryFailed | None = None
    for host in hosts[:MAX_HOSTS_TRIED]:
        try:
            targets.extend(Target(host, address, port) for address in _addresses(resolver, host))
        except DeliveryFailed as exc:
            unanswered = unanswered or exc
    if not targets:
        if unanswered is not None:
            raise unanswered
        what = "its MX hosts have" if records else "it has no MX and"
        raise DeliveryFailed(f"550 5.1.2 domain {domain}: {what} no address records")
    return Destination(targets=targets)


def destination_for(domain: str, config: Any) -> Destination:
    """Where mail for `domain` goes now: OUTBOUND_RELAY if set, else the MX hosts."""
    relay = relay_destination(config)
    if relay is not None:
        return relay
    timeout = float(config.get("OUTBOUND_TIMEOUT_SECONDS") or 60)
    resolver = make_resolver(None, min(timeout, 30.0))
    return mx_destination(domain, int(config.get("OUTBOUND_MX_PORT") or 25), resolver)


# --- SMTP ------------------------------------------------------------------------------------


def _reply(code: int, text: bytes | str, host: str) -> str:
    words = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    words = " ".join(words.split())  # multi-line replies on one line
    return f"{code} {words} (from {host})"[:1000]


def _opportunistic_context() -> ssl.SSLContext:
    """STARTTLS to an MX as Postfix's "may": encrypt, verify nothing (RFC 7435)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _verifying_context(destination: Destination) -> ssl.SSLContext:
    """TLS to a relay that must prove who it is: the system CAs, or OUTBOUND_RELAY_CA_FILE;
    the certificate must name the relay as OUTBOUND_RELAY names it."""
    try:
        context = ssl.create_default_context(cafile=destination.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryFailed(
            f"451 4.7.5 cannot load OUTBOUND_RELAY_CA_FILE {destination.ca_file}: {exc}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _tls_context(destination: Destination) -> ssl.SSLContext:
    if destination.verify:
        return _verifying_context(destination)
    return _opportunistic_context()


def _certificate_refused(exc: ssl.SSLCertVerificationError, host: str) -> DeliveryFailed:
    reason = exc.verify_message or str(exc)
    return DeliveryFailed(
        f"451 4.7.5 TLS certificate of {host} not trusted ({reason}); "
        "trust its CA with OUTBOUND_RELAY_CA_FILE, or set OUTBOUND_RELAY_TLS_VERIFY=false"
    )


def _is_loopback(address: str) -> bool:
    return address.startswith("127.") or address == "::1"


class _Connection(smtplib.SMTP):
    """smtplib.SMTP connecting to a given address while naming the host (for TLS SNI)."""

    def __init__(self, target: Target, local_hostname: str, timeout: float) -> None:
        super().__init__(local_hostname=local_hostname, timeout=timeout)
        self._target = target
        self._host = target.host  # STARTTLS server_hostname

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._target.address, port), timeout)


class _TlsConnection(smtplib.SMTP_SSL):
    """Implicit TLS to a relay (OUTBOUND_RELAY_TLS = "tls")."""

    def __init__(
        self, target: Target, local_hostname: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(local_hostname=local_hostname, timeout=timeout, context=context)
        self._host = target.host


def _open(
    destination: Destination, target: Target, local_hostname: str, timeout: float
) -> smtplib.SMTP:
    """A connected, greeted (EHLO) session with TLS and AUTH as `destination` asks."""
    smtp: smtplib.SMTP
    context = _tls_context(destination) if destination.tls != "none" else None
    if destination.tls == "tls":
        assert context is not None
        smtp = _TlsConnection(target, local_hostname, timeout, context)
    else:
        smtp = _Connection(target, local_hostname, timeout)
    try:
        try:
            code, message = smtp.connect(target.address, target.port)
        except ssl.SSLCertVerificationError as exc:
            raise _certificate_refused(exc, target.host) from None
        if code != 220:
            raise DeliveryFailed(_reply(code, message, target.host))
        smtp.ehlo()
        if destination.tls in ("opportunistic", "starttls") and smtp.has_extn("starttls"):
            try:
                code, message = smtp.starttls(context=context)
            except ssl.SSLCertVerificationError as exc:
                raise _certificate_refused(exc, target.host) from None
            if code != 220:
                raise DeliveryFailed(_reply(code, message, target.host))
            smtp.ehlo()
        elif destination.tls == "starttls":
            raise DeliveryFailed(f"451 4.7.5 {target.host} does not offer STARTTLS (required)")
        if destination.username:
            encrypted = destination.tls != "none" and (
                isinstance(smtp, smtplib.SMTP_SSL) or _is_tls(smtp)
            )
            if not encrypted and not _is_loopback(target.address):
                raise DeliveryFailed(
                    f"451 4.7.5 not sending the relay password to {target.host} without TLS"
                )
            try:
                smtp.login(destination.username, destination.password)
            except smtplib.SMTPAuthenticationError as exc:
                raise DeliveryFailed(
                    _reply(451, f"4.7.8 relay refused our login: {exc.smtp_error!r}", target.host)
                ) from None
            except smtplib.SMTPNotSupportedError:
                raise DeliveryFailed(f"451 4.7.8 {target.host} does not offer AUTH") from None
    except BaseException:
        smtp.close()
        raise
    return smtp


def _is_tls(smtp: smtplib.SMTP) -> bool:
    return isinstance(smtp.sock, ssl.SSLSocket)


def _mail_options(
    smtp: smtplib.SMTP, sender: str, content: bytes, recipients: Sequence[str]
) -> list[str]:
    options = [f"SIZE={len(content)}"] if smtp.has_extn("size") else []
    if any(byte > 127 for byte in content) and smtp.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")
    if not (sender.isascii() and all(r.isascii() for r in recipients)):
        if not smtp.has_extn("smtputf8"):
            raise DeliveryFailed(
                "553 5.6.7 the receiving server does not support non-ASCII addresses (SMTPUTF8)"
            )
        options.append("SMTPUTF8")
    return options


def transact(
    smtp: smtplib.SMTP, host: str, sender: str, recipients: Sequence[str], content: bytes
) -> dict[str, str]:
    """One MAIL/RCPT…/DATA transaction; a reply per recipient (2xx delivered, 4xx try again,
    5xx refused). The DATA reply is returned the moment it is read: the caller records it
    before anything else (the duplicate window of RFC 5321 §6.1 stays this short)."""
    options = _mail_options(smtp, sender, content, recipients)
    code, message = smtp.mail(sender, options)
    if code != 250:
        smtp.rset()
        return {recipient: _reply(code, message, host) for recipient in recipients}
    replies: dict[str, str] = {}
    accepted: list[str] = []
    for recipient in recipients:
        code, message = smtp.rcpt(recipient)
        if code in (250, 251):
            accepted.append(recipient)
        else:
            replies[recipient] = _reply(code, message, host)
    if not accepted:
        smtp.rset()
        return replies
    code, message = smtp.data(content)
    for recipient in accepted:
        replies[recipient] = _reply(code, message, host)
    return replies


def deliver(
    destination: Destination,
    sender: str,
    recipients: Sequence[str],
    content: bytes,
    *,
    local_hostname: str,
    timeout: float,
    record: Callable[[Outcome], None],
) -> Outcome:
    """Try the destination's addresses in order until one holds a transaction; connection
    failures and a refused greeting move on to the next (RFC 5321 §5.1). `record` gets the
    replies the moment the transaction ends, before QUIT: what the far side accepted is
    written down first, so a crash can duplicate only inside that short window (RFC 5321
    §6.1). DeliveryFailed when no host held a transaction (the last host's reply)."""
    last = "451 4.4.1 no host to try"
    for target in destination.targets[: MAX_HOSTS_TRIED * 2]:
        try:
            smtp = _open(destination, target, local_hostname, timeout)
        except DeliveryFailed as exc:
            last = exc.reply
            continue
        except (OSError, smtplib.SMTPException) as exc:
            last = f"451 4.4.1 cannot talk to {target.host} [{target.address}]:{target.port}: {exc}"
            continue
        try:
            outcome = Outcome(transact(smtp, target.host, sender, recipients, content), target.host)
        except (OSError, smtplib.SMTPException) as exc:
            smtp.close()
            # The connection broke during the transaction: nothing was promised to us.
            failure = _reply(451, f"4.4.2 lost the connection: {exc}", target.host)
            outcome = Outcome({recipient: failure for recipient in recipients}, target.host)
            record(outcome)
            return outcome
        except BaseException:
            smtp.close()
            raise
        try:
            record(outcome)
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()
        return outcome
    raise DeliveryFailed(last)
