"""vacation responses (Sieve vacation, once per sender per period)

Revision ID: 0010_vacation_responses
Revises: 0009_sending
Create Date: 2026-12-06 21:30:00

"""

import sqlalchemy as sa
from alembic import op

import provider.models.types

revision = "0010_vacation_responses"
down_revision = "0009_sending"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "vacation_responses",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("handle", sa.String(length=64), nullable=False),
        sa.Column("sender", sa.String(length=320), nullable=False),
        sa.Column("sent_at", provider.models.types.UTCDateTime(), nullable=False),
        sa.Column("expires_at", provider.models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_vacation_responses_mailbox_id_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "mailbox_id", "handle", "sender", name=op.f("pk_vacation_responses")
        ),
    )
    with op.batch_alter_table("vacation_responses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vacation_responses_expires_at"), ["expires_at"], unique=False
        )


def downgrade():
    with op.batch_alter_table("vacation_responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_vacation_responses_expires_at"))
    op.drop_table("vacation_responses")
