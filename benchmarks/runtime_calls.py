"""A small model's time outside its kernels on the camera runtime (issues 21 and 22).

For each model: an `x86_64` package as compiled now (the Relax VM compiled, compiler/build.py
`_exec_mode`, and a static run plan where the model allows one, compiler/static_plan.py) and one
with the VM as bytecode; then, in one process on the camera runtime (no TVM Python, as on a camera),
the best library this CPU runs of each: the compiled one on its plan ("plan") and on its VM
("compiled"), the bytecode one on its VM, each through `TvmModel.run` and through the `ef_model_run`
call alone (with the ctypes arguments `run` keeps, the outputs copied into kept arrays: the
difference is Python's marshalling and the output arrays' allocation), and ONNX Runtime / LiteRT on
the same input, one thread, interleaved, the order rotating every round. Prints medians, each one's ratio to the reference
(median and quartiles of the per-round ratios) and the load average around the timing.

    python benchmarks/runtime_calls.py [--models mobilenetv2_035_int8_tflite,shufflenet] [--runs 3000]

Compare with the sum of the kernels timed alone (`benchmarks/kernel_profile.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _best_library(package: Path, key, out: Path) -> None:
    """Copy the package's best library this CPU runs (variants.json lists the best first) to `out`."""
    from edgefleet.agent.variants import cpu_flags
    from edgefleet.package import open_package

    with open_package(package, [key.public]) as pkg:
        best = next(v for v in pkg.variants().variants if set(v.cpu_features) <= cpu_flags())
        shutil.copy(pkg.path(best.library), out)


def prepare(name: str, work: Path) -> Path:
    """The model's source, its input (input.npy) and its two libraries (compiled.so, bytecode.so) in `work`."""
    from isa_variants import _bytecode_vm, source_model

    from edgefleet.compiler.compile import compile_model
    from edgefleet.compiler.verify import sample_inputs
    from edgefleet.signing import create_signing_key

    key = create_signing_key(work / "signing.key")
    source = source_model(name, work)
    for vm in ("compiled", "bytecode"):
        with _bytecode_vm() if vm == "bytecode" else contextlib.nullcontext():
            result = compile_model(str(source), "x86_64", output=work / f"{vm}.tar.gz", key=key.path, quiet=True)
        _best_library(result.package, key, work / f"{vm}.so")
    (spec,) = result.manifest.inputs  # the models here have one input
    np.save(work / "input.npy", sample_inputs([spec])[spec.name])
    return source


def time_calls(work: Path, source: Path, runs: int) -> None:
    """In this process (which must not import TVM): the timing described above."""
    from edgefleet.agent.runtime import TvmModel
    from edgefleet.compiler.bench import _ort_runner, _tflite_runner

    x = [np.load(work / "input.npy")]
    reference = "litert" if source.suffix == ".tflite" else "onnxruntime"
    timed = {reference: (_tflite_runner if reference == "litert" else _ort_runner)(source, 1)}
    for vm, plan in (("compiled", True), ("compiled", False), ("bytecode", False)):
        model = TvmModel(work / f"{vm}.so")
        runs_on = "plan" if model.use_plan(plan) else vm
        if f"{runs_on} run" in timed:  # a model without a plan: its compiled VM is timed once
            continue
        model.run(x)
        # The outputs copied into arrays kept here, as `run` copies them into fresh ones.
        arguments = model._arguments.pointing_at(x) + model._outputs.pointing_at(model._outputs.fresh())
        timed[f"{runs_on} run"] = _clocked(lambda m=model: m.run(x))
        timed[f"{runs_on} ef_model_run"] = _clocked(lambda m=model, a=arguments: m._rt.api.ef_model_run(m._handle, *a))
    times: dict[str, list[float]] = {n: [] for n in timed}
    order = list(timed)
    for n in order * 50:  # warm-up
        timed[n](x)
    load_before = os.getloadavg()[0]
    for i in range(runs):
        for n in order[i % len(order) :] + order[: i % len(order)]:
            times[n].append(timed[n](x)[1])
    load_after = os.getloadavg()[0]
    print(f"\n{source.name}: load average {load_before:.2f} -> {load_after:.2f}, 1 thread, {runs} rounds")
    print(f"  {'runtime':<22} {'median ms':>9} {'/ ' + reference:>14} {'quartiles':>11}")
    for n, samples in times.items():
        q1, ratio, q3 = statistics.quantiles([t / r for t, r in zip(samples, times[reference])], n=4)
        print(f"  {n:<22} {statistics.median(samples) * 1e3:9.4f} {ratio:14.3f} {q1:5.3f}-{q3:<5.3f}")


def _clocked(call):
    def timed(_x):
        start = time.perf_counter()
        call()
        return None, time.perf_counter() - start

    return timed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mobilenetv2_035_int8_tflite")
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--time", nargs=2, metavar=("WORK", "SOURCE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.time:
        time_calls(Path(args.time[0]), Path(args.time[1]), args.runs)
        return
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="edgefleet-calls-") as tmp:
            source = prepare(name, Path(tmp))
            # The camera runtime cannot load in a process that imported the compiler.
            command = [sys.executable, __file__, "--time", tmp, str(source), "--runs", str(args.runs)]
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
