"""Drift scores against window size, and what judging drift costs the fleet's MQTT ingest.

1. Noise: the highest PSI / JS score of normal-scene windows against a 300-image baseline, per
   window size (the agent's own summary code on synthetic textured scenes), next to the lowest
   score of darkened (night) and blurred (fog) windows: the margin the default threshold has.
2. Cost: telemetry messages per second through `Ingest.handle_batch` (SQLite), from 10 devices,
   for bodies whose model has a baseline (judged: the device's alarm and the fleet-wide alarm),
   30-frame bodies of that model (pooled: 4 messages per judged window) and the same bodies of a
   model without one (stored only).

    /tmp/venv/bin/python benchmarks/drift_windows.py [--windows 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from edgefleet.agent.metrics import AgentMetrics, luma_stats
from edgefleet.contracts.drift import Baseline, parse_summary
from edgefleet.fleet.drift import DriftConfig, judge


def scene(rng: np.random.Generator) -> Image.Image:
    level = rng.uniform(90, 190)
    return Image.fromarray(np.clip(rng.normal(level, rng.uniform(25, 50), (48, 64, 3)), 0, 255).astype(np.uint8), "RGB")


FAULTS = {
    "normal": lambda im: im,
    "dark": lambda im: Image.fromarray((np.asarray(im, dtype=np.float32) * 0.2).astype(np.uint8), "RGB"),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(6)),
}


def summary(rng: np.random.Generator, n: int, fault: str) -> dict:
    m = AgentMetrics()
    for _ in range(n):
        image = FAULTS[fault](scene(rng))
        lum, con = luma_stats(image)
        # A stand-in classifier (bright vs dark by luma) so predictions/confidence move with the input.
        m.frame_ok(0.001, 0.0, lum, con, "bright" if lum > 0.5 else "dark", float(min(0.99, 0.5 + abs(lum - 0.5) * 4)))
    return m.window()["drift"]


def noise(windows: int) -> None:
    rng = np.random.default_rng(0)
    base = parse_summary(summary(rng, 300, "normal"))
    print(
        f"{'window frames':>14} {'normal max psi':>15} {'normal max js':>14} {'dark min psi':>13} {'blur min psi':>13}"
    )
    for n in (30, 60, 120, 240):
        normal = [judge(base, parse_summary(summary(rng, n, "normal")), DriftConfig()) for _ in range(windows)]
        normal_js = [
            judge(base, parse_summary(summary(rng, n, "normal")), DriftConfig(metric="js")).score
            for _ in range(windows // 4)
        ]
        dark = [judge(base, parse_summary(summary(rng, n, "dark")), DriftConfig()).score for _ in range(5)]
        blur = [judge(base, parse_summary(summary(rng, n, "blur")), DriftConfig()).score for _ in range(5)]
        print(
            f"{n:>14} {max(v.score for v in normal):>15.3f} {max(normal_js):>14.3f} {min(dark):>13.2f} {min(blur):>13.2f}"
        )


def cost(messages: int) -> None:
    from edgefleet.fleet import devices
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.ingest import Ingest, Message

    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        fleet = open_fleet(FleetConfig(data_dir=Path(tmp) / "fleet", signing_key=Path(tmp) / "none.key"))
        cams = [f"cam-{i}" for i in range(10)]
        for cam in cams:
            devices.register_device(fleet, cam, "x86_64")
        ingest = Ingest(fleet)
        baseline = Baseline(
            model="m",
            version="1",
            images=300,
            source="bench",
            computed_with="bench",
            created_at="now",
            summary=parse_summary(summary(rng, 300, "normal")),
        )
        # Stand in for the store lookup: the baseline of (m, 1) is known, (other, 1) has none.
        ingest.drift.baseline_for = lambda s, name, version, target: baseline if name == "m" else None
        bodies = [
            {
                "schema": 1,
                "model": {"name": "m", "version": "1"},
                "frames": {"ok": 120},
                "drift": summary(rng, 120, "normal"),
            }
            for _ in range(20)
        ]
        small = [{**b, "frames": {"ok": 30}, "drift": summary(rng, 30, "normal")} for b in bodies]
        rates = {}
        for label, model, sent in (("judged", "m", bodies), ("pooled", "m", small), ("stored only", "other", bodies)):
            msgs = [
                Message(
                    f"edgefleet/v1/{cams[i % 10]}/telemetry",
                    json.dumps({**sent[i % 20], "model": {"name": model, "version": "1"}}).encode(),
                    time.time(),
                )
                for i in range(messages)
            ]
            start = time.perf_counter()
            for i in range(0, messages, 50):  # the bridge hands over batches
                ingest.handle_batch(msgs[i : i + 50])
            rates[label] = messages / (time.perf_counter() - start)
        print(
            f"ingest: {rates['judged']:.0f} telemetry msg/s judged, {rates['pooled']:.0f} msg/s pooled (30 frames each), "
            f"{rates['stored only']:.0f} msg/s stored only; ratios {rates['judged'] / rates['stored only']:.2f}, "
            f"{rates['pooled'] / rates['stored only']:.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    noise(args.windows)
    cost(args.messages)
