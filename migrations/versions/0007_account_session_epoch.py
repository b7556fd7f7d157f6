"""mailbox owner session epoch

Revision ID: 0007_account_epoch
Revises: 0006_trials
Create Date: 2026-11-28 02:20:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0007_account_epoch"
down_revision = "0006_trials"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("session_epoch", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade():
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_column("session_epoch")
