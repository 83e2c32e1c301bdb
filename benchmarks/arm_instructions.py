"""ARM speed without a board: guest instructions per inference under QEMU, edgefleet vs ONNX Runtime / LiteRT.

    python benchmarks/arm_instructions.py [--models squeezenet,mobilenetv2,...] [--boards rasp4b,rasp5,rasp3b]
                                          [--windows 3] [--runs 20] [--x86-target ml_c6i] [--profile 15]

For each model: compile packages for each board and for x86; on each board (qemu-aarch64
-cpu cortex-a72 for rasp4b, cortex-a76 for rasp5, qemu-arm -cpu max for rasp3b) count the
instructions of one inference of the package on the camera runtime bundle and of the same model
and input on ONNX Runtime (.onnx) or LiteRT/XNNPACK (.tflite), one thread each, with the
insn_count plugin (benchmarks/qemu_insn). Prints package/runtime by instruction count beside the
x86 wall-time ratio of the same model measured here (interleaved, 1 thread): instructions are not
cycles, and a win in instructions that is a loss in time shows there. rasp3b (armv7) has no
onnxruntime or ai-edge-litert wheels, so only the package is counted there.

`--profile N` also prints, per model, board and runtime, the N functions that executed the most
instructions in the windows (per inference): the package's fused kernels by name, the runtimes'
by their libraries' symbols (insn_counter.by_function).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks" / "qemu_insn"), str(ROOT / "tests"), str(ROOT / "tests" / "compiler")]

import insn_counter as counter  # noqa: E402  (benchmarks/qemu_insn, put on the path above)
from latency import yolov8  # noqa: E402  (benchmarks/ is not a package)

LIGHT = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data" / "light"


def make_model(name: str, work: Path) -> Path:
    from edgefleet.models import mobilenetv2

    if name == "squeezenet":
        return LIGHT / "light_squeezenet.onnx"
    if name == "mobilenetv2":
        return mobilenetv2.save(work / "mobilenetv2.onnx")
    if name == "mobilenetv2_035":
        return mobilenetv2.save(work / "mobilenetv2_035.onnx", size=96, width=0.35)
    if name == "yolov8":
        return yolov8(work / "yolov8.onnx")
    from compiler_testlib import int8_tflite_cnn, small_tflite_cnn

    if name == "small_tflite":
        return small_tflite_cnn(work / "small.tflite", size=96)
    if name == "int8_tflite":
        return int8_tflite_cnn(work / "int8.tflite")  # its graph is written for 16x16
    from tflite_models import mobilenetv2_tflite

    if name == "mobilenetv2_tflite":
        return mobilenetv2_tflite(work / "mobilenetv2.tflite")
    if name == "mobilenetv2_035_tflite":
        return mobilenetv2_tflite(work / "mobilenetv2_035.tflite", size=96, width=0.35)
    if name == "mobilenetv2_int8_tflite":
        return mobilenetv2_tflite(work / "mobilenetv2_int8.tflite", int8=True)
    if name == "mobilenetv2_035_int8_tflite":
        return mobilenetv2_tflite(work / "mobilenetv2_035_int8.tflite", size=96, width=0.35, int8=True)
    raise SystemExit(f"unknown model {name}")


MODELS = [
    "squeezenet",
    "mobilenetv2",
    "mobilenetv2_035",
    "yolov8",
    "mobilenetv2_tflite",
    "mobilenetv2_035_tflite",
    "mobilenetv2_int8_tflite",
    "mobilenetv2_035_int8_tflite",
    "small_tflite",
    "int8_tflite",
]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--boards", default="rasp4b,rasp5,rasp3b")
    ap.add_argument("--windows", type=int, default=3, help="counted inferences per runtime (after 2 warm-up runs)")
    ap.add_argument("--runs", type=int, default=20, help="interleaved x86 timing rounds")
    ap.add_argument("--x86-target", default="ml_c6i")
    ap.add_argument("--profile", type=int, default=0, help="print the top N functions by instructions")
    args = ap.parse_args()

    from edgefleet.compiler.bench import bench_package
    from edgefleet.compiler.compile import compile_model
    from edgefleet.compiler.verify import sample_inputs
    from edgefleet.cross.emulate import require_sysroot
    from edgefleet.package import open_package
    from edgefleet.signing import create_signing_key, load_public_key, public_path

    boards = [counter.BOARDS[b] for b in args.boards.split(",")]
    for board in boards:
        counter.require_qemu_series(board.qemu)
    plugin = counter.build_plugin()
    say(f"plugin {plugin}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-arm-insn-") as tmp:
        work = Path(tmp)
        key = create_signing_key(work / "bench.key")
        trusted = [load_public_key(public_path(key.path))]
        for name in args.models.split(","):
            model = make_model(name, work)
            reference = "onnxruntime" if model.suffix == ".onnx" else "litert"
            say(
                f"{name}: compiling for {args.x86_target} and timing against {reference} on x86 ({args.runs} interleaved rounds, 1 thread)"
            )
            x86 = compile_model(
                str(model), args.x86_target, output=work / f"{name}-x86.tar.gz", key=key.path, verify=False, quiet=True
            )
            timed = bench_package(x86.package, reference=model, runs=args.runs, threads=1, trusted=trusted)
            x86_ratio = next(
                r.ratio_to_tvm for r in timed.results if r.runtime in ("onnxruntime", "tflite") and r.skipped is None
            )
            for board in boards:
                say(f"{name}: compiling for {board.name}")
                pkg = compile_model(
                    str(model),
                    board.name,
                    output=work / f"{name}-{board.name}.tar.gz",
                    key=key.path,
                    verify=False,
                    quiet=True,
                )
                feed = sample_inputs(pkg.manifest.inputs)[pkg.manifest.inputs[0].name]
                sysroot = require_sysroot(board.sysroot_arch)
                with open_package(pkg.package, None) as opened:
                    say(f"{name} on {board.name}: counting edgefleet ({board.qemu} -cpu {board.cpu})")
                    ours = counter.count(
                        board,
                        sysroot,
                        "edgefleet",
                        opened.library,
                        feed,
                        windows=args.windows,
                        plugin=plugin,
                        profile=args.profile > 0,
                    )
                    _print_profile(f"{name} {board.name} edgefleet", board, ours, args)
                theirs = None
                if board.sysroot_arch == "arm64":
                    say(f"{name} on {board.name}: counting {reference}")
                    theirs = counter.count(
                        board,
                        sysroot,
                        reference,
                        model,
                        feed,
                        windows=args.windows,
                        plugin=plugin,
                        profile=args.profile > 0,
                    )
                    _print_profile(f"{name} {board.name} {reference}", board, theirs, args)
                rows.append((name, board.name, reference, ours, theirs, x86_ratio))
                _print_row(rows[-1])
    print()
    print(
        f"{'model':<27} {'board':<7} {'vs':<12} {'edgefleet M':>12} {'runtime M':>10} {'ratio insn':>10} {'x86 time':>9} {'spread':>8} {'max diff':>9}"
    )
    for row in rows:
        _print_row(row)


def _print_profile(title: str, board, counted, args) -> None:
    """The top functions of a profiled count, in M instructions per inference and share."""
    if not args.profile:
        return
    nm = "arm-linux-gnueabihf-nm" if board.sysroot_arch == "armhf" else "aarch64-linux-gnu-nm"
    per_function = counter.by_function(counted, nm)
    total = sum(per_function.values())
    print(f"\n{title}: {total / args.windows / 1e6:.2f} M per inference, top {args.profile}:")
    for fn, insns in list(per_function.items())[: args.profile]:
        print(f"  {insns / args.windows / 1e6:9.3f} M {100 * insns / total:5.1f}%  {fn}")
    print(flush=True)


def _print_row(row) -> None:
    name, board, reference, ours, theirs, x86_ratio = row
    spread = max(ours.spread, theirs.spread if theirs else 0)
    if theirs is None:
        print(
            f"{name:<27} {board:<7} {'-':<12} {ours.per_inference / 1e6:12.2f} {'-':>10} {'-':>10} {x86_ratio:9.2f} {spread:8d} {'-':>9}",
            flush=True,
        )
        return
    diff = float(np.max(np.abs(ours.output.astype(np.float64).ravel() - theirs.output.astype(np.float64).ravel())))
    print(
        f"{name:<27} {board:<7} {reference:<12} {ours.per_inference / 1e6:12.2f} {theirs.per_inference / 1e6:10.2f} "
        f"{ours.per_inference / theirs.per_inference:10.2f} {x86_ratio:9.2f} {spread:8d} {diff:9.2g}",
        flush=True,
    )


if __name__ == "__main__":
    main()
