"""The alert events table (migrations/versions/0006_alert_events.py): one row per alert a camera
sent, with the snapshot it names once the camera uploaded it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.fleet.db import Base, now


class AlertEvent(Base):
    __tablename__ = "alert_events"
    __table_args__ = (
        Index("ix_alert_events_device_received", "device_id", "received_at"),
        Index("ix_alert_events_snapshot", "device_id", "snapshot_sha256"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    received_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    ts: Mapped[str | None] = mapped_column(String(40), nullable=True)
    label: Mapped[str] = mapped_column(String(64), index=True)
    score: Mapped[float] = mapped_column(Float)
    consecutive: Mapped[int] = mapped_column(Integer)
    rule: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source: Mapped[str] = mapped_column(String(64))
    frame: Mapped[str] = mapped_column(String(256))
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    boxes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    frame_size: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # the alert's SnapshotRef
    snapshot_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    snapshot_key: Mapped[str | None] = mapped_column(String(256), nullable=True)  # set once stored
