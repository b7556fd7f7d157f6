"""upgrade requests with the admin's answer; since when the scheduler lease is held; job runs
started from the admin panel

Revision ID: 0015_upgrade_requests
Revises: 0014_api_tokens
Create Date: 2026-12-06 23:40:00

"""

import sqlalchemy as sa
from alembic import op

import provider.models.types

revision = "0015_upgrade_requests"
down_revision = "0014_api_tokens"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "upgrade_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("requested_at", provider.models.types.UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("answered_at", provider.models.types.UTCDateTime(), nullable=True),
        sa.Column("answered_by", sa.String(length=320), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'converted', 'declined')",
            name=op.f("ck_upgrade_requests_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_upgrade_requests_mailbox_id_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upgrade_requests")),
    )
    with op.batch_alter_table("upgrade_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_upgrade_requests_mailbox_id"), ["mailbox_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_upgrade_requests_status"), ["status"], unique=False)
    with op.batch_alter_table("scheduler_lease", schema=None) as batch_op:
        batch_op.add_column(sa.Column("since", provider.models.types.UTCDateTime(), nullable=True))
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_job_runs_started_by_known"), type_="check")
        batch_op.create_check_constraint(
            "started_by_known", "started_by IN ('scheduler', 'command', 'admin')"
        )


def downgrade():
    op.execute("UPDATE job_runs SET started_by = 'command' WHERE started_by = 'admin'")
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_job_runs_started_by_known"), type_="check")
        batch_op.create_check_constraint(
            "started_by_known", "started_by IN ('scheduler', 'command')"
        )
    with op.batch_alter_table("scheduler_lease", schema=None) as batch_op:
        batch_op.drop_column("since")
    with op.batch_alter_table("upgrade_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upgrade_requests_status"))
        batch_op.drop_index(batch_op.f("ix_upgrade_requests_mailbox_id"))
    op.drop_table("upgrade_requests")
