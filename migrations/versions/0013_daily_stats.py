"""daily stats (the dashboard's numbers over time)

Revision ID: 0013_daily_stats
Revises: 0011_sieve_duplicates
Create Date: 2026-12-06 23:40:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0013_daily_stats"
down_revision = "0011_sieve_duplicates"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "daily_stats",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("mailboxes", sa.Integer(), nullable=True),
        sa.Column("trials", sa.Integer(), nullable=True),
        sa.Column("used_bytes", sa.BigInteger(), nullable=True),
        sa.Column("quota_bytes", sa.BigInteger(), nullable=True),
        sa.Column("deliveries", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("failed_logins", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_daily_stats")),
    )


def downgrade():
    op.drop_table("daily_stats")
