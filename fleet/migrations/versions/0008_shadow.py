"""shadow rollouts: the features each device reports, shadow reports, and the shadow rollout a staged one was promoted from

Revision ID: 0008_shadow
Revises: 0007_rollout_replicas
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_shadow"
down_revision = "0007_rollout_replicas"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("features", sa.JSON(), nullable=True))
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("source_rollout_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_rollouts_source_rollout", "rollouts", ["source_rollout_id"], ["id"])
        batch.create_index("ix_rollouts_source_rollout_id", ["source_rollout_id"])
    op.create_table(
        "shadow_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.Column("rollout_id", sa.Integer(), sa.ForeignKey("rollouts.id"), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("active_name", sa.String(length=128), nullable=False),
        sa.Column("active_version", sa.String(length=64), nullable=False),
        sa.Column("candidate_name", sa.String(length=128), nullable=False),
        sa.Column("candidate_version", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=False),
        *(
            sa.Column(name, sa.Integer(), nullable=False)
            for name in (
                "frames_seen",
                "skipped_budget",
                "frames",
                "agree",
                "active_boxes",
                "candidate_boxes",
                "matched",
                "label_agree",
            )
        ),
        sa.Column("score_delta_sum", sa.Float(), nullable=False),
        sa.Column("score_abs_delta_sum", sa.Float(), nullable=False),
        sa.Column("active_latency_count", sa.Integer(), nullable=False),
        sa.Column("active_latency_p50", sa.Float(), nullable=True),
        sa.Column("candidate_latency_count", sa.Integer(), nullable=False),
        sa.Column("candidate_latency_p50", sa.Float(), nullable=True),
        sa.Column("active_confidence", sa.Float(), nullable=True),
        sa.Column("candidate_confidence", sa.Float(), nullable=True),
        sa.Column("candidate_cpu_share", sa.Float(), nullable=True),
        sa.Column("drift", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "message_id", name="uq_shadow_device_message"),
    )
    op.create_index("ix_shadow_reports_device_id", "shadow_reports", ["device_id"])
    op.create_index("ix_shadow_reports_rollout_id", "shadow_reports", ["rollout_id"])


def downgrade() -> None:
    op.drop_index("ix_shadow_reports_rollout_id", "shadow_reports")
    op.drop_index("ix_shadow_reports_device_id", "shadow_reports")
    op.drop_table("shadow_reports")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_index("ix_rollouts_source_rollout_id")
        batch.drop_constraint("fk_rollouts_source_rollout", type_="foreignkey")
        batch.drop_column("source_rollout_id")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("features")
