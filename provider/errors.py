"""Errors raised by services, each knowing how every front end presents it."""

from __future__ import annotations


class ProviderError(Exception):
    """A rule was broken. `field` names the form field the message belongs next to."""

    http_status = 400
    imap_code = "CANNOT"
    smtp_reply = "451 4.3.0"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(ProviderError):
    """The value given has the wrong shape (an address, a number, a name)."""


class QuotaOutOfRange(InvalidInput):
    """A quota outside QUOTA_MIN_GB..QUOTA_MAX_GB."""


class WeakPassword(InvalidInput):
    """A password that the password policy refuses."""


class NotFound(ProviderError):
    http_status = 404
    imap_code = "NONEXISTENT"
    smtp_reply = "550 5.1.1"


class AlreadyExists(ProviderError):
    http_status = 409
    imap_code = "ALREADYEXISTS"


class DomainNotEmpty(ProviderError):
    """Deleting a domain that still has mailboxes or aliases."""

    http_status = 409


class QuotaExceeded(ProviderError):
    http_status = 507
    imap_code = "OVERQUOTA"
    smtp_reply = "552 5.2.2"


class PermissionDenied(ProviderError):
    http_status = 403
    imap_code = "NOPERM"


class RateLimited(ProviderError):
    http_status = 429
    imap_code = "UNAVAILABLE"
    smtp_reply = "421 4.7.0"


class UnknownRecipient(NotFound):
    """No mailbox or alias has this address."""

    smtp_reply = "550 5.1.1"


class RelayDenied(ProviderError):
    """A recipient outside the hosted domains: the inbound listener is never a relay."""

    http_status = 403
    smtp_reply = "550 5.7.1"


class MailboxDisabled(ProviderError):
    """The mailbox exists but may not receive or log in (suspended)."""

    http_status = 403
    imap_code = "CONTACTADMIN"
    smtp_reply = "550 5.2.1"


class MessageTooBig(ProviderError):
    http_status = 413
    imap_code = "TOOBIG"
    smtp_reply = "552 5.3.4"


class TemporaryFailure(ProviderError):
    """Something on our side failed; nothing was written and the sender should retry."""

    http_status = 503
    imap_code = "UNAVAILABLE"
    smtp_reply = "451 4.3.0"


class AuthenticationFailed(ProviderError):
    """Wrong password or unknown user: one text for both, so existence is never revealed."""

    http_status = 401
    imap_code = "AUTHENTICATIONFAILED"


class AccessRefused(ProviderError):
    """Right password, but the mailbox may not use this protocol now (policy, status, trial)."""

    http_status = 403
    imap_code = "CONTACTADMIN"


class TooManyConnections(ProviderError):
    """More concurrent sessions for one user from one address than allowed."""

    http_status = 429
    imap_code = "LIMIT"


class SenderNotAllowed(ProviderError):
    """MAIL FROM or From: is not one of the authenticated mailbox's identities."""

    http_status = 403
    smtp_reply = "553 5.7.1"


class SendingLimited(ProviderError):
    """A sending limit (per hour or per day) is reached: try again later."""

    http_status = 429
    smtp_reply = "451 4.7.1"


class SendingSuspended(ProviderError):
    """The mailbox may not send now (the burst rule or an admin stopped it)."""

    http_status = 403
    smtp_reply = "550 5.7.1"
