"""What the agent counts: Prometheus metrics for the health endpoint, and per-window telemetry.

The telemetry window (reset at each telemetry message) holds frame counts, latencies for
p50/p95, alert counts and the drift summary: histograms of input brightness (mean luma,
0..1) and contrast (luma standard deviation, 0..0.5), per-class top-1 counts, and a
histogram of top-1 confidence (0..1). Bin edges are fixed so the fleet can compare windows
with each other and with the package's baseline.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally

import numpy as np
import psutil
from PIL import Image
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BINS = 10
BRIGHTNESS_EDGES = np.linspace(0.0, 1.0, BINS + 1)
CONTRAST_EDGES = np.linspace(0.0, 0.5, BINS + 1)
CONFIDENCE_EDGES = np.linspace(0.0, 1.0, BINS + 1)
MAX_LATENCIES = 10_000


def _hist(values: list[float], edges: np.ndarray) -> dict:
    clipped = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=edges)
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def latency_summary(values_ms: list[float]) -> dict:
    """Count, p50 and p95 of one window's latencies (telemetry's and the shadow report's latency_ms)."""
    if not values_ms:
        return {"count": 0, "p50": None, "p95": None}
    lat = np.asarray(values_ms)
    return {
        "count": int(lat.size),
        "p50": round(float(np.percentile(lat, 50)), 3),
        "p95": round(float(np.percentile(lat, 95)), 3),
    }


def drift_summary(brightness: list[float], contrast: list[float], predictions: Tally, confidence: list[float]) -> dict:
    """One window's drift summary on the fixed bins: the telemetry's, and a shadow model's in its report."""
    return {
        "brightness": _hist(brightness, BRIGHTNESS_EDGES),
        "contrast": _hist(contrast, CONTRAST_EDGES),
        "predictions": dict(predictions),
        "confidence": _hist(confidence, CONFIDENCE_EDGES),
    }


def luma_stats(image: Image.Image) -> tuple[float, float]:
    """Mean and standard deviation of luma on a small copy (cheap on a camera CPU)."""
    gray = image.convert("L")  # first: reduce() does not take every mode (palette PNGs)
    small = gray.reduce(max(1, min(gray.size) // 64))
    pixels = np.asarray(small, dtype=np.float32) / 255.0
    return float(pixels.mean()), float(pixels.std())


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.frames = Counter("edgefleet_agent_frames", "Frames handled, by result", ["result"], registry=self.registry)
        self.alerts = Counter("edgefleet_agent_alerts", "Alerts raised, by label", ["label"], registry=self.registry)
        self.latency = Histogram(
            "edgefleet_agent_inference_seconds",
            "Model run time per frame",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.overhead = Histogram(
            "edgefleet_agent_overhead_seconds",
            "Per-frame time outside the model (decode, preprocess, rules, outbox)",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
        )
        self.outbox_pending = Gauge(
            "edgefleet_agent_outbox_pending", "Messages waiting for the broker's ack", registry=self.registry
        )
        self.outbox_dropped = Gauge(
            "edgefleet_agent_outbox_dropped",
            "Messages dropped by the outbox caps, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.connected = Gauge(
            "edgefleet_agent_mqtt_connected", "1 while connected to the broker", registry=self.registry
        )
        self.rss = Gauge("edgefleet_agent_resident_bytes", "Resident memory", registry=self.registry)
        self._lock = threading.Lock()
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the measurement
        self.started = time.monotonic()
        self.totals: Tally = Tally()
        self._reset_window()

    def _reset_window(self) -> None:
        self.window_start = time.monotonic()
        self.w_frames: Tally = Tally()
        self.w_bad_reasons: Tally = Tally()
        self.w_latency: list[float] = []
        self.w_alerts: Tally = Tally()
        self.w_brightness: list[float] = []
        self.w_contrast: list[float] = []
        self.w_predictions: Tally = Tally()
        self.w_confidence: list[float] = []

    def frame_bad(self, reason: str) -> None:
        with self._lock:
            self.frames.labels("bad").inc()
            self.totals["bad"] += 1
            self.w_frames["bad"] += 1
            self.w_bad_reasons[reason] += 1

    def frame_error(self) -> None:
        with self._lock:
            self.frames.labels("error").inc()
            self.totals["error"] += 1
            self.w_frames["error"] += 1

    def frame_ok(
        self, latency_s: float, overhead_s: float, brightness: float, contrast: float, top_label: str, top_score: float
    ) -> None:
        with self._lock:
            self.frames.labels("ok").inc()
            self.latency.observe(latency_s)
            self.overhead.observe(overhead_s)
            self.totals["ok"] += 1
            self.w_frames["ok"] += 1
            if len(self.w_latency) < MAX_LATENCIES:
                self.w_latency.append(latency_s * 1000)
            self.w_brightness.append(brightness)
            self.w_contrast.append(contrast)
            if top_label:
                self.w_predictions[top_label] += 1
                self.w_confidence.append(top_score)

    def alert(self, label: str) -> None:
        with self._lock:
            self.alerts.labels(label).inc()
            self.totals["alerts"] += 1
            self.w_alerts[label] += 1

    def window(self) -> dict:
        """The telemetry body for the window since the last call, and start a new window."""
        with self._lock:
            body = {
                "window_s": round(time.monotonic() - self.window_start, 3),
                "frames": {
                    "ok": self.w_frames["ok"],
                    "bad": self.w_frames["bad"],
                    "error": self.w_frames["error"],
                    "bad_reasons": dict(self.w_bad_reasons),
                },
                "latency_ms": latency_summary(self.w_latency),
                "alerts": dict(self.w_alerts),
                "system": {
                    "cpu_percent": self._process.cpu_percent(None),
                    "rss_bytes": self._process.memory_info().rss,
                },
                "drift": drift_summary(self.w_brightness, self.w_contrast, self.w_predictions, self.w_confidence),
            }
            self._reset_window()
        return body

    def refresh_gauges(self, outbox_stats: dict, connected: bool) -> None:
        self.outbox_pending.set(outbox_stats["pending"])
        for kind, count in outbox_stats["dropped"].items():
            self.outbox_dropped.labels(kind).set(count)
        self.connected.set(1 if connected else 0)
        self.rss.set(self._process.memory_info().rss)
