"""The camera runtime against the apache-tvm wheel's runtime, on the same package, in one run.

For MobileNetV2 compiled for x86_64, each runtime runs in a fresh process (one thread, spinning
off): start-up (import + load), the median of N inferences, peak resident memory, and the size
on disk of what a camera would install for it. Prints each figure and the ratio camera/wheel.

    .venv/bin/python benchmarks/runtime_footprint.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

CHILD = r"""
import json, re, statistics, sys, time
import numpy as np
kind, library, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec.
hwm_mb = lambda: int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
start = time.perf_counter()
if kind == "wheel":
    import tvm, tvm.runtime.vm
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(library), tvm.cpu())
    run = lambda: vm["main"](tvm.runtime.tensor(x)).numpy()
else:
    from pathlib import Path
    from edgefleet.agent.runtime import TvmModel
    model = TvmModel(Path(library))
    run = lambda: model.run([x])[0]
out = run()
startup = time.perf_counter() - start
times = []
for _ in range(runs):
    t0 = time.perf_counter()
    run()
    times.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"startup_s": startup, "median_ms": statistics.median(times), "rss_mb": hwm_mb(),
                  "checksum": float(np.abs(out).sum())}))
"""


def _tree_mb(*paths: Path) -> float:
    return sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file()) / 1e6


def _measure(kind: str, library: Path, runs: int) -> dict:
    # TVM_USE_RUNTIME_LIB: the wheel's own runtime-only mode, its best case for a camera.
    env = {**os.environ, "TVM_NUM_THREADS": "1", "TVM_THREAD_POOL_SPIN_COUNT": "0", "TVM_USE_RUNTIME_LIB": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(library), str(runs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    from edgefleet.compiler.compile import compile_model
    from edgefleet.models.mobilenetv2 import save
    from edgefleet.package import open_package
    from edgefleet.runtime_bundle import find_bundle
    from edgefleet.signing import create_signing_key

    bundle = find_bundle()
    with tempfile.TemporaryDirectory() as tmp:
        key = create_signing_key(Path(tmp) / "k.key")
        pkg = compile_model(
            str(save(Path(tmp) / "mobilenetv2.onnx")),
            "x86_64",
            output=Path(tmp) / "m.tar.gz",
            key=key.path,
            verify=False,
            quiet=True,
        ).package
        with open_package(pkg, None) as opened:
            results: dict[str, dict] = {}
            for kind in (
                "wheel",
                "camera",
                "wheel",
                "camera",
            ):  # the first pair warms the page cache; the second is kept
                results[kind] = _measure(kind, opened.library, args.runs)
    tvm_dir = Path(find_spec("tvm").submodule_search_locations[0])
    ffi_dir = Path(find_spec("tvm_ffi").submodule_search_locations[0])
    sizes = {"wheel": _tree_mb(tvm_dir, ffi_dir), "camera": _tree_mb(bundle.lib)}
    print(
        f"MobileNetV2 x86_64 package, 1 thread, {args.runs} runs; camera runtime {bundle.info.key} ({bundle.info.describe()})"
    )
    print(f"{'':<22} {'apache-tvm wheel':>17} {'camera runtime':>15} {'camera/wheel':>13}")
    rows = [
        ("installed size MB", sizes["wheel"], sizes["camera"]),
        ("start-up s", results["wheel"]["startup_s"], results["camera"]["startup_s"]),
        ("inference median ms", results["wheel"]["median_ms"], results["camera"]["median_ms"]),
        ("peak RSS MB", results["wheel"]["rss_mb"], results["camera"]["rss_mb"]),
    ]
    for name, wheel, camera in rows:
        print(f"{name:<22} {wheel:>17.2f} {camera:>15.2f} {camera / wheel:>12.2f}x")
    same = abs(results["wheel"]["checksum"] - results["camera"]["checksum"]) <= 1e-3 * abs(results["wheel"]["checksum"])
    print(
        f"outputs agree: {same} (sum |out| {results['wheel']['checksum']:.6g} vs {results['camera']['checksum']:.6g})"
    )


if __name__ == "__main__":
    main()
