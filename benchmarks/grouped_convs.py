"""Grouped convolutions with and without their blocked schedule, against ONNX Runtime (issue 21).

For the grouped test nets (tests/support/torch_models.py: `grouped`, `shufflenet`), build
edgefleet's pipeline four times: "before" with the grouped rule (`schedules._grouped`), the
blocked channel shuffle (`graph.channel_shuffle_groups`) and the blocked multiplier conv
(`graph.blocked_multiplier`) switched off (the generic rule schedules grouped kernels, the
shuffle and the multiplier conv run in NCHW); "rule" with the grouped rule only; "single" with
all three but one output-channel block per register tile (`schedules.output_tile` never pairs
two); "after" with all of it. Each is checked against ONNX Runtime's output, then ORT and the
four are timed interleaved in one process at the same thread count. `--target` is `ml_c6i`
(AVX-512, where tiles pair) by default; `--models` also takes the benchmarks' other models
(`light_shufflenet`: the real ShuffleNet v1).

    python benchmarks/grouped_convs.py [--threads 1] [--runs 40] [--target ml_c6i] [--models grouped,shufflenet]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
from latency import compile_vm, model_path


def _first(out):
    import tvm

    return (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()


@contextlib.contextmanager
def _switched_off(module, *names: str):
    """`module`'s functions `names` answer None / False (the step they gate is skipped) inside the block."""
    saved = {n: getattr(module, n) for n in names}
    try:
        for n in names:
            setattr(module, n, lambda *_a: None)
        yield
    finally:
        for n, f in saved.items():
            setattr(module, n, f)


def main() -> None:
    import tvm

    from edgefleet.compiler import graph, schedules
    from edgefleet.compiler.targets import resolve_target

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--target", default="ml_c6i")
    ap.add_argument("--models", default="grouped,shufflenet")
    args = ap.parse_args()
    tvm.get_global_func("runtime.config_threadpool")(1, args.threads)
    target = resolve_target(args.target)
    print(f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = model_path(name, Path(tmp))
            model = onnx.load(str(path))
            inits = {i.name for i in model.graph.initializer}
            spec = next(i for i in model.graph.input if i.name not in inits)  # old models list weights too
            shape = [d.dim_value for d in spec.type.tensor_type.shape.dim]
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            xt = tvm.runtime.tensor(x)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = args.threads, 1, 3
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {spec.name: x}
            want = sess.run(None, feed)[0]
            after, _ = compile_vm(model, target, stock=False)
            with mock.patch.object(schedules, "MIN_PAIR_TILE", 1 << 30):
                single, _ = compile_vm(model, target, stock=False)
            with _switched_off(graph, "channel_shuffle_groups", "blocked_multiplier"):
                rule, _ = compile_vm(model, target, stock=False)
                with _switched_off(schedules, "_grouped"):
                    before, _ = compile_vm(model, target, stock=False)
            variants = (("before", before), ("rule", rule), ("single", single), ("after", after))
            for label, vm in variants:
                diff = float(np.abs(_first(vm(xt)) - want).max())
                np.testing.assert_allclose(_first(vm(xt)), want, rtol=1e-3, atol=1e-3, err_msg=f"{name} {label}")
                print(f"{name} {label}: max abs diff to ORT {diff:.1e} (outputs up to {float(np.abs(want).max()):.2f})")
            runners = {"ort": lambda s=sess, f=feed: s.run(None, f)}
            runners.update({label: (lambda v=vm, t=xt: v(t)) for label, vm in variants})
            times: dict[str, list[float]] = {k: [] for k in runners}
            for _ in range(args.runs):
                for k, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - start)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            ratios = ", ".join(f"{k} {med[k]:.2f} ms ({med[k] / med['ort']:.2f}x ORT)" for k, _ in variants)
            print(f"{name}: ORT {med['ort']:.2f} ms, {ratios}; load average {os.getloadavg()[0]:.1f}")
            # Spread: quartiles of the per-round ratios (a round runs all five back to back).
            for k, _ in variants:
                q1, _, q3 = statistics.quantiles([t / o for t, o in zip(times[k], times["ort"])], n=4)
                print(f"  {name} {k}: per-round x ORT quartiles {q1:.2f}-{q3:.2f}")


if __name__ == "__main__":
    main()
