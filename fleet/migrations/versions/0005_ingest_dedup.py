"""at-least-once ingest: telemetry deduplicated on (device, message id); the fleet's replicas and shared settings

Revision ID: 0005_ingest_dedup
Revises: 0004_agent_version
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_ingest_dedup"
down_revision = "0004_agent_version"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows stored before this revision have no id (NULL): a unique constraint never matches NULLs.
    with op.batch_alter_table("telemetry") as batch:
        batch.add_column(sa.Column("message_id", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_telemetry_device_message", ["device_id", "message_id"])
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_table("replicas")
    with op.batch_alter_table("telemetry") as batch:
        batch.drop_constraint("uq_telemetry_device_message", type_="unique")
        batch.drop_column("message_id")
