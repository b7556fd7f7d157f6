"""per-mailbox POP3 download action

Revision ID: 0003_pop3_action
Revises: 0002_quota_warned
Create Date: 2026-11-28 00:50:00.000000

"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0003_pop3_action"
down_revision = "0002_quota_warned"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pop3_action", sa.String(length=16), server_default="keep", nullable=False)
        )
        batch_op.create_check_constraint(
            "pop3_action_known", "pop3_action IN ('keep', 'seen', 'archive')"
        )


def downgrade():
    with op.batch_alter_table("mailboxes", schema=None) as batch_op:
        batch_op.drop_constraint("pop3_action_known", type_="check")
        batch_op.drop_column("pop3_action")
