"""Threads and spinning on shared cores (issue 21): 1 vs 2 threads, TVM's pool spin count default
vs 0, ONNX Runtime's allow_spinning on vs off, for a small and a mid model.

TVM reads TVM_THREAD_POOL_SPIN_COUNT once per process (when its pool's workers first start), so
each spin setting runs in its own child process; the children alternate in blocks (A B A B ...)
so both see the same stretch of the machine's load. Inside a child, TVM and ONNX Runtime run
interleaved at each thread count; ORT's spinning follows TVM's (two spinning pools on two cores
slow each other down 3-27x: TOOLCHAIN.md). Ratios (x ORT, and 2 threads / 1 thread) are the
numbers to read; the load average is printed before and after every block.

    python benchmarks/threads.py [--models grouped,mobilenetv2] [--blocks 2] [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPINS = {"default": None, "0": "0"}  # label -> TVM_THREAD_POOL_SPIN_COUNT (None: unset, TVM's 300000)


def child(libs: dict[str, tuple[str, str]], runs: int, spinning: bool) -> dict:
    """Time each model's library and ORT at 1 and 2 threads, interleaved; median ms per (model, threads)."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    out = {}
    for name, (lib, onnx_path) in libs.items():
        vm = relax.VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu())
        x = np.random.default_rng(0).random(tuple(json.loads(Path(lib + ".shape").read_text())), dtype=np.float32)
        xt = tvm.runtime.tensor(x)
        for threads in (1, 2):
            tvm.get_global_func("runtime.config_threadpool")(1, threads)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            runners = {
                "tvm": lambda vm=vm, xt=xt: vm["main"](xt),
                "ort": lambda sess=sess, feed=feed: sess.run(None, feed),
            }
            times: dict[str, list[float]] = {k: [] for k in runners}
            for run in runners.values():
                run()
            for _ in range(runs):
                for k, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - start)
            out[f"{name}/{threads}"] = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return out


def build(names: list[str], tmp: Path) -> dict[str, tuple[str, str]]:
    import onnx
    import tvm
    from latency import model_path
    from tvm.relax.frontend.onnx import from_onnx

    from edgefleet.compiler.build import KernelFallbacks, _optimize_pipeline, tvm_target
    from edgefleet.compiler.targets import resolve_target

    target = resolve_target("ml_c6i")
    tgt = tvm_target(target)
    libs = {}
    for name in names:
        path = model_path(name, tmp)
        model = onnx.load(str(path))
        inits = {i.name for i in model.graph.initializer}
        spec = next(i for i in model.graph.input if i.name not in inits)
        with tgt:
            mod = _optimize_pipeline(target, 0, KernelFallbacks(lambda _m: None))(
                from_onnx(model, keep_params_in_input=False)
            )
        lib = str(tmp / f"{name}.so")
        tvm.compile(mod, target=tgt, relax_pipeline=None).export_library(lib)
        Path(lib + ".shape").write_text(json.dumps([d.dim_value for d in spec.type.tensor_type.shape.dim]))
        libs[name] = (lib, str(path))
    return libs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="grouped,mobilenetv2")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["libs"], args.runs, spec["spinning"])))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    with tempfile.TemporaryDirectory() as tmp:
        libs = build(args.models.split(","), Path(tmp))
        results: dict[str, list[dict]] = {label: [] for label in SPINS}
        for block in range(args.blocks):
            for label, count in SPINS.items():
                env = {k: v for k, v in os.environ.items() if k != "TVM_THREAD_POOL_SPIN_COUNT"}
                if count is not None:
                    env["TVM_THREAD_POOL_SPIN_COUNT"] = count
                # As the camera runtime does (agent/runtime.py `_size_pools`): without it TVM sizes its
                # pool from half the CPUs on x86, one on this 2-core machine, and 2 threads ran as 1.
                env["TVM_NUM_THREADS"] = "2"
                load = os.getloadavg()[0]
                spec = json.dumps({"libs": libs, "spinning": count is None})
                done = subprocess.run(
                    [sys.executable, __file__, "--child", spec, "--runs", str(args.runs)],
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                results[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(
                    f"block {block + 1}/{args.blocks} spin {label}: load {load:.1f} -> {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    print(
        f"{'model/threads':<16} {'TVM spin':>9} {'ORT spin':>9} {'TVM ms':>8} {'ORT ms':>8} {'x ORT':>6} {'TVM 2t/1t':>10} {'ORT 2t/1t':>10}"
    )
    for label in SPINS:
        for key in results[label][0]:
            tvm_ms = statistics.median(r[key]["tvm"] for r in results[label])
            ort_ms = statistics.median(r[key]["ort"] for r in results[label])
            name, threads = key.split("/")
            one = f"{name}/1"
            speed = ""
            if threads == "2":
                t1 = statistics.median(r[one]["tvm"] for r in results[label])
                o1 = statistics.median(r[one]["ort"] for r in results[label])
                speed = f"{tvm_ms / t1:10.2f} {ort_ms / o1:10.2f}"
            ort_spin = "on" if SPINS[label] is None else "off"
            print(f"{key:<16} {label:>9} {ort_spin:>9} {tvm_ms:8.2f} {ort_ms:8.2f} {tvm_ms / ort_ms:6.2f} {speed}")


if __name__ == "__main__":
    main()
