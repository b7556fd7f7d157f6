"""Job runs: who asked for a run (the audit actor), and `api` for runs started through /api/v1

Revision ID: 0020_job_run_actor
Revises: 0019_search_trigram_indexes
Create Date: 2026-12-07 06:10:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0020_job_run_actor"
down_revision = "0019_search_trigram_indexes"
branch_labels = None
depends_on = None

KNOWN = "started_by IN ('scheduler', 'command', 'admin', 'api')"
KNOWN_BEFORE = "started_by IN ('scheduler', 'command', 'admin')"


def upgrade():
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor", sa.String(length=320), nullable=True))
        batch_op.drop_constraint(op.f("ck_job_runs_started_by_known"), type_="check")
        batch_op.create_check_constraint("started_by_known", KNOWN)


def downgrade():
    # Runs the API started read as the panel's did before (the kind the old schema knew).
    op.execute("UPDATE job_runs SET started_by = 'admin' WHERE started_by = 'api'")
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_job_runs_started_by_known"), type_="check")
        batch_op.create_check_constraint("started_by_known", KNOWN_BEFORE)
        batch_op.drop_column("actor")
