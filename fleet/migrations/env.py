"""Alembic environment: runs on the connection fleet.db.upgrade hands over, or on sqlalchemy.url."""

from alembic import context
from sqlalchemy import create_engine

from edgefleet.fleet.db import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")

if connection is None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
