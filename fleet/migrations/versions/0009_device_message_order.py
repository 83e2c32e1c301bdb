"""device state from the latest message by (run, seq): a message delivered again or late never brings back an older state; revoked devices

Revision ID: 0009_device_message_order
Revises: 0008_shadow
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_device_message_order"
down_revision = "0008_shadow"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("status_order", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("model_order", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("model_order")
        batch.drop_column("status_order")
