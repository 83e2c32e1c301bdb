"""the agent version and CPU architecture each device reports (agent over-the-air updates)

Revision ID: 0004_agent_version
Revises: 0003_drift_pooling
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_agent_version"
down_revision = "0003_drift_pooling"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("agent_version", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("arch", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("arch")
        batch.drop_column("agent_version")
