"""What recording alert events costs the fleet's ingest, measured in one run.

5,000 alerts (a box and a snapshot reference each) go through `Ingest.handle_batch` in batches of
500 on a fresh SQLite fleet, alternately with the alert-event hook (fleet/alert_events.py
`observe`) on and switched off, five times each; prints the median alerts per second of both
and their ratio (with events / without).

    .venv/bin/python benchmarks/alert_events_ingest.py [--alerts 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path


def alert(i: int) -> bytes:
    return json.dumps(
        {
            "schema": 1,
            "id": f"a{i}",
            "device": "cam-1",
            "label": "person",
            "score": 0.9,
            "consecutive": 1,
            "source": "s",
            "frame": f"f{i}",
            "model": {"name": "det", "version": "1"},
            "latency_ms": 3.0,
            "detections": [{"label": "person", "score": 0.9, "box": [0.1, 0.1, 0.5, 0.5], "box_px": [10, 10, 50, 50]}],
            "frame_size": [640, 480],
            "snapshot": {
                "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
                "size": 9000,
                "width": 640,
                "height": 360,
            },
        }
    ).encode()


def rate(n: int, record: bool) -> float:
    """Alerts per second through a fresh fleet's ingest."""
    from edgefleet.fleet import alert_events, devices
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.ingest import Ingest, Message

    root = Path(tempfile.mkdtemp(prefix="alert-bench-"))
    fleet = open_fleet(FleetConfig(data_dir=root, signing_key=root / "none.key"))
    devices.register_device(fleet, "cam-1", "x86_64")
    ingest = Ingest(fleet)
    messages = [Message("edgefleet/v1/cam-1/alerts", alert(i), 1e9 + i) for i in range(n)]
    hook = alert_events.observe
    if not record:
        alert_events.observe = lambda *args: None  # the fleet before alert events: alerts only counted
    try:
        start = time.perf_counter()
        for k in range(0, n, 500):
            ingest.handle_batch(messages[k : k + 500])
        return n / (time.perf_counter() - start)
    finally:
        alert_events.observe = hook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    without, with_events = [], []
    for _ in range(args.rounds):
        without.append(rate(args.alerts, False))
        with_events.append(rate(args.alerts, True))
    off, on = statistics.median(without), statistics.median(with_events)
    print(f"alerts/s (median of {args.rounds}): without events {off:.0f}, with events {on:.0f}, ratio {on / off:.2f}")


if __name__ == "__main__":
    main()
