"""The data model: every table and the invariants the database itself enforces."""

from provider.models.admin import AdminUser, admin_domains
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

__all__ = [
    "AdminUser",
    "Alias",
    "ApiIdempotencyKey",
    "ApiToken",
    "AuditEvent",
    "BackupRestore",
    "BackupSnapshot",
    "DailyStat",
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
    "admin_domains",
]
