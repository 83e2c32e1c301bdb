"""The fleet database: SQLAlchemy 2 models, shared by SQLite (default) and PostgreSQL.

Times are float seconds since the epoch (UTC) so both databases store them the same way.
The schema is owned by the Alembic migrations in fleet/migrations; `open_database` upgrades
the database to the newest revision before anything else touches it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from edgefleet.errors import ServiceError


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


def now() -> float:
    return time.time()


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    revoked: Mapped[bool] = mapped_column(default=False)


class ModelGroup(Base):
    __tablename__ = "model_groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)


class ModelVersion(Base):
    """One logical model version; its builds (one per target) hang off it."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("group_id", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("model_groups.id"))
    version: Mapped[str] = mapped_column(String(64))
    approval: Mapped[str] = mapped_column(String(32), default="PendingManualApproval")
    approval_note: Mapped[str] = mapped_column(Text, default="")
    source_uri: Mapped[str] = mapped_column(Text, default="")
    source_sha256: Mapped[str] = mapped_column(String(64), default="")
    training_job: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class Build(Base):
    """A signed package of a model version for one target, held in the package store."""

    __tablename__ = "builds"
    __table_args__ = (UniqueConstraint("model_version_id", "target"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    target: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    store_key: Mapped[str] = mapped_column(Text)
    signer: Mapped[str] = mapped_column(String(32))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, default=now)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(64))
    group: Mapped[str | None] = mapped_column(String(128), nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    target: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    target: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    last_seen: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cert_serial: Mapped[str | None] = mapped_column(String(64), nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)  # as its status reports
    arch: Mapped[str | None] = mapped_column(String(32), nullable=True)  # picks the agent release build
    watching: Mapped[list[str] | None] = mapped_column(
        JSON, nullable=True
    )  # its alert rules' labels, as its status says
    features: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # as its status says ("shadow")
    enrolled_at: Mapped[float] = mapped_column(Float, default=now)
    # The place (DeviceMessage.order) of the latest message its status came from, and of the latest
    # its model and agent came from (fleet/order.py); NULL: none yet, or an agent that does not number them.
    status_order: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    model_order: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # When an admin revoked it: the broker refuses it, ingest ignores it; the row keeps its history.
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Telemetry(Base):
    """The health numbers the rollout gates need, one row per telemetry message.

    (device_id, message_id) is unique: a message the broker delivers again (it was not
    acknowledged before the fleet stopped) or another replica also received is stored once.
    Messages without an id (message_id NULL) are never taken for one another."""

    __tablename__ = "telemetry"
    __table_args__ = (UniqueConstraint("device_id", "message_id", name="uq_telemetry_device_message"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    message_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    alerts: Mapped[int] = mapped_column(Integer, default=0)
    confidence_mean: Mapped[float | None] = mapped_column(Float, nullable=True)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class Rollout(Base):
    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    selection: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="created", index=True)
    wave: Mapped[int] = mapped_column(Integer, default=-1)
    devices: Mapped[list[str]] = mapped_column(JSON, default=list)  # frozen order at creation
    wave_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    bake_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)
    # The shadow rollout a staged rollout was promoted from (fleet/shadow.py).
    source_rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id"), nullable=True, index=True)


class Deployment(Base):
    """One job sent to one device by a rollout: an install, or the rollback of one."""

    __tablename__ = "deployments"
    # One install and at most one rollback per device and rollout, whichever replica sends them.
    __table_args__ = (UniqueConstraint("rollout_id", "device_id", "kind", name="uq_deployment_rollout_device_kind"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # install | rollback | shadow_install | shadow_remove
    wave: Mapped[int] = mapped_column(Integer)
    build_id: Mapped[int | None] = mapped_column(ForeignKey("builds.id"), nullable=True)
    previous_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="notified")
    detail: Mapped[str] = mapped_column(Text, default="")
    switched_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=now)
    # Set once the broker acknowledged the job (QoS 1); a job left unsent by a replica that died is sent again.
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ShadowRow(Base):
    """One ShadowReport (edgefleet/contracts/shadow.py): counts, so windows sum over devices and groups.

    (device_id, message_id) is unique, as for telemetry: a report delivered again is stored once."""

    __tablename__ = "shadow_reports"
    __table_args__ = (UniqueConstraint("device_id", "message_id", name="uq_shadow_device_message"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    message_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    job_id: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float, default=now)
    window_s: Mapped[float] = mapped_column(Float)
    active_name: Mapped[str] = mapped_column(String(128))
    active_version: Mapped[str] = mapped_column(String(64))
    candidate_name: Mapped[str] = mapped_column(String(128))
    candidate_version: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(16))  # classification | detection
    frames_seen: Mapped[int] = mapped_column(Integer)
    skipped_budget: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer)  # compared frames
    agree: Mapped[int] = mapped_column(Integer)  # classification: same top label
    active_boxes: Mapped[int] = mapped_column(Integer)
    candidate_boxes: Mapped[int] = mapped_column(Integer)
    matched: Mapped[int] = mapped_column(Integer)
    label_agree: Mapped[int] = mapped_column(Integer)
    score_delta_sum: Mapped[float] = mapped_column(Float)
    score_abs_delta_sum: Mapped[float] = mapped_column(Float)
    active_latency_count: Mapped[int] = mapped_column(Integer)
    active_latency_p50: Mapped[float | None] = mapped_column(Float, nullable=True)
    candidate_latency_count: Mapped[int] = mapped_column(Integer)
    candidate_latency_p50: Mapped[float | None] = mapped_column(Float, nullable=True)
    active_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    candidate_confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    candidate_cpu_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The candidate's DriftSummary; SQL NULL without one (not JSON null), so queries can skip those rows.
    drift: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class RolloutEvent(Base):
    """Every rollout transition and every device job update, in order: the audit trail."""

    __tablename__ = "rollout_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    at: Mapped[float] = mapped_column(Float, default=now)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")


class Replica(Base):
    """A fleet process that has connected to the broker: its id is its MQTT client id and user
    (fleet/bridge.py), which the generated broker ACL lets read every device's topics."""

    __tablename__ = "replicas"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[float] = mapped_column(Float, default=now)


class Setting(Base):
    """A value every replica must agree on, chosen once by the first (e.g. the MQTT share group)."""

    __tablename__ = "settings"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def shared_setting(sessions: sessionmaker, name: str, first: str) -> str:
    """The setting `name`; `first` becomes it if no replica has set it yet (safe under races)."""
    with sessions() as s, s.begin():
        insert_or_ignore(s, Setting, ["name"], [{"name": name, "value": first}])
        return s.get_one(Setting, name).value


class Counter(Base):
    """Service counters that must survive restarts (e.g. MQTT messages dropped from unknown devices)."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


def insert_or_ignore(
    s: Session, model: type[Base], unique: list[str], rows: list[dict[str, Any]]
) -> set[tuple[Any, ...]]:
    """INSERT ... ON CONFLICT (unique) DO NOTHING of `rows` (all with the same keys) in one
    statement; returns the `unique` values of the rows that were inserted."""
    if not rows:
        return set()
    dialect = s.get_bind().dialect
    if dialect.name == "postgresql":
        return _insert_or_ignore_unnest(s, model.__table__, unique, rows)
    from sqlalchemy.dialects import sqlite

    table = model.__table__
    statement = (
        sqlite.insert(table).on_conflict_do_nothing(index_elements=unique).returning(*(table.c[n] for n in unique))
    )
    return {tuple(row) for row in s.execute(statement, rows)}


def _insert_or_ignore_unnest(s: Session, table: Any, unique: list[str], rows: list[dict[str, Any]]) -> set[tuple]:
    """PostgreSQL: one array per column, unnested. A multi-row VALUES of 500 rows has 4,500
    placeholders that psycopg parses anew for every batch (half the ingest CPU, measured)."""
    dialect = s.get_bind().dialect
    names = list(rows[0])
    # Strings go in as TEXT: an explicit cast to VARCHAR(n) would truncate, where the insert's own
    # assignment to the column refuses a value that is too long (the row is dropped, not altered).
    kinds = {
        n: "TEXT" if isinstance(table.c[n].type, String) else table.c[n].type.compile(dialect=dialect) for n in names
    }
    arrays = ", ".join(f"CAST(:{n} AS {kinds[n]}[])" for n in names)
    statement = text(
        f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays}) "
        f"ON CONFLICT ({', '.join(unique)}) DO NOTHING RETURNING {', '.join(unique)}"
    )
    return {tuple(row) for row in s.execute(statement, {n: [r[n] for r in rows] for n in names})}


MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # pysqlite's own BEGIN handling is switched off so write transactions are BEGIN IMMEDIATE
    # (see _sqlite_begin): the API, the MQTT ingest and the rollout ticker write concurrently,
    # and a deferred transaction that reads and then writes can fail with SQLITE_BUSY at once.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable at checkpoints, never corrupt
    cursor.close()


def _sqlite_begin(conn) -> None:
    # Writers take the write lock up front (and wait for it); readers get a deferred snapshot.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("edgefleet_write") else "BEGIN")


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        engine = create_engine(url, pool_pre_ping=True, json_serializer=json.dumps)
    except Exception as exc:  # bad URL forms raise ArgumentError/NoSuchModuleError
        raise ServiceError(
            f"cannot use database URL {url!r}: {exc}", "use sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def upgrade(engine: Engine) -> None:
    """Run the Alembic migrations up to head on `engine`."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def open_database(url: str) -> tuple[sessionmaker, sessionmaker]:
    """(writer, reader) session factories; on SQLite only writers take the write lock."""
    engine = make_engine(url)
    try:
        upgrade(engine)
    except Exception as exc:
        if isinstance(exc, ServiceError):
            raise
        raise ServiceError(
            f"cannot open or migrate the fleet database {engine.url.render_as_string(hide_password=True)}: {str(exc).splitlines()[0]}",
            "check the database URL, that the server runs, and its credentials",
        ) from None
    writer = engine.execution_options(edgefleet_write=True)
    return sessionmaker(writer, expire_on_commit=False), sessionmaker(engine, expire_on_commit=False)
