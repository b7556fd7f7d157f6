"""sieve duplicates (the IDs the Sieve duplicate test tracks)

Revision ID: 0011_sieve_duplicates
Revises: 0010_vacation_responses
Create Date: 2026-12-06 23:30:00

"""

import sqlalchemy as sa
from alembic import op

import provider.models.types

revision = "0011_sieve_duplicates"
down_revision = "0010_vacation_responses"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "sieve_duplicates",
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("expires_at", provider.models.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_sieve_duplicates_mailbox_id_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("mailbox_id", "key", name=op.f("pk_sieve_duplicates")),
    )
    with op.batch_alter_table("sieve_duplicates", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sieve_duplicates_expires_at"), ["expires_at"], unique=False
        )


def downgrade():
    with op.batch_alter_table("sieve_duplicates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sieve_duplicates_expires_at"))
    op.drop_table("sieve_duplicates")
