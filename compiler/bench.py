"""`edgefleet bench`: the compiled package against ONNX Runtime and TFLite, same inputs, one run.

Runtimes are timed interleaved (one call of each per round), so load from other processes
hits them alike; the report gives each one's median latency, the ratio to the TVM package,
the GFLOP/s it reached and that as a share of the CPU's estimated peak, and the largest
output difference to the package. Thread counts are pinned to the same value for all.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from edgefleet.errors import UsageError


@dataclass
class RuntimeResult:
    runtime: str
    median_ms: float | None = None
    ratio_to_tvm: float | None = None
    gflops: float | None = None
    peak_fraction: float | None = None
    max_abs_diff: float | None = None
    skipped: str | None = None


@dataclass
class BenchResult:
    """What `edgefleet bench --json` prints (format_version 1)."""

    package: str
    model: str | None
    target: str
    threads: int
    runs: int
    gflop: float | None
    peak_gflops: float | None
    results: list[RuntimeResult] = field(default_factory=list)
    format_version: int = 1
    library: str = ""  # the package's library that ran as "tvm" (the agent's choice, agent/variants.py)


# ---- model work and CPU peak --------------------------------------------------------------


def onnx_gflop(model_path: Path) -> float | None:
    """Multiply-adds x 2 of Conv, ConvTranspose, Gemm and MatMul nodes (what dominates a CNN).

    Shape inference propagates values (data_prop) so that a reshape to a shape computed from
    `x.shape` (a channel shuffle as PyTorch exports it) has a shape, and the nodes after it count.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)), data_prop=True)
    shapes: dict[str, list[int]] = {}
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    flops = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in shapes:
            w = shapes[node.input[1]]
            flops += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul") and node.input[0] in shapes:
            a = shapes[node.input[0]]
            k = (
                a[-1]
                if not (node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute))
                else a[0]
            )
            flops += 2 * int(np.prod(out)) * k
    return flops / 1e9 if flops else None


def cpu_peak_gflops(threads: int) -> float | None:
    """Estimated fp32 peak: cores x clock x vector lanes x 2 (FMA) x 2 FMA pipes.

    Two FMA pipes per core holds for the x86 server cores edgefleet targets (Skylake-SP and
    later, Zen 4/5) and Cortex-A76/A72 (two 128-bit NEON pipes); it is an upper bound.
    """
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = (
        set(re.findall(r"^(?:flags|Features)\s*:\s*(.*)$", info, re.M)[0].split())
        if re.search(r"^(?:flags|Features)", info, re.M)
        else set()
    )
    lanes = (
        16
        if "avx512f" in flags
        else 8
        if "avx2" in flags
        else 4
        if ({"neon", "asimd"} & flags or "sse2" in flags)
        else None
    )
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)]
    if lanes is None or not mhz:
        return None
    return threads * (max(mhz) / 1e3) * lanes * 2 * 2


# ---- runtimes -------------------------------------------------------------------------------


# A runner takes the inputs and returns the outputs and the seconds the inference took.
Runner = Callable[[list[np.ndarray]], tuple[list[np.ndarray], float]]


def _tvm_runner(library: Path, threads: int) -> Runner:
    """The package on the camera runtime (in the runtime worker); times are the worker's own, without the pipe."""
    from edgefleet.agent.runtime_worker import shared_worker

    worker = shared_worker()
    worker.call({"op": "threads", "count": threads})
    model = worker.load(library)

    def run(xs: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        outputs, ms = model.timed_run(xs, 1)
        return outputs, ms[0] / 1e3

    return run


def _timed(run: Callable[[list[np.ndarray]], list[np.ndarray]]) -> Runner:
    def timed(xs: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        start = time.perf_counter()
        outputs = run(xs)
        return outputs, time.perf_counter() - start

    return timed


def _ort_runner(model: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # The camera runtime's workers do not spin (agent [runtime] spin = false): neither do ORT's.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return _timed(lambda xs: sess.run(None, dict(zip(names, xs))))


def _tflite_runner(model: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model), num_threads=threads)
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()

    def run(xs):
        for d, x in zip(ins, xs):
            interp.set_tensor(d["index"], x)
        interp.invoke()
        return [np.array(interp.get_tensor(d["index"])) for d in outs]

    return _timed(run)


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float | None:
    if len(a) != len(b) or any(x.size != y.size for x, y in zip(a, b)):
        return None
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64).ravel() - np.asarray(y, np.float64).ravel())))
        for x, y in zip(a, b)
    )


def _reference_model(manifest, reference: Path | None) -> tuple[Path | None, str | None]:
    """The source model to run on the other runtimes: given, or the package's source if still here."""
    from edgefleet.package import sha256_file

    if reference is not None:
        if not Path(reference).is_file():
            raise UsageError(
                f"--reference {reference} does not exist",
                "pass the .onnx or .tflite file the package was compiled from",
            )
        return Path(reference), None
    uri = manifest.provenance.source_uri
    path = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
    if "://" in uri and not uri.startswith("file://"):
        return None, f"the source {uri} is remote; pass --reference"
    if not path.is_file():
        return None, f"the source {path} is not on this machine; pass --reference"
    if sha256_file(path) != manifest.provenance.source_sha256:
        return None, f"{path} changed since it was compiled (sha256 differs); pass --reference"
    return path, None


def bench_package(
    package: Path, *, reference: Path | None = None, runs: int = 20, warmup: int = 3, threads: int = 1, trusted=None
) -> BenchResult:
    """Time `package` (this machine must run its target) against ONNX Runtime / TFLite on the source model."""
    from edgefleet.agent.runtime import check_runnable
    from edgefleet.agent.variants import select_library
    from edgefleet.compiler.frontends import frontend_for
    from edgefleet.compiler.verify import model_feeds, sample_inputs
    from edgefleet.package import open_package
    from edgefleet.signing import default_trusted_keys

    if runs < 1 or threads < 1:
        raise UsageError("--runs and --threads must be at least 1", "for example --runs 20 --threads 1")
    with open_package(Path(package), trusted if trusted is not None else default_trusted_keys()) as pkg:
        manifest = pkg.manifest
        check_runnable(manifest)
        if manifest.runtime.kind != "tvm":
            raise UsageError(
                f"package {manifest.name} carries a {manifest.runtime.kind} model, not a TVM library",
                "bench a package compiled by TVM",
            )
        ref, why = _reference_model(manifest, reference)
        fmt = ref.suffix.lower().lstrip(".") if ref else None
        # Integer index inputs need values the model accepts, read from the reference model's graph.
        if fmt in ("onnx", "tflite"):
            feeds = model_feeds(frontend_for(fmt), ref, manifest.inputs)
        else:
            feeds = sample_inputs(manifest.inputs)
        inputs = [feeds[s.name] for s in manifest.inputs]
        choice = select_library(pkg)
        runners: dict[str, Runner] = {"tvm": _tvm_runner(choice.path, threads)}
        skipped: dict[str, str] = {}
        if fmt == "onnx":
            runners["onnxruntime"] = _ort_runner(ref, threads)
            skipped["tflite"] = "TFLite runs .tflite models; this package was compiled from ONNX"
        elif fmt == "tflite":
            runners["tflite"] = _tflite_runner(ref, threads)
            skipped["onnxruntime"] = "ONNX Runtime runs .onnx models; this package was compiled from TFLite"
        else:
            skipped["onnxruntime"] = skipped["tflite"] = why or f"no reference model ({ref})"
        outputs = {name: run(inputs)[0] for name, run in runners.items()}
        for _ in range(warmup - 1):
            for run in runners.values():
                run(inputs)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(runs):
            for name, run in runners.items():
                times[name].append(run(inputs)[1])
    gflop = onnx_gflop(ref) if fmt == "onnx" else None
    peak = cpu_peak_gflops(threads)
    tvm_ms = statistics.median(times["tvm"]) * 1e3
    result = BenchResult(
        str(package),
        str(ref) if ref else None,
        manifest.target.name,
        threads,
        runs,
        gflop,
        peak,
        library=choice.describe(),
    )
    for name in ("tvm", "onnxruntime", "tflite"):
        if name in skipped:
            result.results.append(RuntimeResult(name, skipped=skipped[name]))
            continue
        ms = statistics.median(times[name]) * 1e3
        gflops = gflop / (ms / 1e3) if gflop else None
        result.results.append(
            RuntimeResult(
                name,
                median_ms=ms,
                ratio_to_tvm=tvm_ms / ms,
                gflops=gflops,
                peak_fraction=gflops / peak if gflops and peak else None,
                max_abs_diff=_max_diff(outputs["tvm"], outputs[name]) if name != "tvm" else 0.0,
            )
        )
    return result


def bench(
    source: str,
    *,
    target: str | None = None,
    reference: Path | None = None,
    runs: int = 20,
    warmup: int = 3,
    threads: int = 1,
    tune_trials: int = 0,
    quiet: bool = False,
) -> BenchResult:
    """`edgefleet bench`: SOURCE is a model package, or a model (compiled here for --target first)."""
    path = Path(source)
    if source.endswith((".tar.gz", ".tgz")):
        if target:
            raise UsageError(
                "--target is for a model, not a package (a package has its target)",
                "drop --target, or pass the .onnx/.tflite model",
            )
        return bench_package(path, reference=reference, runs=runs, warmup=warmup, threads=threads)
    if not target:
        raise UsageError(
            f"{source} is a model, so --target is required", "for example --target ml_c5, or pass a compiled package"
        )
    from edgefleet.compiler.compile import compile_model
    from edgefleet.signing import load_signing_key

    key = load_signing_key(None)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        pkg = compile_model(source, target, output=Path(tmp) / "bench.tar.gz", tune_trials=tune_trials, quiet=quiet)
        local = path if path.is_file() else None
        return bench_package(
            pkg.package, reference=reference or local, runs=runs, warmup=warmup, threads=threads, trusted=[key.public]
        )


@click.command("bench")
@click.argument("source")
@click.option("--target", "-t", help="Compile SOURCE (a model) for this target first; omit for a package.")
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    help="The .onnx/.tflite to compare with (default: the package's source, if it is here).",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Timed rounds; each runs every runtime once.",
)
@click.option(
    "--warmup", type=click.IntRange(min=1), default=3, show_default=True, help="Untimed rounds before timing."
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Threads for every runtime alike."
)
@click.option(
    "--tune-trials",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="With --target: MetaSchedule trials for the compile (database kept and reused).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_command(source, target, reference, runs, warmup, threads, tune_trials, as_json) -> None:
    """Time SOURCE, a compiled package (or a model compiled for --target first), against ONNX Runtime and TFLite.

    \b
    Examples:
      edgefleet bench scenes-2-x86_64.tar.gz --runs 50
      edgefleet bench model.onnx --target x86_64 --threads 2 --json
    """
    from edgefleet.cli import console, print_json, table

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    result = bench(
        source,
        target=target,
        reference=reference,
        runs=runs,
        warmup=warmup,
        threads=threads,
        tune_trials=tune_trials,
        quiet=as_json,
    )
    if as_json:
        print_json(asdict(result))
        return

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    ran = [r for r in result.results if not r.skipped]
    table(
        ["runtime", "median ms", "TVM / this", "GFLOP/s", "% of peak", "max abs diff"],
        [
            [
                r.runtime,
                fmt(r.median_ms, ".2f"),
                fmt(r.ratio_to_tvm, ".2f"),
                fmt(r.gflops, ".1f"),
                fmt(r.peak_fraction and 100 * r.peak_fraction, ".1f"),
                fmt(r.max_abs_diff, ".2e"),
            ]
            for r in ran
        ],
        title=f"{Path(result.package).name} on {result.target} ({result.library}), {result.threads} thread(s), {result.runs} runs",
    )
    for r in result.results:
        if r.skipped:
            console.print(f"{r.runtime}: skipped, {r.skipped}")
    work = f"{result.gflop:.2f} GFLOP per inference" if result.gflop else "GFLOP unknown"
    peak = f"estimated peak {result.peak_gflops:.0f} GFLOP/s" if result.peak_gflops else "peak unknown"
    console.print(f"{work}; {peak}. 'TVM / this' above 1 means TVM is slower.")
