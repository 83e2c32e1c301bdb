"""Where a compiled model's time goes, kernel by kernel, for each x86 ISA level (issue 21).

For each model and ISA level (the libraries of an `x86_64` package: x86-64-v3 = AVX2,
x86-64-v4 = AVX-512): edgefleet's CPU pipeline up to the scheduled kernels, then each kernel
built alone and timed with TVM's `time_evaluator` on random inputs of its shapes (best of 5
repeats), times the number of calls in the model. Prints the top kernels with their share of the
model's kernel time. `--ort` also prints ONNX Runtime's own per-node profile of the same model
(1 thread), the nodes to compare with. Kernels are timed alone, so their caches are warm: the
shares say where the time goes, the sum is below an end-to-end run.

    python benchmarks/kernel_profile.py [--models shufflenet,squeezenet,mobilenetv2,resnet50]
        [--isa x86-64-v4,x86-64-v3] [--top 3] [--ort] [--without PASS,... [--rounds 6]]

`--without` builds the kernels twice, the second time without those passes of compiler/graph.py
(as benchmarks/isa_variants.py's `--without`), and times both sets in alternate rounds, the best
round per kernel: a same-load A/B of a graph pass on a busy machine.

TFLite models (names of benchmarks/arm_instructions.py ending in `_tflite`, e.g.
`mobilenetv2_int8_tflite`) go through the TFLite importer; `--isa` also takes an LLVM CPU
(`icelake-server`, ml_c6i's: AVX-512 VNNI) besides the ISA levels.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import model_path  # noqa: E402  (benchmarks/ is not a package)


def _relax(path: Path):
    """The model at `path` (.onnx or .tflite) imported as a Relax module."""
    if path.suffix == ".tflite":
        from edgefleet.compiler.frontends import tflite

        model = tflite.load(path)
        return tflite.to_relax(model, tflite.input_specs(model, {}))
    from edgefleet.compiler.frontends.onnx import input_specs, to_relax

    model = onnx.load(str(path))
    return to_relax(model, input_specs(model, {}))


def scheduled_kernels(path: Path, isa: str):
    """The model's Relax module after the default schedules (before lowering) and its target."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from edgefleet.compiler.build import KernelFallbacks, _optimize_pipeline, tvm_target
    from edgefleet.compiler.targets import ISA_LEVELS, resolve_target

    raw = ISA_LEVELS[isa].tvm_target if isa in ISA_LEVELS else {"mtriple": "x86_64-linux-gnu", "mcpu": isa}
    target = resolve_target(json.dumps({"kind": "llvm", **raw}))
    lowering = cpu.dataflow_lower_passes, cpu.finalize_passes
    # Stop before lowering: the kernels keep their buffer shapes and the calls stay call_tir.
    cpu.dataflow_lower_passes = cpu.finalize_passes = lambda _t: []
    try:
        with tvm_target(target):
            mod = _optimize_pipeline(target, 0, KernelFallbacks(lambda _m: None))(_relax(path))
    finally:
        cpu.dataflow_lower_passes, cpu.finalize_passes = lowering
    return mod, tvm_target(target)


def kernel_times(mod, tgt, number: int = 20, repeat: int = 5) -> list[tuple[float, int, str]]:
    """(ms per call, calls, kernel) for every kernel the model's main function calls: the best of
    `repeat` means of `number` calls."""
    return [
        (min(timer(*args).results) * 1e3, n, name) for name, n, timer, args in timed_kernels(mod, tgt, number, repeat)
    ]


def timed_kernels(mod, tgt, number: int = 20, repeat: int = 5, load=None) -> list[tuple[str, int, object, list]]:
    """(kernel, calls, its time_evaluator, random arguments of its shapes) for every kernel the model's main
    function calls, each built alone; `load(executable, kernel)` makes the runnable module (default: jit)."""
    import tvm
    from tvm import relax

    calls: collections.Counter[str] = collections.Counter()
    shapes: dict[str, list] = {}

    def visit(expr) -> None:
        kinds = ("relax.call_tir", "relax.call_tir_inplace")
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in kinds:
            name = expr.args[0].name_hint
            calls[name] += 1
            out = expr.ty
            # An in-place call's output is one of its arguments (a concat's part written into it).
            outs = [] if expr.op.name == "relax.call_tir_inplace" else list(getattr(out, "fields", [out]))
            tensors = [a.ty for a in expr.args[1].fields] + outs
            shapes[name] = [([int(d) for d in t.shape], str(t.dtype)) for t in tensors]

    relax.analysis.post_order_visit(mod["main"], visit)
    dev, rng, rows = tvm.cpu(), np.random.default_rng(0), []
    for gv, func in mod.functions.items():
        if gv.name_hint not in calls:
            continue
        lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tgt)
        lib = load(lib, gv.name_hint) if load else lib.jit()
        args = [tvm.runtime.tensor(rng.random(s).astype(d), dev) for s, d in shapes[gv.name_hint]]
        timer = lib.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=20 if number > 1 else 0)
        rows.append((gv.name_hint, calls[gv.name_hint], timer, args))
    return rows


def without_ab(path: Path, isa: str, passes: list[str], rounds: int) -> None:
    """The model's kernels with and without the graph.py `passes`, timed in alternate rounds (the best
    of all rounds per kernel): the sums and their ratio, and the kernels that moved most."""
    from isa_variants import _without

    with_ = timed_kernels(*scheduled_kernels(path, isa), repeat=3)
    with _without(passes):
        without = timed_kernels(*scheduled_kernels(path, isa), repeat=3)
    best: dict[str, dict[str, float]] = {"with": {}, "without": {}}
    load = os.getloadavg()[0]
    for r in range(rounds):
        for tag, kernels in [("with", with_), ("without", without)][:: 1 if r % 2 == 0 else -1]:
            for name, n, timer, args in kernels:
                ms = min(timer(*args).results) * 1e3 * n
                best[tag][name] = min(best[tag].get(name, ms), ms)
    total = {tag: sum(times.values()) for tag, times in best.items()}
    print(
        f"\n{path.stem} {isa}: kernels {total['with']:.4f} ms, without {','.join(passes)} {total['without']:.4f} ms, "
        f"ratio {total['with'] / total['without']:.3f}; best of {rounds} rounds; load {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    for tag, times in best.items():
        for name, ms in sorted(times.items(), key=lambda kv: -kv[1])[:6]:
            print(f"  {tag:<8} {ms:8.4f} ms  {name[:90]}")


def ort_node_times(path: Path, name: str, x: np.ndarray, runs: int = 50) -> list[tuple[float, str]]:
    """(median ms, node) from ONNX Runtime's profiler, 1 thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.enable_profiling, opts.profile_file_prefix = True, str(path.parent / "ort-profile")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    nodes: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            nodes[f"{e['args'].get('op_name')} {e['name'].removesuffix('_kernel_time')}"].append(e["dur"] / 1e3)
    return sorted(((float(np.median(v)), k) for k, v in nodes.items()), reverse=True)


def _model(name: str, work: Path) -> Path:
    if name.endswith("_tflite"):
        from arm_instructions import make_model

        return make_model(name, work)
    return model_path(name, work)


def main() -> None:
    import tvm

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="shufflenet,squeezenet,mobilenetv2,resnet50")
    ap.add_argument("--isa", default="x86-64-v4,x86-64-v3")
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--ort", action="store_true", help="also ONNX Runtime's per-node profile")
    ap.add_argument("--without", default="", help="graph.py passes: time the kernels with and without them instead")
    ap.add_argument("--rounds", type=int, default=6, help="alternate rounds of --without")
    args = ap.parse_args()
    tvm.get_global_func("runtime.config_threadpool")(1, 1)
    with tempfile.TemporaryDirectory(prefix="edgefleet-profile-") as tmp:
        for name in args.models.split(","):
            path = _model(name, Path(tmp))
            for isa in args.isa.split(","):
                if args.without:
                    without_ab(path, isa, args.without.split(","), args.rounds)
                    continue
                load = os.getloadavg()[0]
                rows = sorted(kernel_times(*scheduled_kernels(path, isa)), key=lambda r: -r[0] * r[1])
                total = sum(ms * n for ms, n, _ in rows)
                print(
                    f"\n{name} {isa}: {len(rows)} kernels, {total:.3f} ms in all; load {load:.1f} -> {os.getloadavg()[0]:.1f}"
                )
                for ms, n, kernel in rows[: args.top]:
                    print(f"  {ms * n / total:6.1%} {ms * n:8.3f} ms  {n} x {ms:.3f} ms  {kernel}")
            if args.ort:
                model = onnx.load(str(path))
                inits = {i.name for i in model.graph.initializer}
                spec = next(i for i in model.graph.input if i.name not in inits)  # old models list weights too
                dims = [d.dim_value for d in spec.type.tensor_type.shape.dim]
                nodes = ort_node_times(path, spec.name, np.random.default_rng(0).random(dims, dtype=np.float32))
                total = sum(ms for ms, _ in nodes)
                print(f"\n{name} onnxruntime: {len(nodes)} nodes, {total:.3f} ms in all")
                for ms, node in nodes[: args.top]:
                    print(f"  {ms / total:6.1%} {ms:8.3f} ms  {node}")


if __name__ == "__main__":
    main()
