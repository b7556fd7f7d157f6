"""The data model: every table and the invariants the database itself enforces."""

from provider.models.admin import AdminUser, admin_domains
from provider.models.alias import Alias
from provider.models.audit import AuditEvent
from provider.models.domain import Domain
from provider.models.mailbox import Mailbox, MailboxStatus, Plan, Protocol

__all__ = [
    "AdminUser",
    "Alias",
    "AuditEvent",
    "Domain",
    "Mailbox",
    "MailboxStatus",
    "Plan",
    "Protocol",
    "admin_domains",
]
