"""Each kernel of a model at 1 and 2 threads on the camera runtime's pool (issue 21).

The camera runtime runs parallel loops on edgefleet's pool (agent/native/edgefleet_pool.cc), which
TVM's Python cannot load beside its own runtime. So the pool's source is compiled here into a small
library against the compiler's TVM, and each kernel (edgefleet's pipeline up to the scheduled kernels,
`kernel_profile.scheduled_kernels`, each built alone) has its `__TVMBackendParallelLaunch` pointed at
it, as the runtime's shim does. Every kernel is timed on random inputs of its shapes at 1 thread and at
2 threads with each of `--tasks` tasks per thread (EDGEFLEET_POOL_TASKS), spinning off, the settings
alternating in `--rounds` rounds, best of all rounds. Printed per kernel: calls, the parallel loop's
extent (none: serial, below PARALLEL_MIN_WORK), µs per call, 2t/1t; the sums: the parallel
kernels, the serial ones, all; and how far from even the tasks split the parallel loops (`imbalance`).

`--in-run` also runs the whole model (its library as benchmarks/threads.py builds it, on the same pool)
once per round and setting, timing each kernel call inside the inference (the Relax VM's instrument
hook), and prints per kernel its time in the run against its time alone (warm caches), sorted by the
difference at the last setting: where a whole run loses beyond the kernels' own speed.

    python benchmarks/pool_kernels.py [--models resnet50,inception_v2] [--isa icelake-server]
        [--tasks 4,8] [--rounds 5] [--top 20] [--in-run]
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_profile import _model, scheduled_kernels, timed_kernels  # noqa: E402  (benchmarks/ is not a package)

POOL_SOURCE = Path(__file__).resolve().parents[1] / "agent" / "native" / "edgefleet_pool.cc"
# The pool's C++ entry points, exported with C names for ctypes.
EXPORTS = """
#include "edgefleet_pool.h"
extern "C" void bench_pool_threads(int threads) { edgefleet::pool::SetThreads(threads); }
extern "C" void* bench_pool_launch() { return reinterpret_cast<void*>(&edgefleet::pool::Launch); }
"""


def pool_library(tmp: Path) -> ctypes.CDLL:
    """edgefleet's pool compiled against the compiler's TVM (its headers and libtvm_ffi)."""
    import tvm
    import tvm_ffi

    tvm_dir, ffi_dir = Path(tvm.__file__).parent, Path(tvm_ffi.__file__).parent
    exports, lib = tmp / "bench_pool.cc", tmp / "libbench_pool.so"
    exports.write_text(EXPORTS)
    subprocess.run(
        ["g++", "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{POOL_SOURCE.parent}", f"-I{tvm_dir / 'include'}"]
        + [f"-I{ffi_dir / 'include'}", str(POOL_SOURCE), str(exports), f"-L{ffi_dir / 'lib'}", "-ltvm_ffi"]
        + [f"-Wl,-rpath,{ffi_dir / 'lib'}", "-o", str(lib)],
        check=True,
    )
    pool = ctypes.CDLL(str(lib))
    pool.bench_pool_launch.restype = ctypes.c_void_p
    return pool


def on_pool(mod, tgt, tmp: Path, launch: int) -> list[tuple[str, int, int | None, object, list]]:
    """(kernel, calls, parallel extent, time_evaluator, arguments) of every kernel, each library's
    parallel launch pointed at edgefleet's pool."""
    import tvm

    def load(executable, kernel: str):
        path = tmp / f"{kernel}.so"
        executable.export_library(path)
        lib = tvm.runtime.load_module(str(path))
        try:  # dlopen hands back the loader's handle: the library TVM runs
            ctypes.c_void_p.in_dll(ctypes.CDLL(str(path)), "__TVMBackendParallelLaunch").value = launch
        except ValueError:
            pass  # no parallel loop
        return lib

    rows = []
    for name, calls, timer, args in timed_kernels(mod, tgt, number=5, repeat=3, load=load):
        try:
            timer(*args)
        except ValueError as exc:  # a kernel that takes a strided view of its caller's buffer
            print(f"  {name}: not timed ({str(exc).splitlines()[0]})")
            continue
        extent = re.search(r"T\.parallel\((?:T\.int64\()?(\d+)", mod[name].script())
        rows.append((name, calls, int(extent.group(1)) if extent else None, timer, args))
    return rows


def whole_run(name: str, tmp: Path, launch: int):
    """run() -> {kernel: µs inside one inference, all its calls} for the model's whole library on the pool."""
    import tvm
    from threads import build
    from tvm import relax

    lib_path = build([name], tmp, {})[name][1]["tvm"]
    lib = tvm.runtime.load_module(lib_path)
    ctypes.c_void_p.in_dll(ctypes.CDLL(lib_path), "__TVMBackendParallelLaunch").value = launch
    vm = relax.VirtualMachine(lib, tvm.cpu())
    shape = json.loads(Path(lib_path + ".shape").read_text())
    x = tvm.runtime.tensor(np.random.default_rng(0).random(shape, dtype=np.float32))
    spent: collections.Counter[str] = collections.Counter()
    start = [0.0]

    def instrument(_func, symbol, before_run, _ret, *_args) -> int:
        if before_run:
            start[0] = time.perf_counter()
        else:
            spent[str(symbol)] += (time.perf_counter() - start[0]) * 1e6
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)

    def run() -> dict[str, float]:
        vm["main"](x)  # the timed inference follows another, as in a stream of frames, not the kernels alone
        spent.clear()
        vm["main"](x)
        return dict(spent)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet50,inception_v2")
    ap.add_argument("--isa", default="icelake-server", help="ml_c6i's CPU, as benchmarks/threads.py builds")
    ap.add_argument("--tasks", default="4,8", help="tasks per thread to time at 2 threads")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--in-run", action="store_true", help="also time each kernel inside a whole run")
    args = ap.parse_args()
    os.environ["EDGEFLEET_POOL_SPIN"] = "0"  # the camera runtime's default, spin = false
    settings = ["1t"] + [f"2t:{t}" for t in args.tasks.split(",")]
    with tempfile.TemporaryDirectory(prefix="edgefleet-pool-") as tmp:
        pool = pool_library(Path(tmp))
        for name in args.models.split(","):
            rows = on_pool(*scheduled_kernels(_model(name, Path(tmp)), args.isa), Path(tmp), pool.bench_pool_launch())
            run = whole_run(name, Path(tmp), pool.bench_pool_launch()) if args.in_run else None
            load = os.getloadavg()[0]
            best: dict[tuple[str, str], float] = {}
            for r in range(args.rounds):
                for setting in settings if r % 2 == 0 else settings[::-1]:
                    threads, _, tasks = setting.partition(":")
                    os.environ["EDGEFLEET_POOL_TASKS"] = tasks or "4"
                    pool.bench_pool_threads(1)  # a new pool reads the tasks per thread
                    pool.bench_pool_threads(int(threads[0]))
                    for kernel, _calls, _extent, timer, kargs in rows:
                        us = min(timer(*kargs).results) * 1e6
                        best[(kernel, setting)] = min(best.get((kernel, setting), us), us)
                    for kernel, us in (run() if run else {}).items():
                        best[(kernel, setting, "run")] = min(best.get((kernel, setting, "run"), us), us)
            pool.bench_pool_threads(1)
            report(name, rows, best, settings, load, args.top)
            if run:
                report_in_run(rows, best, settings, args.top)


def imbalance(extent: int, tasks: int, threads: int = 2) -> float:
    """The slower thread's time over an even split, for a parallel loop of `extent` iterations cut
    as TVM's code does (task i runs iterations [i c, (i + 1) c), c = ceil(extent / tasks)) and
    claimed in order by `threads` threads of equal speed."""
    step = -(-extent // tasks)
    busy = [0] * threads
    for start in range(0, extent, step):
        busy[busy.index(min(busy))] += min(step, extent - start)
    return max(busy) * threads / extent


def report(name: str, rows: list, best: dict, settings: list[str], load: float, top: int) -> None:
    print(f"\n{name}: best µs per call, spinning off; load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"  {'calls':>5} {'extent':>6} " + " ".join(f"{s:>9}" for s in settings) + "  2t/1t ...  kernel")
    rows = sorted(rows, key=lambda r: -best[(r[0], "1t")] * r[1])
    for kernel, calls, extent, _, _ in rows[:top]:
        us = [best[(kernel, s)] for s in settings]
        ratios = " ".join(f"{u / us[0]:.3f}" for u in us[1:])
        print(f"  {calls:5d} {extent or '-':>6} " + " ".join(f"{u:9.1f}" for u in us) + f"  {ratios}  {kernel[:60]}")
    for label, keep in (("parallel", lambda e: e), ("serial", lambda e: not e), ("all", lambda e: True)):
        sums = [sum(best[(k, s)] * n for k, n, e, _, _ in rows if keep(e)) / 1e3 for s in settings]
        if sums[0]:
            ratios = " ".join(f"{t / sums[0]:.3f}" for t in sums[1:])
            print(f"  {label:>12} ms: " + " ".join(f"{t:8.3f}" for t in sums) + f"  {ratios}")
    parallel = [(best[(k, "1t")] * n, e) for k, n, e, _, _ in rows if e]
    for setting in settings[1:]:
        tasks = 2 * int(setting.partition(":")[2])
        loss = sum(t * (imbalance(e, tasks) - 1) for t, e in parallel) / sum(t for t, _ in parallel)
        print(
            f"  {setting}: {tasks} tasks split the parallel loops {loss:.1%} above even (1t-weighted, from the extents)"
        )


def report_in_run(rows: list, best: dict, settings: list[str], top: int) -> None:
    """Per kernel, µs of all its calls in the whole run and alone, at each setting; sorted by the
    difference at the last one."""
    lost = {
        kernel: [(best[(kernel, s, "run")], best[(kernel, s)] * calls) for s in settings]
        for kernel, calls, _, _, _ in rows
        if all((kernel, s, "run") in best for s in settings)
    }
    print("  in the whole run - alone, µs per inference (in run / alone): " + ", ".join(settings))
    for kernel, pairs in sorted(lost.items(), key=lambda kv: kv[1][-1][1] - kv[1][-1][0])[:top]:
        cells = " ".join(f"{r - a:7.1f} ({r:7.1f} / {a:7.1f})" for r, a in pairs)
        print(f"  {cells}  {kernel[:60]}")
    sums = [sum(pairs[i][0] - pairs[i][1] for pairs in lost.values()) / 1e3 for i in range(len(settings))]
    print("  in the whole run - alone, all kernels, ms: " + " ".join(f"{v:.2f}" for v in sums))


if __name__ == "__main__":
    main()
