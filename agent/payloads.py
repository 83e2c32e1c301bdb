"""MQTT topics and payloads, v1 (see docs/agent.md; the models are edgefleet/contracts/mqtt.py).
Every payload is JSON with "schema": 1 and a unique "id"."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from datetime import datetime, timezone

from PIL import Image, ImageDraw

from edgefleet.agent.postprocess import Detection as DetectionResult
from edgefleet.agent.postprocess import FrameResult
from edgefleet.agent.rules import Hit
from edgefleet.agent_release import running_version
from edgefleet.contracts.mqtt import (
    AlertMessage,
    Detection,
    ModelRef,
    SnapshotRef,
    StatusMessage,
    TelemetryMessage,
    Thumbnail,
)
from edgefleet.package import Manifest
from edgefleet.runtime_bundle import host_arch

# Alert ids are derived from the frame, so handling the same frame twice gives the same id.
ALERT_NAMESPACE = uuid.UUID("5b0c2f8e-4a0e-4f49-9d0f-0e5a3c1d7a10")


def topic(device_id: str, suffix: str) -> str:
    return f"edgefleet/v1/{device_id}/{suffix}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def model_ref(manifest: Manifest | None) -> ModelRef | None:
    return None if manifest is None else ModelRef(name=manifest.name, version=manifest.version)


def draw_boxes(small: Image.Image, frame_size: tuple[int, int], boxes: list[list[float]]) -> None:
    """Outline frame-pixel boxes on the (smaller) thumbnail, after scaling: lines stay visible."""
    sx, sy = small.width / frame_size[0], small.height / frame_size[1]
    pen = ImageDraw.Draw(small)
    for x1, y1, x2, y2 in boxes:
        pen.rectangle([x1 * sx, y1 * sy, x2 * sx, y2 * sy], outline=(255, 0, 0), width=max(1, small.width // 80))


def small_jpeg(
    image: Image.Image, max_side: int, max_bytes: int, quality: int = 80, boxes: list[list[float]] | None = None
) -> tuple[Image.Image, bytes] | None:
    """The image scaled to at most max_side pixels per side as a JPEG of at most max_bytes,
    trying `quality` then lower ones; None if even the lowest does not fit."""
    small = image.convert("RGB")
    small.thumbnail((max_side, max_side))
    if boxes:
        draw_boxes(small, image.size, boxes)
    for q in [quality] + [q for q in (60, 40, 25, 15) if q < quality]:
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=q, optimize=True)
        if buf.tell() <= max_bytes:
            return small, buf.getvalue()
    return None


def thumbnail(
    image: Image.Image, max_side: int, max_bytes: int, boxes: list[list[float]] | None = None
) -> Thumbnail | None:
    """A JPEG of at most max_side pixels per side and max_bytes bytes, or None if it cannot fit."""
    found = small_jpeg(image, max_side, max_bytes, boxes=boxes)
    if found is None:
        return None
    small, data = found
    return Thumbnail(format="jpeg", width=small.width, height=small.height, data=base64.b64encode(data).decode())


def snapshot(image: Image.Image, max_side: int, quality: int, max_bytes: int) -> tuple[SnapshotRef, bytes] | None:
    """The alert's frame for people to look at (boxes are drawn by whoever shows it), and its reference."""
    found = small_jpeg(image, max_side, max_bytes, quality)
    if found is None:
        return None
    small, data = found
    ref = SnapshotRef(sha256=hashlib.sha256(data).hexdigest(), size=len(data), width=small.width, height=small.height)
    return ref, data


def alert(
    device_id: str,
    hit: Hit,
    result: FrameResult,
    manifest: Manifest,
    *,
    frame_key: str,
    source: str,
    latency_ms: float,
    thumb: Thumbnail | None,
    snap: SnapshotRef | None = None,
    rule: str | None = None,
) -> dict:
    detections = frame_size = None
    if result.detections is not None:
        # Schema 1 stays: box_px, zones and frame_size are optional additions readers may ignore.
        chosen = hit.detections
        if chosen is None:
            chosen = [d for d in result.detections if d.label == hit.label]
        detections = [detection(d) for d in chosen[:20]]
        frame_size = list(result.frame_size) if result.frame_size else None
    return AlertMessage(
        id=str(
            uuid.uuid5(
                ALERT_NAMESPACE, f"{device_id}/{source}/{frame_key}/{hit.label}/{manifest.name}/{manifest.version}"
            )
        ),
        type="alert",
        device=device_id,
        ts=now_iso(),
        label=hit.label,
        score=round(hit.score, 5),
        consecutive=hit.consecutive,
        source=source,
        frame=frame_key,
        model=model_ref(manifest),
        latency_ms=round(latency_ms, 3),
        detections=detections,
        frame_size=frame_size,
        thumbnail=thumb,
        snapshot=snap,
        rule=rule,
    ).wire()


def detection(d: DetectionResult) -> Detection:
    return Detection(label=d.label, score=round(d.score, 5), box=d.box, box_px=d.px or None, zones=d.zones or None)


def telemetry(
    device_id: str, window: dict, manifest: Manifest | None, outbox: dict, library: str | None = None
) -> dict:
    """`window` is AgentMetrics.window(): the telemetry fields of one window; `library`, which library runs."""
    return TelemetryMessage.model_validate(
        {
            **window,
            "id": str(uuid.uuid4()),
            "type": "telemetry",
            "device": device_id,
            "ts": now_iso(),
            "model": model_ref(manifest),
            "library": library,
            "outbox": outbox,
        }
    ).wire()


def status(
    device_id: str,
    state: str,
    manifest: Manifest | None = None,
    watching: list[str] | None = None,
    features: list[str] | None = None,
) -> dict:
    return StatusMessage(
        id=str(uuid.uuid4()),
        type="status",
        device=device_id,
        ts=now_iso(),
        state=state,
        model=model_ref(manifest),
        agent_version=running_version(),
        arch=host_arch(),
        watching=watching,
        features=features,
    ).wire()
