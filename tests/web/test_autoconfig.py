"""Client autoconfiguration: Mozilla autoconfig and Outlook's POX Autodiscover, parsed as XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from provider.services import provisioning
from tests.conftest import TEST_ACTOR, make_mailbox

AD_NS = "{http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006}"
OUTLOOK_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
AUTODISCOVER_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{address}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config.update(
        HOSTNAME="mail.provider.test",
        PUBLIC_IMAP_HOST="imap.provider.test",
        PUBLIC_IMAP_PORT=993,
        PUBLIC_POP3_PORT=995,
        PUBLIC_SMTP_PORT=2587,
        WTF_CSRF_ENABLED=True,  # Autodiscover must work without a token anyway
    )
    return app_config


@pytest.fixture
def mailboxes(session: Session) -> None:
    make_mailbox(session, "imaponly@example.test", protocols="imap")
    make_mailbox(session, "poponly@example.test", protocols="pop3")
    both = make_mailbox(session, "both@example.test", protocols="both")
    provisioning.create_alias(session, "sales@example.test", both, actor=TEST_ACTOR)
    session.commit()


def mozilla(
    client: FlaskClient, url: str, base_url: str = "http://localhost", **query: str
) -> dict[str, Any]:
    response = client.get(url, query_string=query, base_url=base_url)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/xml"
    assert response.headers["Cache-Control"] == "no-store"
    root = ET.fromstring(response.data)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None
    servers = {}
    for element in provider:
        if element.tag in {"incomingServer", "outgoingServer"}:
            servers[element.get("type")] = {child.tag: child.text for child in element}
    return {"domain": provider.findtext("domain"), "servers": servers}


def outlook(client: FlaskClient, address: str, path: str = "/autodiscover/autodiscover.xml"):
    return client.post(
        path, data=AUTODISCOVER_REQUEST.format(address=address), content_type="text/xml"
    )


def outlook_protocols(response: Any) -> dict[str, dict[str, str]]:
    assert response.status_code == 200, response.get_data(as_text=True)
    root = ET.fromstring(response.data)
    assert root.tag == f"{AD_NS}Autodiscover"
    account = root.find(f"{OUTLOOK_NS}Response/{OUTLOOK_NS}Account")
    assert account is not None
    assert account.findtext(f"{OUTLOOK_NS}AccountType") == "email"
    assert account.findtext(f"{OUTLOOK_NS}Action") == "settings"
    return {
        protocol.findtext(f"{OUTLOOK_NS}Type"): {
            child.tag.removeprefix(OUTLOOK_NS): child.text for child in protocol
        }
        for protocol in account.findall(f"{OUTLOOK_NS}Protocol")
    }


def test_mozilla_lists_only_the_mailboxes_protocols(client: FlaskClient, mailboxes: None):
    url = "/.well-known/autoconfig/mail/config-v1.1.xml"
    imap_only = mozilla(client, url, emailaddress="imaponly@example.test")
    assert imap_only["domain"] == "example.test"
    assert set(imap_only["servers"]) == {"imap", "smtp"}
    assert imap_only["servers"]["imap"] == {
        "hostname": "imap.provider.test",
        "port": "993",
        "socketType": "SSL",
        "authentication": "password-cleartext",
        "username": "%EMAILADDRESS%",
    }
    smtp = imap_only["servers"]["smtp"]
    assert (smtp["hostname"], smtp["port"], smtp["socketType"]) == (
        "127.0.0.1",
        "2587",
        "STARTTLS",
    )
    pop_only = mozilla(client, "/mail/config-v1.1.xml", emailaddress="PopOnly@Example.test")
    assert set(pop_only["servers"]) == {"pop3", "smtp"}
    assert pop_only["servers"]["pop3"]["hostname"] == "127.0.0.1"  # empty = BIND_HOST
    assert pop_only["servers"]["pop3"]["port"] == "995"
    both = mozilla(client, url, emailaddress="both+news@example.test")
    assert set(both["servers"]) == {"imap", "pop3", "smtp"}


def test_unknown_addresses_and_aliases_get_the_domains_generic_config(
    client: FlaskClient, mailboxes: None
):
    url = "/.well-known/autoconfig/mail/config-v1.1.xml"
    generic = mozilla(client, url, emailaddress="nobody@example.test")
    assert set(generic["servers"]) == {"imap", "pop3", "smtp"}
    assert mozilla(client, url, emailaddress="sales@example.test") == generic
    # Without an address, the domain is the one the request came to (autoconfig.<domain>).
    by_host = client.get("/mail/config-v1.1.xml", headers={"Host": "autoconfig.example.test"})
    assert (
        by_host.status_code == 200
        and by_host.data
        == client.get(url, query_string={"emailaddress": "nobody@example.test"}).data
    )


def test_domains_not_hosted_here_get_404(client: FlaskClient, mailboxes: None):
    url = "/.well-known/autoconfig/mail/config-v1.1.xml"
    assert client.get(url, query_string={"emailaddress": "a@elsewhere.test"}).status_code == 404
    assert client.get(url, query_string={"emailaddress": "not an address"}).status_code == 404
    assert client.get(url, headers={"Host": "autoconfig.elsewhere.test"}).status_code == 404
    assert outlook(client, "someone@elsewhere.test").status_code == 404


def test_outlook_autodiscover_lists_only_the_mailboxes_protocols(
    client: FlaskClient, mailboxes: None
):
    protocols = outlook_protocols(outlook(client, "ImapOnly@example.test"))
    assert set(protocols) == {"IMAP", "SMTP"}
    assert protocols["IMAP"] == {
        "Type": "IMAP",
        "Server": "imap.provider.test",
        "Port": "993",
        "DomainRequired": "off",
        "LoginName": "imaponly@example.test",
        "SPA": "off",
        "SSL": "on",
        "Encryption": "SSL",
        "AuthRequired": "on",
    }
    assert (protocols["SMTP"]["Port"], protocols["SMTP"]["Encryption"]) == ("2587", "TLS")
    upper = outlook_protocols(
        outlook(client, "poponly@example.test", "/Autodiscover/Autodiscover.xml")
    )
    assert set(upper) == {"POP3", "SMTP"}
    assert set(outlook_protocols(outlook(client, "nobody@example.test"))) == {
        "IMAP",
        "POP3",
        "SMTP",
    }


def test_autodiscover_refuses_what_is_not_a_request(client: FlaskClient, mailboxes: None):
    url = "/autodiscover/autodiscover.xml"
    assert client.post(url, data="not xml", content_type="text/xml").status_code == 400
    assert client.post(url, data="<a><b/></a>", content_type="text/xml").status_code == 400
    bomb = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'
    assert client.post(url, data=bomb, content_type="text/xml").status_code == 400
    big = AUTODISCOVER_REQUEST.format(address="a@example.test" + " " * 20000)
    assert client.post(url, data=big, content_type="text/xml").status_code == 413
    assert client.get(url).status_code == 405


# --- what is shown when the PUBLIC_* settings are unset (issue 11, item 16) ----------------------


@pytest.fixture
def unset_public(app_config: dict[str, Any]) -> dict[str, Any]:
    """`make run`'s settings: no PUBLIC_* values, the listeners on their default ports."""
    for name in ("IMAP", "POP3", "SMTP"):
        app_config.pop(f"PUBLIC_{name}_HOST", None)
        app_config.pop(f"PUBLIC_{name}_PORT", None)
    return app_config


def test_defaults_name_what_listens_and_no_sending_server(
    unset_public: dict[str, Any], client: FlaskClient, mailboxes: None
):
    """The reported defect: autoconfig said IMAP 993, POP3 995 and SMTP 587 while the
    listeners were on 1993 and 1995 and no submission listener existed."""
    url = "/.well-known/autoconfig/mail/config-v1.1.xml"
    generic = mozilla(client, url, emailaddress="both@example.test")
    assert set(generic["servers"]) == {"imap", "pop3"}  # no outgoingServer at all
    imap, pop3 = generic["servers"]["imap"], generic["servers"]["pop3"]
    assert (imap["hostname"], imap["port"], imap["socketType"]) == ("127.0.0.1", "1993", "SSL")
    assert (pop3["hostname"], pop3["port"], pop3["socketType"]) == ("127.0.0.1", "1995", "SSL")
    protocols = outlook_protocols(outlook(client, "both@example.test"))
    assert set(protocols) == {"IMAP", "POP3"}
    assert (protocols["IMAP"]["Server"], protocols["IMAP"]["Port"]) == ("127.0.0.1", "1993")
    assert (protocols["POP3"]["Port"], protocols["POP3"]["Encryption"]) == ("1995", "SSL")


def test_a_wildcard_bind_names_the_host_of_the_request(
    unset_public: dict[str, Any], app, client: FlaskClient, mailboxes: None
):
    app.config.update(BIND_HOST="0.0.0.0", IMAPS_PORT=0, IMAP_PORT=1143)
    response = mozilla(
        client,
        "/mail/config-v1.1.xml",
        emailaddress="imaponly@example.test",
        base_url="https://mail.example.test:8443",
    )
    imap = response["servers"]["imap"]
    # Without an implicit-TLS listener, the STARTTLS one.
    assert (imap["hostname"], imap["port"], imap["socketType"]) == (
        "mail.example.test",
        "1143",
        "STARTTLS",
    )


def test_a_listener_on_a_port_picked_at_start_is_not_named(
    unset_public: dict[str, Any], app, client: FlaskClient, mailboxes: None
):
    app.config.update(IMAPS_PORT=0, IMAP_PORT=0)
    generic = mozilla(client, "/mail/config-v1.1.xml", emailaddress="both@example.test")
    assert set(generic["servers"]) == {"pop3"}


def test_a_bundled_submission_listener_is_named_once_it_has_a_port(
    unset_public: dict[str, Any], app, client: FlaskClient, mailboxes: None
):
    app.config.update(SUBMISSION_SERVED=True, SUBMISSIONS_PORT=1465, SUBMISSION_PORT=1587)
    smtp = mozilla(client, "/mail/config-v1.1.xml", emailaddress="both@example.test")["servers"][
        "smtp"
    ]
    # Implicit TLS first (RFC 8314), STARTTLS when only that listens.
    assert (smtp["hostname"], smtp["port"], smtp["socketType"]) == ("127.0.0.1", "1465", "SSL")
    app.config.update(SUBMISSIONS_PORT=0)
    smtp = mozilla(client, "/mail/config-v1.1.xml", emailaddress="both@example.test")["servers"][
        "smtp"
    ]
    assert (smtp["hostname"], smtp["port"], smtp["socketType"]) == ("127.0.0.1", "1587", "STARTTLS")


def test_a_submission_port_that_nothing_serves_is_not_named(
    unset_public: dict[str, Any], app, client: FlaskClient, mailboxes: None
):
    app.config.update(SUBMISSION_SERVED=False, SUBMISSIONS_PORT=1465, SUBMISSION_PORT=1587)
    generic = mozilla(client, "/mail/config-v1.1.xml", emailaddress="both@example.test")
    assert "smtp" not in generic["servers"]
