"""api tokens (bearer tokens of admins, stored hashed)

Revision ID: 0014_api_tokens
Revises: 0013_daily_stats
Create Date: 2026-12-06 23:50:00

"""

import sqlalchemy as sa
from alembic import op

import provider.models.types

revision = "0014_api_tokens"
down_revision = "0013_daily_stats"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("admin_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("allowed_ips", sa.JSON(), nullable=True),
        sa.Column("created_at", provider.models.types.UTCDateTime(), nullable=False),
        sa.Column("expires_at", provider.models.types.UTCDateTime(), nullable=True),
        sa.Column("last_used_at", provider.models.types.UTCDateTime(), nullable=True),
        sa.Column("last_used_ip", sa.String(length=45), nullable=True),
        sa.Column("revoked_at", provider.models.types.UTCDateTime(), nullable=True),
        sa.CheckConstraint("scope in ('read', 'write')", name=op.f("ck_api_tokens_scope_known")),
        sa.ForeignKeyConstraint(
            ["admin_id"],
            ["admin_users.id"],
            name=op.f("fk_api_tokens_admin_id_admin_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_api_tokens_secret_hash")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_admin_id"), ["admin_id"], unique=False)


def downgrade():
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_admin_id"))
    op.drop_table("api_tokens")
