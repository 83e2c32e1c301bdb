"""drift windows pooled until large enough, and the fleet-wide alarm per model version

Revision ID: 0003_drift_pooling
Revises: 0002_drift
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_drift_pooling"
down_revision = "0002_drift"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_collecting",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "model_name", "model_version"),
    )
    op.create_index(op.f("ix_drift_collecting_device_id"), "drift_collecting", ["device_id"], unique=False)
    op.create_table(
        "drift_fleet_alarms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("over_streak", sa.Integer(), nullable=False),
        sa.Column("under_streak", sa.Integer(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("drifting", sa.Integer(), nullable=False),
        sa.Column("raised_at", sa.Float(), nullable=True),
        sa.Column("cleared_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model_name", "model_version"),
    )
    op.create_table(
        "drift_fleet_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("event", sa.String(length=16), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("drifting", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_drift_fleet_events_at"), "drift_fleet_events", ["at"], unique=False)
    # The fleet-wide alarm looks up a version's recently updated device alarms at every judged window.
    op.create_index(
        "ix_drift_alarms_version_updated", "drift_alarms", ["model_name", "model_version", "updated_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_drift_alarms_version_updated", table_name="drift_alarms")
    op.drop_table("drift_fleet_events")
    op.drop_table("drift_fleet_alarms")
    op.drop_table("drift_collecting")
