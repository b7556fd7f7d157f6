"""The data model: every table and the invariants the database itself enforces."""

from provider.models.admin import AdminRecoveryCode, AdminUser, admin_domains
from provider.models.alias import Alias
from provider.models.audit import AuditEvent
from provider.models.backup import BackupRestore, BackupSnapshot, SnapshotStatus
from provider.models.domain import Domain
from provider.models.idempotency import ApiIdempotencyKey
from provider.models.job import JobRun, RunOutcome, SchedulerLease
from provider.models.mailbox import Mailbox, MailboxStatus, Plan, Protocol
from provider.models.reservation import QuotaReservation
from provider.models.sending import (
    DkimKey,
    Identity,
    OutboundMessage,
    OutboundRecipient,
    RecipientState,
    SendingCount,
)
from provider.models.stats import DailyStat
from provider.models.token import ApiToken
from provider.models.trial import (
    Trial,
    TrialOutcome,
    TrialReminder,
    UpgradeRequest,
    UpgradeStatus,
)
from provider.models.vacation import SieveDuplicate, VacationResponse
from provider.models.webhook import (
    DeliveryState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "AdminRecoveryCode",
    "AdminUser",
    "Alias",
    "ApiIdempotencyKey",
    "ApiToken",
    "AuditEvent",
    "BackupRestore",
    "BackupSnapshot",
    "DailyStat",
    "DeliveryState",
    "DkimKey",
    "Domain",
    "Identity",
    "JobRun",
    "Mailbox",
    "MailboxStatus",
    "OutboundMessage",
    "OutboundRecipient",
    "Plan",
    "Protocol",
    "QuotaReservation",
    "RecipientState",
    "RunOutcome",
    "SchedulerLease",
    "SendingCount",
    "SieveDuplicate",
    "SnapshotStatus",
    "Trial",
    "TrialOutcome",
    "TrialReminder",
    "UpgradeRequest",
    "UpgradeStatus",
    "VacationResponse",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "admin_domains",
]
