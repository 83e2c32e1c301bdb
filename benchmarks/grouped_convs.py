"""Grouped convolutions with and without their blocked schedule, against ONNX Runtime (issue 21).

For the grouped test nets (tests/support/torch_models.py: `grouped`, `shufflenet`), build
edgefleet's pipeline twice, with the grouped rule (`schedules._grouped`) and with it switched
off ("before": the generic rule schedules the kernel), check both against ONNX Runtime's
output, then time ORT, before and after interleaved in one process at the same thread count.

    python benchmarks/grouped_convs.py [--threads 1] [--runs 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from latency import compile_vm, model_path


def _first(out):
    import tvm

    return (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()


def main() -> None:
    import tvm

    from edgefleet.compiler import schedules
    from edgefleet.compiler.targets import resolve_target

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    tvm.get_global_func("runtime.config_threadpool")(1, args.threads)
    target = resolve_target("ml_c6i")
    print(f"{args.threads} thread(s); load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("grouped", "shufflenet"):
            path = model_path(name, Path(tmp))
            model = onnx.load(str(path))
            shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            xt = tvm.runtime.tensor(x)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = args.threads, 1, 3
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {model.graph.input[0].name: x}
            want = sess.run(None, feed)[0]
            after, _ = compile_vm(model, target, stock=False)
            rule = schedules._grouped
            schedules._grouped = lambda *_a: None
            try:
                before, _ = compile_vm(model, target, stock=False)
            finally:
                schedules._grouped = rule
            for label, vm in (("before", before), ("after", after)):
                diff = float(np.abs(_first(vm(xt)) - want).max())
                np.testing.assert_allclose(_first(vm(xt)), want, rtol=1e-3, atol=1e-3, err_msg=f"{name} {label}")
                print(f"{name} {label}: max abs diff to ORT {diff:.1e} (outputs up to {float(np.abs(want).max()):.2f})")
            runners = {
                "ort": lambda s=sess, f=feed: s.run(None, f),
                "before": lambda b=before, t=xt: b(t),
                "after": lambda a=after, t=xt: a(t),
            }
            times: dict[str, list[float]] = {k: [] for k in runners}
            for _ in range(args.runs):
                for k, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - start)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(
                f"{name}: ORT {med['ort']:.2f} ms, before {med['before']:.2f} ms ({med['before'] / med['ort']:.2f}x ORT), "
                f"after {med['after']:.2f} ms ({med['after'] / med['ort']:.2f}x ORT); load average {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    main()
