"""Threads and spinning on shared cores (issue 21): 1 vs 2 threads, TVM's pool spin count default
vs 0, ONNX Runtime's allow_spinning on vs off, for a small and a mid model.

TVM reads TVM_THREAD_POOL_SPIN_COUNT once per process (when its pool's workers first start), so
each spin setting runs in its own child process; the children alternate in blocks (A B A B ...)
so both see the same stretch of the machine's load. Inside a child, TVM and ONNX Runtime run
interleaved at each thread count; ORT's spinning follows TVM's (two spinning pools on two cores
slow each other down 3-27x: TOOLCHAIN.md). Ratios (x ORT, and 2 threads / 1 thread) are the
numbers to read; the load average is printed before and after every block.

`--all-parallel` also builds each model with every kernel's outer loops parallel
(`schedules.PARALLEL_MIN_WORK` = 0, as before the work threshold) and runs it interleaved with the
default build and ORT (columns "all-par"): the threshold's effect at the same load. `--compare
CONSTANT=VALUE` (repeatable) does the same for any integer constant of compiler/schedules.py, e.g.
`--compare PARALLEL_MIN_WORK=16777216` for a work threshold of 2^24. `--spins 0`
runs only TVM's spin count 0; any number is a spin count (ORT's spinning off with it).

    python benchmarks/threads.py [--models grouped,mobilenetv2] [--blocks 2] [--runs 20]
        [--all-parallel] [--compare CONSTANT=VALUE] [--spins default,0]
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


def child(libs: dict[str, tuple[str, dict[str, str]]], runs: int, spinning: bool) -> dict:
    """Time each model's libraries (by label) and ORT at 1 and 2 threads, interleaved; median ms per
    (model, threads) and runner."""
    import onnxruntime as ort
    import tvm
    from tvm import relax

    out = {}
    for name, (onnx_path, builds) in libs.items():
        vms = {label: relax.VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu()) for label, lib in builds.items()}
        shape = json.loads(Path(builds["tvm"] + ".shape").read_text())
        x = np.random.default_rng(0).random(tuple(shape), dtype=np.float32)
        xt = tvm.runtime.tensor(x)
        for threads in (1, 2):
            tvm.get_global_func("runtime.config_threadpool")(1, threads)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            runners = {label: lambda vm=vm, xt=xt: vm["main"](xt) for label, vm in vms.items()}
            runners["ort"] = lambda sess=sess, feed=feed: sess.run(None, feed)
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


def build(names: list[str], tmp: Path, variants: dict[str, dict[str, int]]) -> dict[str, tuple[str, dict[str, str]]]:
    """Each model's default library ("tvm") and one per variant (label -> `schedules` constants to set)."""
    import onnx
    import tvm
    from latency import model_path

    from edgefleet.compiler import schedules
    from edgefleet.compiler.build import KernelFallbacks, _optimize_pipeline, tvm_target
    from edgefleet.compiler.frontends.onnx import input_specs, to_relax
    from edgefleet.compiler.targets import resolve_target

    target = resolve_target("ml_c6i")
    tgt = tvm_target(target)
    libs = {}
    defaults = {name: getattr(schedules, name) for overrides in variants.values() for name in overrides}
    for name in names:
        path = model_path(name, tmp)
        model = onnx.load(str(path))
        inits = {i.name for i in model.graph.initializer}
        spec = next(i for i in model.graph.input if i.name not in inits)
        builds = {}
        for label, overrides in {"tvm": {}, **variants}.items():
            for constant, value in {**defaults, **overrides}.items():
                setattr(schedules, constant, value)
            with tgt:
                mod = _optimize_pipeline(target, 0, KernelFallbacks(lambda _m: None))(
                    to_relax(model, input_specs(model, {}))
                )
            lib = str(tmp / f"{name}-{len(builds)}.so")
            tvm.compile(mod, target=tgt, relax_pipeline=None).export_library(lib)
            Path(lib + ".shape").write_text(json.dumps([d.dim_value for d in spec.type.tensor_type.shape.dim]))
            builds[label] = lib
        libs[name] = (str(path), builds)
    for constant, value in defaults.items():
        setattr(schedules, constant, value)
    return libs


def _median(blocks: list[dict], key: str, runner: str) -> float:
    return statistics.median(r[key][runner] for r in blocks)


def print_table(results: dict[str, list[dict]], spins: dict, variants: list[str]) -> None:
    """Medians of the blocks' medians per (model, threads): ms, x ORT, and 2 threads / 1 thread;
    for each variant its ms, 2t/1t and ms / the default build's."""
    runners = ["tvm", "ort", *variants]
    extra = "".join(f"  {v + ' ms':>10} {'2t/1t':>6} {'/ tvm':>6}" for v in variants)
    print(
        f"{'model/threads':<16} {'TVM spin':>9} {'ORT spin':>9} {'TVM ms':>8} {'ORT ms':>8} {'x ORT':>6} {'TVM 2t/1t':>10} {'ORT 2t/1t':>10}{extra}"
    )
    for label in spins:
        blocks = results[label]
        for key in blocks[0]:
            name, threads = key.split("/")
            ms = {k: _median(blocks, key, k) for k in runners}
            two = {k: f"{ms[k] / _median(blocks, f'{name}/1', k):.2f}" if threads == "2" else "" for k in runners}
            ort_spin = "on" if spins[label] is None else "off"
            row = f"{key:<16} {label:>9} {ort_spin:>9} {ms['tvm']:8.2f} {ms['ort']:8.2f} {ms['tvm'] / ms['ort']:6.2f}"
            row += f" {two['tvm']:>10} {two['ort']:>10}"
            for v in variants:
                row += f"  {ms[v]:10.2f} {two[v]:>6} {ms[v] / ms['tvm']:6.2f}"
            print(row)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="grouped,mobilenetv2")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--all-parallel", action="store_true", help="also time every kernel parallel (no threshold)")
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="CONSTANT=VALUE",
        help="also time a build with this compiler.schedules constant set (repeatable, e.g. PARALLEL_MIN_WORK=16777216)",
    )
    ap.add_argument("--spins", default=",".join(SPINS), help="TVM spin counts to run: default and/or numbers")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["libs"], args.runs, spec["spinning"])))
        return
    spins = {label: SPINS.get(label, label) for label in args.spins.split(",")}
    if not all(label in SPINS or label.isdigit() for label in spins):
        ap.error(f"--spins takes 'default' or spin counts, not {args.spins!r}")
    variants = {"all-par": {"PARALLEL_MIN_WORK": 0}} if args.all_parallel else {}
    for item in args.compare:
        constant, _, value = item.partition("=")
        if not constant.isupper() or not value.isdigit():
            ap.error(f"--compare takes CONSTANT=INTEGER, not {item!r}")
        variants[item] = {constant: int(value)}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    with tempfile.TemporaryDirectory() as tmp:
        libs = build(args.models.split(","), Path(tmp), variants)
        results: dict[str, list[dict]] = {label: [] for label in spins}
        for block in range(args.blocks):
            for label, count in spins.items():
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
    print_table(results, spins, list(variants))


if __name__ == "__main__":
    main()
