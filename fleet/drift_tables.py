"""The drift tables (migrations/versions/0002_drift.py, 0003_drift_pooling.py): judged windows,
alarms per (device, model, version) and their events, windows still collecting frames, and the
fleet-wide alarms per model version with their events."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.fleet.db import Base, now


class DriftWindow(Base):
    """One judged telemetry window."""

    __tablename__ = "drift_windows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    frames: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    feature: Mapped[str | None] = mapped_column(String(32), nullable=True)
    over: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(16))  # the alarm's state after this window
    distances: Mapped[dict[str, Any]] = mapped_column(JSON)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)  # the window itself, for the fleet-wide view


class DriftAlarm(Base):
    """The alarm state machine of one (device, model, version)."""

    __tablename__ = "drift_alarms"
    __table_args__ = (
        UniqueConstraint("device_id", "model_name", "model_version"),
        Index("ix_drift_alarms_version_updated", "model_name", "model_version", "updated_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="ok")
    over_streak: Mapped[int] = mapped_column(Integer, default=0)
    under_streak: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    feature: Mapped[str | None] = mapped_column(String(32), nullable=True)
    raised_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cleared_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class DriftEvent(Base):
    """Every raised and cleared alarm, in order."""

    __tablename__ = "drift_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=now, index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    feature: Mapped[str | None] = mapped_column(String(32), nullable=True)


class DriftCollecting(Base):
    """Frames of (device, model, version) pooled towards its next judged window (frames 0: none)."""

    __tablename__ = "drift_collecting"
    __table_args__ = (UniqueConstraint("device_id", "model_name", "model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # the device's clock (telemetry ts)
    updated_at: Mapped[float] = mapped_column(Float, default=now)  # the fleet's clock
    messages: Mapped[int] = mapped_column(Integer, default=0)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class DriftFleetAlarm(Base):
    """The fleet-wide alarm state machine of one (model, version): the same table as a device's."""

    __tablename__ = "drift_fleet_alarms"
    __table_args__ = (UniqueConstraint("model_name", "model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="ok")
    over_streak: Mapped[int] = mapped_column(Integer, default=0)
    under_streak: Mapped[int] = mapped_column(Integer, default=0)
    devices: Mapped[int] = mapped_column(Integer, default=0)
    drifting: Mapped[int] = mapped_column(Integer, default=0)
    raised_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cleared_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class DriftFleetEvent(Base):
    """Every raised and cleared fleet-wide alarm, in order."""

    __tablename__ = "drift_fleet_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=now, index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))
    devices: Mapped[int] = mapped_column(Integer)
    drifting: Mapped[int] = mapped_column(Integer)
