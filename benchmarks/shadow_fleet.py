"""Benchmark: the fleet's cost of shadow reports, against telemetry measured in the same run.

One process, the fleet library on SQLite (or `--postgres`, a throwaway server as in the tests):
`--devices` simulated devices in one shadow rollout (its rows written directly: no packages,
no broker), then `--messages` ShadowReports and as many telemetry messages, each kind through
the MQTT ingest's `handle_batch` in batches of 500 (as the bridge batches them). Prints the
ingest CPU per message of each kind and their ratio, then the time of the shadow view (GET
/rollouts/{id}/shadow: sums per group, the series, the gate) over all the stored reports.

    python benchmarks/shadow_fleet.py --messages 20000 --devices 100 [--postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from edgefleet.fleet import devices as fleet_devices  # noqa: E402
from edgefleet.fleet.config import FleetConfig  # noqa: E402
from edgefleet.fleet.core import open_fleet  # noqa: E402
from edgefleet.fleet.db import Deployment, ModelGroup, ModelVersion, Rollout  # noqa: E402
from edgefleet.fleet.drift_service import DriftMonitor  # noqa: E402
from edgefleet.fleet.ingest import Ingest, Message  # noqa: E402
from edgefleet.fleet.shadow import shadow_view  # noqa: E402

BATCH = 500


def shadow_rollout(fleet, ids: list[str]) -> int:
    """A shadow rollout of tiny 2 on `ids` with a shadow_install job per device; returns its id."""
    with fleet.writer() as s, s.begin():
        group = ModelGroup(name="tiny")
        s.add(group)
        s.flush()
        version = ModelVersion(group_id=group.id, version="2", approval="Approved")
        s.add(version)
        s.flush()
        plan = {"mode": "shadow"}
        r = Rollout(model_version_id=version.id, selection={}, plan=plan, devices=ids, state="shadowing", wave=0)
        s.add(r)
        s.flush()
        s.add_all(
            Deployment(job_id=f"sh-{d}", rollout_id=r.id, device_id=d, kind="shadow_install", wave=0) for d in ids
        )
        return r.id


def shadow_body(device: str, rollout: int, i: int) -> dict:
    return {
        "schema": 1,
        "id": uuid.uuid4().hex,
        "device": device,
        "job": f"sh-{device}",
        "rollout": rollout,
        "window_s": 60.0,
        "active": {"name": "tiny", "version": "1"},
        "candidate": {"name": "tiny", "version": "2"},
        "frames_seen": 300,
        "agreement": {"task": "classification", "frames": 75, "agree": 70 - i % 5},
        "active_latency_ms": {"count": 300, "p50": 10.0, "p95": 15.0},
        "candidate_latency_ms": {"count": 75, "p50": 12.0, "p95": 18.0},
        "active_confidence": 0.9,
        "candidate_confidence": 0.85,
        "candidate_cpu_share": 0.1,
    }


def telemetry_body(device: str, i: int) -> dict:
    return {
        "schema": 1,
        "id": uuid.uuid4().hex,
        "model": {"name": "tiny", "version": "1"},
        "frames": {"ok": 300},
        "alerts": {"person": i % 3},
        "latency_ms": {"count": 300, "p50": 10.0, "p95": 15.0},
    }


def ingest_cpu_ms(ingest: Ingest, messages: list[Message]) -> float:
    """CPU milliseconds per message (this process: parsing, SQL building, the SQLite engine)."""
    start = time.process_time()
    for i in range(0, len(messages), BATCH):
        ingest.handle_batch(messages[i : i + BATCH])
    return (time.process_time() - start) * 1000 / len(messages)


def run(database_url: str | None, n: int, n_devices: int, root: Path) -> None:
    fleet = open_fleet(FleetConfig(data_dir=root / "fleet", database_url=database_url), notify=lambda *a: None)
    ids = [f"cam-{i:04d}" for i in range(n_devices)]
    for d in ids:
        fleet_devices.register_device(fleet, d, "x86_64", group=f"g{int(d[4:]) % 4}")
    rid = shadow_rollout(fleet, ids)
    ingest = Ingest(fleet)
    now = time.time()

    def message(kind: str, i: int) -> Message:
        device = ids[i % n_devices]
        body = shadow_body(device, rid, i) if kind == "shadow" else telemetry_body(device, i)
        return Message(f"edgefleet/v1/{device}/{kind}", json.dumps(body).encode(), now + i * 0.001)

    telemetry_ms = ingest_cpu_ms(ingest, [message("telemetry", i) for i in range(n)])
    shadow_ms = ingest_cpu_ms(ingest, [message("shadow", i) for i in range(n)])
    assert ingest.counters["shadow"] == n and ingest.counters["telemetry"] == n, ingest.counters
    monitor = DriftMonitor(fleet)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        view = shadow_view(fleet, monitor, rid)
        times.append(time.perf_counter() - start)
    assert view.total.reports == n
    name = "postgresql" if database_url else "sqlite"
    print(f"{name}: {n} messages of each kind, {n_devices} devices in 4 groups")
    print(f"  ingest CPU per message: telemetry {telemetry_ms:.3f} ms, shadow report {shadow_ms:.3f} ms")
    print(f"  ratio shadow / telemetry: {shadow_ms / telemetry_ms:.2f}")
    print(
        f"  shadow view over {n} reports: best {min(times) * 1000:.0f} ms of 3 ({view.total.agreement:.4f} agreement)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(None, args.messages, args.devices, Path(tmp) / "sqlite")
        if args.postgres:
            from support.postgres import create_database, temporary_postgres

            with contextlib.ExitStack() as stack:
                server = stack.enter_context(temporary_postgres())
                run(create_database(server, "shadow_bench"), args.messages, args.devices, Path(tmp) / "pg")


if __name__ == "__main__":
    main()
