"""postmaster target per domain; journal of quota reservations in flight

Revision ID: 0008_postmaster_reservations
Revises: 0007_account_epoch
Create Date: 2026-12-06 09:30:00.000000

"""

import sqlalchemy as sa
from alembic import op

import provider.models.types

# revision identifiers, used by Alembic.
revision = "0008_postmaster_reservations"
down_revision = "0007_account_epoch"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.add_column(sa.Column("postmaster", sa.Text(), nullable=True))
    op.create_table(
        "quota_reservations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_id", sa.Integer(), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("process_start", sa.String(length=80), nullable=False),
        sa.Column("created_at", provider.models.types.UTCDateTime(), nullable=False),
        sa.CheckConstraint("nbytes >= 0", name=op.f("ck_quota_reservations_nbytes_not_negative")),
        sa.ForeignKeyConstraint(
            ["mailbox_id"],
            ["mailboxes.id"],
            name=op.f("fk_quota_reservations_mailbox_id_mailboxes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_reservations")),
    )
    with op.batch_alter_table("quota_reservations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_quota_reservations_mailbox_id"), ["mailbox_id"], unique=False
        )


def downgrade():
    with op.batch_alter_table("quota_reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quota_reservations_mailbox_id"))
    op.drop_table("quota_reservations")
    with op.batch_alter_table("domains", schema=None) as batch_op:
        batch_op.drop_column("postmaster")
