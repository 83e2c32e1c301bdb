"""Compile time per model and target, as a table (not a test).

    python benchmarks/compile_times.py                                   # default models x targets
    python benchmarks/compile_times.py --models squeezenet --targets x86_64 rasp4b --verify

Each cell is one in-process `compile_model` (untuned, --no-verify unless --verify) with a
throwaway signing key. Columns: per-stage seconds, total, package size, and the total as a ratio
of the same model's x86_64 compile measured in this run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIGHT = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data" / "light"
MODELS = {
    "squeezenet": LIGHT / "light_squeezenet.onnx",
    "resnet50": LIGHT / "light_resnet50.onnx",
    "densenet121": LIGHT / "light_densenet121.onnx",
    "small_cnn": None,  # built by the tests' helper
    "small_tflite": None,
}
STAGES = ["load", "import", "optimize", "build", "export", "verify", "sign"]


def model_path(name: str, work: Path) -> Path:
    if MODELS.get(name) is not None:
        return MODELS[name]
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "compiler")]  # compiler_testlib imports support.cli
    from compiler_testlib import small_onnx_cnn, small_tflite_cnn

    return (
        small_onnx_cnn(work / "small_cnn.onnx")
        if name == "small_cnn"
        else small_tflite_cnn(work / "small_tflite.tflite")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["small_cnn", "small_tflite", "squeezenet", "resnet50"], choices=list(MODELS)
    )
    parser.add_argument("--targets", nargs="+", default=["x86_64", "rasp4b", "rasp3b", "jetson_xavier"])
    parser.add_argument("--verify", action="store_true", help="include the numeric check where the target runs here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        os.environ["EDGEFLEET_HOME"] = str(work / "home")
        os.environ.pop("EDGEFLEET_SIGNING_KEY", None)
        from edgefleet.compiler.compile import compile_model
        from edgefleet.signing import create_signing_key

        key = create_signing_key()
        rows = []
        for model in args.models:
            path = model_path(model, work)
            baseline = None
            for target in args.targets:
                start = time.perf_counter()
                result = compile_model(
                    str(path),
                    target,
                    output=work / f"{model}-{target}.tar.gz",
                    key=key.path,
                    verify=args.verify,
                    quiet=True,
                )
                total = time.perf_counter() - start
                baseline = total if target == "x86_64" else baseline
                rows.append(
                    [
                        model,
                        target,
                        *(result.timings.get(s) for s in STAGES),
                        total,
                        result.package.stat().st_size / 1e6,
                        total / baseline if baseline else None,
                    ]
                )
                print(f"  {model} {target}: {total:.2f} s", file=sys.stderr, flush=True)

    header = ["model", "target", *STAGES, "total s", "pkg MB", "vs x86_64"]
    cells = [[str(c) if isinstance(c, str) else ("-" if c is None else f"{c:.2f}") for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
