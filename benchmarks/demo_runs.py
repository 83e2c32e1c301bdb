"""The demo, N times in a row: does the v2 rollout ever abort by chance, and how fast is a darkened
camera's drift alarm raised and cleared?

Each run is `edgefleet demo --exit-after-rollouts` (run_demo) in one work folder, so the trained
models and compiled packages of the first run are reused; the fleet, broker and cameras start
afresh every time. Prints one line per run and a summary.

    .venv/bin/python benchmarks/demo_runs.py [--runs 5] [--workdir /tmp/edgefleet-demo-runs] [--fps 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edgefleet.demo import DemoOptions, run_demo


def one_run(workdir: Path, fps: float) -> dict:
    start = time.monotonic()
    try:
        result = run_demo(
            DemoOptions(workdir, devices=3, http_port=0, mqtt_port=0, frames_per_second=fps, exit_after_rollouts=True)
        )
        error = None
    except Exception as exc:  # a failed run is a result here, not the end of the benchmark
        result, error = None, f"{type(exc).__name__}: {exc}"[:300]
    return {
        "seconds": round(time.monotonic() - start),
        "error": error,
        "rollouts": [r["state"] for r in result.rollouts] if result else [],
        "reasons": [r.get("reason") for r in result.rollouts] if result else [],
        "drift": result.drift if result else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--fps", type=float, default=5.0)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-runs-"))
    runs = []
    for i in range(args.runs):
        run = one_run(workdir, args.fps)
        runs.append(run)
        print(f"RUN {i + 1}: {run}", flush=True)
    ok = [r for r in runs if r["rollouts"] == ["succeeded", "succeeded"]]
    drift = [r["drift"] for r in runs if r["drift"]]
    print(
        f"SUMMARY: {len(ok)} of {len(runs)} runs with both rollouts succeeded; "
        f"v2 aborted in {sum(r['rollouts'][1:] == ['aborted'] for r in runs)}; errors {sum(bool(r['error']) for r in runs)}"
    )
    if drift:
        raise_s, clear_s = [d["raised_after_s"] for d in drift], [d["cleared_after_s"] for d in drift]
        print(
            f"SUMMARY: drift alarm raised after {min(raise_s):.0f}-{max(raise_s):.0f} s, cleared after "
            f"{min(clear_s):.0f}-{max(clear_s):.0f} s ({len(drift)} runs); false alarms on normal cameras: "
            f"{sum(d['false_alarms'] for d in drift)}"
        )


if __name__ == "__main__":
    main()
