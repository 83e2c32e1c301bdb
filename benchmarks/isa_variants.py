"""The generic x86_64 package's ISA-level libraries against ONNX Runtime (issue 21).

For each model: `edgefleet compile --target x86_64` (one package, model.so for x86-64-v3 and
model.x86-64-v4.so beside it), then ONNX Runtime and every library of the package this CPU runs,
timed interleaved in one process on the same input (the order rotates every round), on the
camera runtime. Prints medians, each library's ratio to ORT (median, and the quartiles of the ratio
within each round), GFLOP/s (conv and dense multiply-adds x 2), the compile time each library cost,
the package size with and without the extra library, and the load average around the timing.

    python benchmarks/isa_variants.py [--models squeezenet,mobilenetv2,resnet50] [--runs 30] [--threads 1]
        [--also znver4,icelake-server] [--without inplace_concats,sink_layout_transforms.reblock] [--bytecode]

`--also` compiles the model for more LLVM CPUs (raw TVM targets, one package each) and times them in
the same rounds: how the generic x86-64-v4 library compares with one tuned for a named CPU.
`--without` compiles the model once more with those passes of compiler/graph.py replaced by the
identity (or, as `factory.option`, with that keyword option off) and times that package's
x86-64-v4 library in the same rounds: a graph rewrite's gain, before and after side by side, with
the median of their per-round ratio.
`--bytecode` likewise times the package built with the Relax VM as bytecode (as before the CPU
libraries ran it compiled, compiler/build.py `_exec_mode`).

TFLite models (issue 22: the names of benchmarks/arm_instructions.py ending in `_tflite`, e.g.
`mobilenetv2_int8_tflite`, `mobilenetv2_035_int8_tflite`) are timed against LiteRT (XNNPACK) instead
of ORT, on the same input; the ratio column is then `/ LiteRT`:

    python benchmarks/isa_variants.py --models mobilenetv2_int8_tflite,mobilenetv2_035_int8_tflite --also icelake-server
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import model_path  # noqa: E402  (benchmarks/ is not a package)


@contextlib.contextmanager
def _without(passes: list[str]):
    """compiler/graph.py with the named pass factories returning the identity, for one compile;
    `factory.option` (e.g. sink_layout_transforms.reblock) calls that factory with the option False."""
    import tvm

    from edgefleet.compiler import graph

    names = {p.split(".")[0] for p in passes}
    saved = {n: getattr(graph, n) for n in names}
    identity = tvm.transform.module_pass(lambda mod, _ctx: mod, opt_level=0, name="Identity")
    for n in names:
        off = {p.split(".")[1]: False for p in passes if p.startswith(f"{n}.")}
        factory = saved[n]
        setattr(
            graph,
            n,
            (lambda *a, _f=factory, _o=off, **k: _f(*a, **{**k, **_o})) if off else (lambda *_a, **_k: identity),
        )
    try:
        yield
    finally:
        for n, factory in saved.items():
            setattr(graph, n, factory)


@contextlib.contextmanager
def _bytecode_vm():
    """compiler/build.py building the Relax VM as bytecode, for one compile."""
    from edgefleet.compiler import build

    saved = build._exec_mode
    build._exec_mode = lambda _target: "bytecode"
    try:
        yield
    finally:
        build._exec_mode = saved


def source_model(name: str, work: Path) -> Path:
    if name.endswith("_tflite"):
        from arm_instructions import make_model

        return make_model(name, work)
    return model_path(name, work)


def main() -> None:
    from edgefleet.agent.variants import cpu_flags
    from edgefleet.compiler.bench import _ort_runner, _tflite_runner, _tvm_runner, onnx_gflop
    from edgefleet.compiler.compile import compile_model
    from edgefleet.compiler.verify import sample_inputs
    from edgefleet.package import open_package
    from edgefleet.signing import create_signing_key

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="squeezenet,mobilenetv2,resnet50")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--also", default="", help="more LLVM CPUs to compile for and time alongside")
    ap.add_argument("--without", default="", help="graph.py passes to leave out in one more package")
    ap.add_argument("--bytecode", action="store_true", help="also time the package with the VM as bytecode")
    args = ap.parse_args()
    flags = cpu_flags()
    with tempfile.TemporaryDirectory(prefix="edgefleet-isa-") as tmp:
        work = Path(tmp)
        key = create_signing_key(work / "signing.key")
        for name in args.models.split(","):
            source = source_model(name, work)
            tflite = source.suffix == ".tflite"
            ref = "litert" if tflite else "onnxruntime"
            start = time.perf_counter()
            result = compile_model(str(source), "x86_64", output=work / f"{name}.tar.gz", key=key.path, quiet=True)
            total_s = time.perf_counter() - start
            extra_s = result.timings.get("x86-64-v4", 0.0)
            with open_package(result.package, [key.public]) as pkg:
                listed = pkg.variants()
                assert listed is not None, "an x86_64 package lists its libraries"
                runnable = [v for v in listed.variants if set(v.cpu_features) <= flags]
                feeds = sample_inputs(pkg.manifest.inputs)
                inputs = [feeds[s.name] for s in pkg.manifest.inputs]
                runners = {ref: (_tflite_runner if tflite else _ort_runner)(source, args.threads)}
                runners.update({v.isa: _tvm_runner(pkg.path(v.library), args.threads) for v in runnable})
                for mcpu in filter(None, args.also.split(",")):
                    raw = '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "%s"}' % mcpu
                    other = compile_model(
                        str(source), raw, output=work / f"{name}-{mcpu}.tar.gz", key=key.path, quiet=True
                    )
                    with open_package(other.package, [key.public]) as extra:
                        runners[mcpu] = _tvm_runner(extra.library, args.threads)  # the worker keeps it loaded
                isa = runnable[0].isa  # the best this CPU runs (variants.json lists the best first)
                changes = {}  # runner label -> (package file suffix, the change for its compile)
                if args.without:
                    changes["w/o"] = ("without", _without(args.without.split(",")))
                if args.bytecode:
                    changes["bytecode"] = ("bytecode", _bytecode_vm())
                for label, (suffix, change) in changes.items():
                    with change:
                        other = compile_model(
                            str(source), "x86_64", output=work / f"{name}-{suffix}.tar.gz", key=key.path, quiet=True
                        )
                    with open_package(other.package, [key.public]) as extra:
                        library = next(v.library for v in extra.variants().variants if v.isa == isa)
                        runners[f"{isa} {label}"] = _tvm_runner(extra.path(library), args.threads)
                sizes = {v.isa: pkg.path(v.library).stat().st_size for v in listed.variants}
                # The package as it was before: the same members without the extra library and its list.
                solo = len(gzip.compress(pkg.library.read_bytes(), compresslevel=6))
                outputs = {n: run(inputs)[0] for n, run in runners.items()}
                times: dict[str, list[float]] = {n: [] for n in runners}
                order = list(runners)
                load_before = os.getloadavg()[0]
                for i in range(args.runs):
                    for n in order[i % len(order) :] + order[: i % len(order)]:
                        times[n].append(runners[n](inputs)[1])
                load_after = os.getloadavg()[0]
            ort_ms = statistics.median(times[ref]) * 1e3
            gflop = None if tflite else onnx_gflop(source)
            print(
                f"\n{name} ({gflop or 0:.2f} GFLOP): compile {total_s:.1f} s (x86-64-v4 library {extra_s:.1f} s of it); package "
                f"{result.package.stat().st_size / 1e6:.1f} MB (about {solo / 1e6:.1f} MB with model.so alone); "
                f"load average {load_before:.1f} -> {load_after:.1f}, {args.threads} thread(s), {args.runs} rounds"
            )
            print(
                f"  {'runtime':<12} {'median ms':>9} {'/ ' + ('LiteRT' if tflite else 'ORT'):>9} {'quartiles':>11} {'GFLOP/s':>7}"
                f" {'library MB':>10} {'max abs diff':>12}"
            )
            for n, samples in times.items():
                ms = statistics.median(samples) * 1e3
                # Each round ran every runtime once: its ratio to ORT in that round is what the spread is of.
                q1, _, q3 = statistics.quantiles([t / o for t, o in zip(samples, times[ref])], n=4)
                rate = f"{gflop / ms * 1e3:7.0f}" if gflop else f"{'-':>7}"
                diff = max(
                    float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                    for a, b in zip(outputs[n], outputs[ref])
                )
                size = f"{sizes[n] / 1e6:10.1f}" if n in sizes else f"{'-':>10}"
                print(f"  {n:<12} {ms:9.2f} {ms / ort_ms:9.2f} {q1:5.2f}-{q3:<5.2f} {rate} {size} {diff:12.2e}")
            for label in changes:
                # The same library built with and without a change, in the same rounds: the change's own ratio.
                per_round = statistics.median(t / o for t, o in zip(times[isa], times[f"{isa} {label}"]))
                print(f"  {isa} / {isa} {label}: {per_round:.3f} (median of the per-round ratios)")


if __name__ == "__main__":
    main()
