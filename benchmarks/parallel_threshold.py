"""Which kernels gain from a second thread (issue 21): every kernel of a model at 2 threads, its
outer loop parallel vs serial.

For each model: edgefleet's CPU pipeline up to the scheduled kernels twice, once with every kernel's
outer loops parallel (`schedules.PARALLEL_MIN_WORK` = 0, as before the threshold) and once with
none; each kernel built alone both ways and timed on random inputs of its shapes at 2 threads with
TVM's pool not spinning (TVM_THREAD_POOL_SPIN_COUNT=0 and TVM_NUM_THREADS=2, set before the pool
starts, as the camera runtime does). The two builds of a kernel alternate in each of `--rounds`
rounds; the medians are printed, sorted by the kernel's work (its largest block's iterations:
multiply-adds for a convolution, elements for element-wise work; `schedules.block_work`), with
serial / parallel: above 1 the second thread gains. Kernels whose two builds are the same (no
loop the threshold governs) are left out. The threshold is the work above which the ratio stays
above 1.

    python benchmarks/parallel_threshold.py [--models squeezenet,light_shufflenet] [--isa x86-64-v4]
        [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_profile import _model, scheduled_kernels  # noqa: E402  (benchmarks/ is not a package)


def kernel_args(mod) -> dict[str, list]:
    """Argument shapes and dtypes of each kernel the model's main function calls."""
    import tvm
    from tvm import relax

    shapes: dict[str, list] = {}

    def visit(expr) -> None:
        kinds = ("relax.call_tir", "relax.call_tir_inplace")
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in kinds:
            outs = [] if expr.op.name == "relax.call_tir_inplace" else list(getattr(expr.ty, "fields", [expr.ty]))
            tensors = [a.ty for a in expr.args[1].fields] + outs
            shapes[expr.args[0].name_hint] = [([int(d) for d in t.shape], str(t.dtype)) for t in tensors]

    relax.analysis.post_order_visit(mod["main"], visit)
    return shapes


def kernel_work(func) -> int:
    from tvm import s_tir

    from edgefleet.compiler import schedules

    sch = s_tir.Schedule(func)
    return max((schedules.block_work(sch, b) or 0 for b in schedules._blocks(sch)), default=0)


def builds(path: Path, isa: str) -> list[tuple[int, str, dict]]:
    """(work, kernel, {"parallel": (module, args), "serial": ...}) for each kernel the threshold governs."""
    import tvm

    from edgefleet.compiler import schedules

    variants = {}
    for label, threshold in (("parallel", 0), ("serial", 2**62)):
        schedules.PARALLEL_MIN_WORK = threshold
        variants[label] = scheduled_kernels(path, isa)
    shapes = kernel_args(variants["parallel"][0])
    dev, rng, rows = tvm.cpu(), np.random.default_rng(0), []
    for name in sorted(shapes):
        funcs = {label: mod[name] for label, (mod, _) in variants.items()}
        if funcs["parallel"].script() == funcs["serial"].script():
            continue
        args = [tvm.runtime.tensor(rng.random(s).astype(d), dev) for s, d in shapes[name]]
        libs = {
            label: tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=variants[label][1])
            for label, f in funcs.items()
        }
        rows.append((kernel_work(funcs["serial"]), name, {k: (lib.jit(), args) for k, lib in libs.items()}))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="squeezenet,light_shufflenet")
    ap.add_argument("--isa", default="x86-64-v4")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    # Read once, when TVM's pool first starts: before anything runs a kernel.
    os.environ["TVM_THREAD_POOL_SPIN_COUNT"], os.environ["TVM_NUM_THREADS"] = "0", "2"
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, 2)
    dev = tvm.cpu()
    with tempfile.TemporaryDirectory(prefix="edgefleet-threshold-") as tmp:
        for name in args.models.split(","):
            rows = builds(_model(name, Path(tmp)), args.isa)
            load = os.getloadavg()[0]
            times: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for _work, kernel, libs in rows:
                    for label, (lib, kargs) in libs.items():
                        timer = lib.time_evaluator("main", dev, number=1, repeat=3, min_repeat_ms=5)
                        times.setdefault((kernel, label), []).append(statistics.median(timer(*kargs).results))
            print(f"\n{name} {args.isa}, 2 threads, spinning off; load {load:.1f} -> {os.getloadavg()[0]:.1f}")
            print(f"  {'work':>12} {'serial us':>10} {'parallel us':>12} {'ser/par':>8}  kernel")
            for work, kernel, _ in sorted(rows):
                ser, par = (statistics.median(times[(kernel, k)]) * 1e6 for k in ("serial", "parallel"))
                print(f"  {work:12d} {ser:10.1f} {par:12.1f} {ser / par:8.2f}  {kernel}")


if __name__ == "__main__":
    main()
