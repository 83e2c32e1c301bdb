"""Benchmark: CPU per job update stored, one by one (`apply_job_update`, as the MQTT ingest calls it
per message) against batched (`apply_job_updates`, one call per ingest batch), in one run.

In-process, SQLite in a temp dir: N devices, one rollout to all of them, each device's 7 update
states (idle ... committed) stored in ingest-sized batches of 500 messages, once each way on two
copies of the same fleet. Prints CPU ms per update for both and their ratio, and checks that both
ways end with every job committed and the same audit events.

    python benchmarks/fleet_job_updates.py --devices 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "agent_update"))
STATES = ("idle", "downloading", "verifying", "staged", "switching", "probation", "committed")
BATCH = 500  # fleet/bridge.py's ingest batch


def fleet_with_rollout(work: Path, n: int, v1: Path, v2: Path, key: Path):
    from edgefleet.fleet import registry, rollouts
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.db import Device

    sent: list[tuple[str, dict]] = []
    fleet = open_fleet(FleetConfig(data_dir=work, signing_key=key), notify=lambda d, p: sent.append((d, p)))
    for package in (v1, v2):
        version = registry.upload_package(fleet, package)
        registry.set_approval(fleet, version.group, version.version, "Approved")
    with fleet.writer() as s, s.begin():
        s.add_all(
            [
                Device(id=f"sim-{i:05d}", target="x86_64", group="b", model_name="tiny", model_version="1")
                for i in range(n)
            ]
        )
    rollouts.create_rollout(fleet, "tiny", "2", {"group": "b"}, {"canary_percent": 100, "waves": [100]})
    rollouts.tick(fleet)
    return fleet, sent


def updates(sent: list[tuple[str, dict]]):
    from edgefleet.contracts.mqtt import JobUpdate

    return [
        (device, job["job"], JobUpdate(id=uuid.uuid4().hex, job=job["job"], state=state, detail=""))
        for device, job in sent
        for state in STATES
    ]


def store(fleet, items, batched: bool) -> float:
    """CPU seconds to store `items` in batches of BATCH, one transaction each."""
    from edgefleet.fleet.rollouts import apply_job_update, apply_job_updates

    t0 = time.process_time()
    for i in range(0, len(items), BATCH):
        chunk = items[i : i + BATCH]
        with fleet.lock, fleet.writer() as s, s.begin():
            if batched:
                apply_job_updates(fleet, s, chunk)
            else:
                for device, job, update in chunk:
                    apply_job_update(fleet, s, device, job, update)
    return time.process_time() - t0


def outcome(fleet) -> tuple[set[str], int]:
    from sqlalchemy import func, select

    from edgefleet.fleet.db import Deployment, RolloutEvent

    with fleet.session() as s:
        states = set(s.scalars(select(Deployment.state)))
        return states, s.scalar(select(func.count(RolloutEvent.id)).where(RolloutEvent.device_id.is_not(None)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    os.environ["EDGEFLEET_HOME"] = str(work / "home")
    from tiny_models import compile_tiny

    from edgefleet.signing import create_signing_key

    key = create_signing_key(work / "keys" / "fleet.key").path
    v1, v2 = compile_tiny(work / "pkg", "good", "1", key), compile_tiny(work / "pkg", "good", "2", key)
    result = {"devices": args.devices, "updates": args.devices * len(STATES)}
    for way, batched in (("one_by_one", False), ("batched", True)):
        fleet, sent = fleet_with_rollout(work / way, args.devices, v1, v2, key)
        cpu = store(fleet, updates(sent), batched)
        states, events = outcome(fleet)
        assert states == {"committed"} and events == result["updates"], (way, states, events)
        result[f"{way}_cpu_ms_per_update"] = round(cpu / result["updates"] * 1000, 3)
    result["speedup"] = round(result["one_by_one_cpu_ms_per_update"] / result["batched_cpu_ms_per_update"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
