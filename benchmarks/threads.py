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

`--spins run` is spin 0 with edgefleet's idle workers spinning for as long as a run lasts
(EDGEFLEET_POOL_RUN_SPIN=1, ORT's spinning off), `--spins auto` the same where each model's runs
choose it by their times (the camera runtime's default); every other label runs without it. `--pools tvm,edgefleet` runs the libraries on the camera runtime (agent/runtime.py over the
bundle's C ABI library, as a camera does: input and output copies included) instead of TVM's
Python VM, one child per pool and spin count (`[runtime] pool`; the spin count goes to both pools:
TVM_THREAD_POOL_SPIN_COUNT yields, EDGEFLEET_POOL_SPIN pause instructions); `--tasks 2,4,8` also
varies edgefleet's tasks per thread (EDGEFLEET_POOL_TASKS). `--busy` runs every block a second
time beside one `yes > /dev/null` (one core taken by other work) and prints both tables.

    python benchmarks/threads.py [--models grouped,mobilenetv2] [--blocks 2] [--runs 20]
        [--all-parallel] [--compare CONSTANT=VALUE] [--spins default,0]
        [--pools tvm,edgefleet] [--tasks 4] [--busy]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPINS = {
    "default": None,
    "0": "0",
    "run": "0",
    "auto": "0",
}  # label -> TVM_THREAD_POOL_SPIN_COUNT (None: unset, TVM's 300000)
# EDGEFLEET_POOL_RUN_SPIN by label: "run" always spins edgefleet's idle workers through a run, "auto"
# leaves it to each model's choice (the camera runtime's default), every other label never.
RUN_SPINS = {"run": "1", "auto": None}


def child(libs: dict[str, tuple[str, dict[str, str]]], runs: int, spinning: bool, pool: str | None) -> dict:
    """Time each model's libraries (by label) and ORT at 1 and 2 threads, interleaved in an order shuffled
    each round; median ms per (model, threads) and runner. `pool`: run on the camera runtime with that
    pool, else TVM's VM."""
    import onnxruntime as ort

    load, set_threads = _camera_runtime(pool) if pool else _tvm_vm()
    out = {}
    for name, (onnx_path, builds) in libs.items():
        shape = json.loads(Path(builds["tvm"] + ".shape").read_text())
        x = np.random.default_rng(0).random(tuple(shape), dtype=np.float32)
        runners = {label: load(lib, x) for label, lib in builds.items()}
        for threads in (1, 2):
            set_threads(threads)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            runners["ort"] = lambda sess=sess, feed=feed: sess.run(None, feed)
            times: dict[str, list[float]] = {k: [] for k in runners}
            for run in runners.values():
                run()
            order, shuffle = list(runners), random.Random(0)
            for _ in range(runs):
                # A new order each round: whoever always ran right after ORT (whose run evicts the caches)
                # read 1-5% slower than the same library in another place, and a rotated cycle still
                # put the default build after ORT in every round (0.98-0.99x an identical compared build).
                for k in shuffle.sample(order, len(order)):
                    start = time.perf_counter()
                    runners[k]()
                    times[k].append(time.perf_counter() - start)
            out[f"{name}/{threads}"] = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return out


def _tvm_vm():
    """(load(library, x) -> run(), set_threads) on TVM's Python VM."""
    import tvm
    from tvm import relax

    def load(lib: str, x: np.ndarray):
        vm, xt = relax.VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu()), tvm.runtime.tensor(x)
        return lambda: vm["main"](xt)

    return load, lambda threads: tvm.get_global_func("runtime.config_threadpool")(1, threads)


def _camera_runtime(pool: str):
    """(load(library, x) -> run(), set_threads) on the camera runtime with `pool`; spinning on, at
    the count the parent put in the environment."""
    from edgefleet.agent import runtime
    from edgefleet.agent.config import RuntimeConfig

    runtime.configure_pool(RuntimeConfig(pool=pool, spin=True))

    def load(lib: str, x: np.ndarray):
        model = runtime.TvmModel(Path(lib))
        return lambda: model.run([x])

    return load, runtime.set_threads


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
        f"{'model/threads':<16} {'TVM spin':>20} {'ORT spin':>9} {'TVM ms':>8} {'ORT ms':>8} {'x ORT':>6} {'TVM 2t/1t':>10} {'ORT 2t/1t':>10}{extra}"
    )
    for label in spins:
        blocks = results[label]
        for key in blocks[0]:
            name, threads = key.split("/")
            ms = {k: _median(blocks, key, k) for k in runners}
            two = {k: f"{ms[k] / _median(blocks, f'{name}/1', k):.2f}" if threads == "2" else "" for k in runners}
            ort_spin = "on" if spins[label]["spin"] is None else "off"
            row = f"{key:<16} {label:>20} {ort_spin:>9} {ms['tvm']:8.2f} {ms['ort']:8.2f} {ms['tvm'] / ms['ort']:6.2f}"
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
    ap.add_argument("--spins", default="default,0", help="TVM spin counts to run: default, run, auto and/or numbers")
    ap.add_argument("--pools", help="run on the camera runtime with these pools: tvm and/or edgefleet")
    ap.add_argument("--tasks", default="", help="edgefleet pool's tasks per thread to run (default: the pool's)")
    ap.add_argument("--busy", action="store_true", help="run the blocks again beside one `yes > /dev/null`")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["libs"], args.runs, spec["spinning"], spec["pool"])))
        return
    if not all(label in SPINS or label.isdigit() for label in args.spins.split(",")):
        ap.error(f"--spins takes 'default', 'run', 'auto' or spin counts, not {args.spins!r}")
    settings = _settings(args.spins.split(","), args.pools.split(",") if args.pools else [None], args.tasks)
    variants = {"all-par": {"PARALLEL_MIN_WORK": 0}} if args.all_parallel else {}
    for item in args.compare:
        constant, _, value = item.partition("=")
        if not constant.isupper() or not value.isdigit():
            ap.error(f"--compare takes CONSTANT=INTEGER, not {item!r}")
        variants[item] = {constant: int(value)}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    with tempfile.TemporaryDirectory() as tmp:
        libs = build(args.models.split(","), Path(tmp), variants)
        for busy in (False, True) if args.busy else (False,):
            print("one core busy (`yes > /dev/null`)" if busy else "no other work started", flush=True)
            hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if busy else None
            try:
                results = _blocks(libs, settings, args.blocks, args.runs)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            print_table(results, settings, list(variants))


def _settings(spins: list[str], pools: list[str | None], tasks: str) -> dict[str, dict]:
    """One child per (pool, spin count[, tasks per thread]), by label."""
    settings = {}
    for pool in pools:
        for spin in spins:
            for per_thread in tasks.split(",") if tasks and pool == "edgefleet" else [""]:
                label = ":".join(part for part in (pool, spin, per_thread and f"{per_thread}/t") if part)
                settings[label] = {
                    "pool": pool,
                    "spin": SPINS.get(spin, spin),
                    "tasks": per_thread,
                    "run_spin": RUN_SPINS.get(spin, "0"),
                }
    return settings


def _blocks(libs: dict, settings: dict[str, dict], blocks: int, runs: int) -> dict[str, list[dict]]:
    """The children, alternating in blocks (A B A B ...); each block's medians by setting."""
    results: dict[str, list[dict]] = {label: [] for label in settings}
    for block in range(blocks):
        for label, setting in settings.items():
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("TVM_THREAD_POOL_SPIN_COUNT", "EDGEFLEET_POOL_SPIN", "EDGEFLEET_POOL_RUN_SPIN")
            }
            if setting["run_spin"] is not None:
                env["EDGEFLEET_POOL_RUN_SPIN"] = setting["run_spin"]
            if setting["spin"] is not None:
                env["TVM_THREAD_POOL_SPIN_COUNT"] = env["EDGEFLEET_POOL_SPIN"] = setting["spin"]
            if setting["tasks"]:
                env["EDGEFLEET_POOL_TASKS"] = setting["tasks"]
            # As the camera runtime does (agent/runtime.py `_size_pools`): without it TVM sizes its
            # pool from half the CPUs on x86, one on this 2-core machine, and 2 threads ran as 1.
            env["TVM_NUM_THREADS"] = "2"
            load = os.getloadavg()[0]
            spec = json.dumps({"libs": libs, "spinning": setting["spin"] is None, "pool": setting["pool"]})
            done = subprocess.run(
                [sys.executable, __file__, "--child", spec, "--runs", str(runs)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            results[label].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"block {block + 1}/{blocks} {label}: load {load:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    return results


if __name__ == "__main__":
    main()
