"""Contact e-mail addresses (customers' addresses elsewhere): strict parsing and normalizing."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from provider.errors import InvalidInput

FIELD = "contact_email"


def parse_contact_email(raw: str, field: str = FIELD) -> str:
    """One plain address as it is kept: surrounding spaces removed, the domain lower-case and
    IDNA-encoded (as hosted domains are), the local part as typed. Everything else is refused
    with InvalidInput on `field`: control characters (CR/LF, NUL), lists, display names and
    angle brackets, quoted local parts, IP literals, special-use names (localhost, .local,
    .invalid…), non-ASCII local parts (our notices go out without SMTPUTF8).

    Syntax only: whether the domain receives mail is not asked (no DNS in a web request). The
    RFC 2606 `.test` names are allowed (test_environment), as the examples and tests use them.
    """
    try:
        parsed = validate_email(
            raw.strip(),
            check_deliverability=False,
            allow_smtputf8=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
            test_environment=True,
        )
    except EmailNotValidError as exc:
        reason = str(exc)
        raise InvalidInput(
            f"This is not a valid e-mail address: {reason[:1].lower()}{reason[1:]}", field
        ) from None
    return f"{parsed.local_part}@{parsed.ascii_domain}"


def parse_optional_contact_email(raw: str | None, field: str = FIELD) -> str | None:
    """parse_contact_email, with None or blank meaning "no contact address"."""
    if raw is None or not raw.strip():
        return None
    return parse_contact_email(raw, field)
