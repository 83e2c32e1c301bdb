"""alert events with their snapshots (fleet/alert_events.py), and the labels each device watches

Revision ID: 0005_alert_events
Revises: 0004_agent_version
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_alert_events"
down_revision = "0005_ingest_dedup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("watching", sa.JSON(), nullable=True))
    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_id", sa.String(length=64), nullable=True),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("ts", sa.String(length=40), nullable=True),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("consecutive", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("frame", sa.String(length=256), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("boxes", sa.JSON(), nullable=False),
        sa.Column("frame_size", sa.JSON(), nullable=True),
        sa.Column("snapshot", sa.JSON(), nullable=True),
        sa.Column("snapshot_sha256", sa.String(length=64), nullable=True),
        sa.Column("snapshot_key", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("alert_id"),
    )
    op.create_index("ix_alert_events_received_at", "alert_events", ["received_at"], unique=False)
    op.create_index("ix_alert_events_label", "alert_events", ["label"], unique=False)
    op.create_index("ix_alert_events_model_version", "alert_events", ["model_version"], unique=False)
    op.create_index("ix_alert_events_device_received", "alert_events", ["device_id", "received_at"], unique=False)
    op.create_index("ix_alert_events_snapshot", "alert_events", ["device_id", "snapshot_sha256"], unique=False)


def downgrade() -> None:
    op.drop_table("alert_events")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("watching")
