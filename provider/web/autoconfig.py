"""Mail client autoconfiguration: Mozilla autoconfig and Microsoft Autodiscover (POX).

What an address gets (docs/DESIGN-NOTES.md, "Trials, signup, autoconfig"):

* a mailbox: its own protocol policy (IMAP and/or POP3) plus SMTP submission where one exists;
* any other address in a hosted domain (unknown, or an alias, which cannot log in and whose
  mailbox must not be named): the domain's generic configuration, IMAP and POP3;
* an address in a domain not hosted here: 404.

So the answer shows that a domain is hosted (its MX says as much) and, for a mailbox whose policy
is not both protocols, that it exists (the inbound SMTP listener already answers that for any
address at RCPT time); it never names the mailbox behind an alias.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, has_request_context, request
from sqlalchemy import select

from provider.errors import InvalidInput
from provider.extensions import csrf, db
from provider.models import Domain, Mailbox
from provider.services.provisioning import split_address

bp = Blueprint("autoconfig", __name__)

AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_NS = (
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
)
MAX_AUTODISCOVER_BYTES = 16 * 1024
GENERIC_PROTOCOLS = ("imap", "pop3")


@dataclass(frozen=True)
class ServerSetting:
    """One server a mail program connects to: protocol, host, port and how TLS starts."""

    protocol: str  # imap, pop3 or smtp
    host: str
    port: int
    tls: str  # "SSL" (implicit TLS) or "STARTTLS"

    @property
    def label(self) -> str:
        return {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP (sending)"}[self.protocol]

    @property
    def security(self) -> str:
        return "SSL/TLS" if self.tls == "SSL" else "STARTTLS"


# BIND_HOST values that mean "every address": the request's host is then the one to show.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})
IMPLICIT_TLS_SMTP_PORT = 465


def _public_host(setting: str) -> str:
    """PUBLIC_<X>_HOST; unset, where the listeners are: BIND_HOST (127.0.0.1 with `make
    run`), or for a wildcard bind the host this request came to, else HOSTNAME."""
    config = current_app.config
    configured = str(config.get(setting) or "").strip()
    if configured:
        return configured
    bind = str(config.get("BIND_HOST") or "").strip()
    if bind not in WILDCARD_HOSTS:
        return bind
    if has_request_context():
        requested = urlsplit(f"//{request.host}").hostname
        if requested:
            return requested
    return str(config.get("HOSTNAME") or socket.getfqdn())


def _port(name: str) -> int:
    try:
        return max(int(current_app.config.get(name) or 0), 0)
    except (TypeError, ValueError):
        return 0


def _incoming(protocol: str) -> ServerSetting | None:
    """PUBLIC_<P>_PORT (implicit TLS) when set; else the listener itself: the implicit-TLS
    port (IMAPS_PORT/POP3S_PORT), else the STARTTLS one (IMAP_PORT/POP3_PORT); None when
    neither has a fixed port (0 = picked at start, unknown here)."""
    name = protocol.upper()
    host = _public_host(f"PUBLIC_{name}_HOST")
    public = _port(f"PUBLIC_{name}_PORT")
    if public:
        return ServerSetting(protocol, host, public, "SSL")
    if _port(f"{name}S_PORT"):
        return ServerSetting(protocol, host, _port(f"{name}S_PORT"), "SSL")
    if _port(f"{name}_PORT"):
        return ServerSetting(protocol, host, _port(f"{name}_PORT"), "STARTTLS")
    return None


def _outgoing() -> ServerSetting | None:
    """SMTP submission: PUBLIC_SMTP_PORT when set (port 465 implicit TLS, any other
    STARTTLS); else the bundled submission listener when this installation serves it
    (SUBMISSION_SERVED, set by `provider serve`; implicit TLS on SUBMISSIONS_PORT preferred,
    RFC 8314, then STARTTLS on SUBMISSION_PORT); else None — no outgoing server is named
    rather than one that nothing listens on."""
    host = _public_host("PUBLIC_SMTP_HOST")
    public = _port("PUBLIC_SMTP_PORT")
    if public:
        tls = "SSL" if public == IMPLICIT_TLS_SMTP_PORT else "STARTTLS"
        return ServerSetting("smtp", host, public, tls)
    if not current_app.config.get("SUBMISSION_SERVED"):
        return None
    if _port("SUBMISSIONS_PORT"):
        return ServerSetting("smtp", host, _port("SUBMISSIONS_PORT"), "SSL")
    if _port("SUBMISSION_PORT"):
        return ServerSetting("smtp", host, _port("SUBMISSION_PORT"), "STARTTLS")
    return None


def client_settings(protocols: list[str] | tuple[str, ...]) -> list[ServerSetting]:
    """The servers for a mailbox with these protocols (IMAP before POP3), then SMTP
    submission if there is one: the PUBLIC_* settings where set, else what listens."""
    candidates = [_incoming(p) for p in ("imap", "pop3") if p in protocols] + [_outgoing()]
    return [server for server in candidates if server is not None]


def _settings_for(address: str | None, host_domain: str | None) -> tuple[str, list[ServerSetting]]:
    """(domain, servers) for an address (or, without one, the domain the request came to);
    404 when the domain is not hosted here."""
    domain_name: str | None = None
    normalized: str | None = None
    if address:
        local, _, domain_part = address.strip().rpartition("@")
        try:  # plus-addressing delivers to the mailbox without the tag, so it is read the same
            local, domain_name = split_address(f"{local.split('+', 1)[0]}@{domain_part}")
        except InvalidInput:
            abort(404)
        normalized = f"{local}@{domain_name}"
    elif host_domain:
        domain_name = host_domain
    if not domain_name:
        abort(404)
    domain = db.session.scalar(select(Domain).where(Domain.name == domain_name))
    if domain is None:
        abort(404)
    protocols: list[str] | tuple[str, ...] = GENERIC_PROTOCOLS
    if normalized is not None:
        mailbox = db.session.scalar(select(Mailbox).where(Mailbox.address == normalized))
        if mailbox is not None:
            protocols = mailbox.protocols
    return domain.name, client_settings(protocols)


def _domain_of_request_host() -> str | None:
    host = request.host.rsplit(":", 1)[0].strip().lower().rstrip(".")
    for prefix in ("autoconfig.", "autodiscover."):
        host = host.removeprefix(prefix)
    return host or None


def _xml(root: ET.Element) -> Response:
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    response = Response(body, mimetype="application/xml")
    response.headers["Cache-Control"] = "no-store"
    return response


# --- Mozilla autoconfig ----------------------------------------------------------------------


@bp.get("/.well-known/autoconfig/mail/config-v1.1.xml")
@bp.get("/mail/config-v1.1.xml")
def mozilla_autoconfig() -> Response:
    """Thunderbird's (and K-9's, Evolution's) format: clientConfig version 1.1."""
    domain, servers = _settings_for(request.args.get("emailaddress"), _domain_of_request_host())
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    ET.SubElement(provider, "domain").text = domain
    ET.SubElement(provider, "displayName").text = f"{domain} mail"
    ET.SubElement(provider, "displayShortName").text = domain
    for server in servers:
        tag = "outgoingServer" if server.protocol == "smtp" else "incomingServer"
        element = ET.SubElement(provider, tag, type=server.protocol)
        ET.SubElement(element, "hostname").text = server.host
        ET.SubElement(element, "port").text = str(server.port)
        ET.SubElement(element, "socketType").text = server.tls
        ET.SubElement(element, "authentication").text = "password-cleartext"
        ET.SubElement(element, "username").text = "%EMAILADDRESS%"
    return _xml(root)


# --- Microsoft Autodiscover (POX) --------------------------------------------------------------


def _requested_address() -> str | None:
    """The EMailAddress of a POX request; 400 for anything that is not one."""
    if (request.content_length or 0) > MAX_AUTODISCOVER_BYTES:
        abort(413)
    body = request.get_data(cache=False)
    if len(body) > MAX_AUTODISCOVER_BYTES:
        abort(413)
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        abort(400)  # no DTDs, so no entity expansion tricks
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        abort(400)
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "EMailAddress" and element.text:
            return element.text.strip()
    abort(400)


@bp.post("/autodiscover/autodiscover.xml")
@bp.post("/Autodiscover/Autodiscover.xml")
@csrf.exempt
def autodiscover() -> Response:
    """Outlook's POX Autodiscover: one Protocol element per server (IMAP/POP3/SMTP)."""
    address = _requested_address()
    _, servers = _settings_for(address, None)
    local, _, domain = address.rpartition("@")
    login_name = f"{local.split('+', 1)[0]}@{domain}".lower()
    # Plain xmlns attributes rather than qualified names: the response then reads exactly like
    # the documented one (default namespaces, no generated prefixes), which Outlook expects.
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE_NS)
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_RESPONSE_NS)
    account = ET.SubElement(response, "Account")

    def child(parent: ET.Element, name: str, text: str | None = None) -> ET.Element:
        element = ET.SubElement(parent, name)
        element.text = text
        return element

    child(account, "AccountType", "email")
    child(account, "Action", "settings")
    for server in servers:
        protocol = child(account, "Protocol")
        child(protocol, "Type", server.protocol.upper())
        child(protocol, "Server", server.host)
        child(protocol, "Port", str(server.port))
        child(protocol, "DomainRequired", "off")
        child(protocol, "LoginName", login_name)
        child(protocol, "SPA", "off")
        child(protocol, "SSL", "on")
        child(protocol, "Encryption", "SSL" if server.tls == "SSL" else "TLS")
        child(protocol, "AuthRequired", "on")
    return _xml(root)
