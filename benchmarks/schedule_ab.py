"""A conv schedule rule against an earlier version of it, on whole models, in one process (issue 21).

For each model: `edgefleet compile --target x86_64` twice, once with the rules named by `--rules`
(default `Conv2dNCHWc`) taken from an earlier `compiler/schedules.py` (`--before`, e.g. `git show
HEAD~1:compiler/schedules.py`) and once with the current ones; then ONNX Runtime and the two x86-64-v4 libraries timed interleaved (order
rotated each round, one thread, camera runtime). On shared cores the medians move with the load, so
it prints both each runtime's best time (its least disturbed round) and the median of the per-round
ratio after / before.

    git show HEAD~1:compiler/schedules.py > /tmp/before_schedules.py
    python benchmarks/schedule_ab.py --before /tmp/before_schedules.py [--models squeezenet,resnet50] [--runs 40]
        [--rules Conv2dNCHWc,Generic]

`--without PASSES` builds "before" with those compiler/graph.py passes off instead (or as well), as
benchmarks/isa_variants.py's `--without` (`factory.option` for one keyword option): a graph rewrite
against the graph without it, the same way. TFLite models (names ending in `_tflite`) run against LiteRT.

    python benchmarks/schedule_ab.py --without block_remaining_convs.compact_float_outputs --models mobilenetv2_tflite
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa_variants import _without, source_model  # noqa: E402  (benchmarks/ is not a package)


def main() -> None:
    from edgefleet.compiler import schedules
    from edgefleet.compiler.bench import _ort_runner, _tflite_runner, _tvm_runner, onnx_gflop
    from edgefleet.compiler.compile import compile_model
    from edgefleet.compiler.verify import sample_inputs
    from edgefleet.package import open_package
    from edgefleet.signing import create_signing_key

    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="an earlier compiler/schedules.py")
    ap.add_argument("--models", default="squeezenet,resnet50,mobilenetv2,inception_v2")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rules", default="Conv2dNCHWc", help="rule classes of schedules.py taken from --before")
    ap.add_argument("--without", default="", help="graph.py passes (or factory.option) off in the build before")
    args = ap.parse_args()
    before = schedules
    if args.before:
        spec = importlib.util.spec_from_file_location("before_schedules", args.before)
        assert spec is not None and spec.loader is not None, args.before
        before = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(before)
    names = args.rules.split(",")
    rules = {label: {n: getattr(m, n) for n in names} for label, m in (("before", before), ("after", schedules))}
    with tempfile.TemporaryDirectory(prefix="edgefleet-ab-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        key = create_signing_key(work / "signing.key")
        for name in args.models.split(","):
            source = source_model(name, work)
            ref = "litert" if source.suffix == ".tflite" else "onnxruntime"
            runners = {ref: (_tflite_runner if ref == "litert" else _ort_runner)(source, 1)}
            for label, classes in rules.items():
                vars(schedules).update(classes)  # `rules()` reads the module's attributes at each compile
                off = args.without and label == "before"
                try:
                    with _without(args.without.split(",")) if off else contextlib.nullcontext():
                        result = compile_model(
                            str(source), "x86_64", output=work / f"{name}-{label}.tar.gz", key=key.path, quiet=True
                        )
                finally:
                    vars(schedules).update(rules["after"])
                pkg = stack.enter_context(open_package(result.package, [key.public]))
                listed = pkg.variants()
                assert listed is not None, "an x86_64 package lists its libraries"
                v4 = next(v for v in listed.variants if v.isa == "x86-64-v4")
                runners[label] = _tvm_runner(pkg.path(v4.library), 1)
                feeds = sample_inputs(pkg.manifest.inputs)
                inputs = [feeds[s.name] for s in pkg.manifest.inputs]
            outputs = {n: run(inputs)[0] for n, run in runners.items()}
            times: dict[str, list[float]] = {n: [] for n in runners}
            order, load, start = list(runners), os.getloadavg()[0], time.strftime("%H:%M", time.gmtime())
            for i in range(args.runs):
                for n in order[i % len(order) :] + order[: i % len(order)]:
                    times[n].append(runners[n](inputs)[1])
            gflop = (onnx_gflop(source) if ref == "onnxruntime" else None) or 0.0
            print(
                f"\n{name} ({gflop:.2f} GFLOP) {start} UTC, load {load:.1f} -> {os.getloadavg()[0]:.1f}, {args.runs} rounds"
            )
            ref_best = min(times[ref])
            for n, samples in times.items():
                per_round = statistics.median(t / b for t, b in zip(samples, times["before"]))
                diff = max(
                    float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                    for a, b in zip(outputs[n], outputs[ref])
                )
                print(
                    f"  {n:<12} best {min(samples) * 1e3:8.2f} ms ({min(samples) / ref_best:.2f} x {ref}, "
                    f"{gflop / min(samples):.0f} GFLOP/s)  median {statistics.median(samples) * 1e3:8.2f} ms  "
                    f"/ before per round {per_round:.3f}  max abs diff {diff:.1e}"
                )


if __name__ == "__main__":
    main()
