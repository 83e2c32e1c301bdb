"""rollouts under several replicas: a job is sent once its row is committed and marked sent after the broker took it; one install and one rollback per device and rollout

Revision ID: 0007_rollout_replicas
Revises: 0006_alert_events
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_rollout_replicas"
down_revision = "0006_alert_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("sent_at", sa.Float(), nullable=True))
        batch.create_unique_constraint("uq_deployment_rollout_device_kind", ["rollout_id", "device_id", "kind"])
    # Jobs stored before this revision went out with their rollout step.
    op.execute("UPDATE deployments SET sent_at = updated_at")


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_constraint("uq_deployment_rollout_device_kind", type_="unique")
        batch.drop_column("sent_at")
