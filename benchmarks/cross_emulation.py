"""Benchmark (not a test): sysroot build cold vs warm, and emulated vs native inference.

    python benchmarks/cross_emulation.py [--model M.onnx] [--repeat 5] [--skip-cold]

Cold builds a fresh arm64 sysroot in a temporary cache (network: the Debian mirror and PyPI);
warm asks the same cache again. Inference compiles MODEL for rasp4b and x86_64 and runs each
REPEAT times: natively, and under qemu-aarch64 in the cached sysroot. Prints the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

LIGHT = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data" / "light"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=LIGHT / "light_squeezenet.onnx")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true", help="only time the warm lookup")
    args = parser.parse_args()

    from edgefleet.agent.runtime_worker import shared_worker
    from edgefleet.compiler.compile import compile_model
    from edgefleet.compiler.verify import sample_inputs
    from edgefleet.cross.sysroot import build_sysroot
    from edgefleet.cross.verify import run_library_emulated
    from edgefleet.package import open_package
    from edgefleet.signing import create_signing_key

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        tmp = Path(tmp)
        if not args.skip_cold:
            start = time.perf_counter()
            cold_root = build_sysroot("arm64", cache=tmp / "cold-cache", quiet=True)
            cold = time.perf_counter() - start
            print(f"sysroot arm64 cold build: {cold:.1f} s  (steps: {cold_root.info.step_seconds})")
        start = time.perf_counter()
        sysroot = build_sysroot("arm64", cache=tmp / "cold-cache" if not args.skip_cold else None, quiet=True)
        warm = time.perf_counter() - start
        print(
            f"sysroot arm64 warm (cached): {warm * 1000:.1f} ms"
            + ("" if args.skip_cold else f"  -> cold/warm {cold / warm:.0f}x")
        )

        key = create_signing_key(tmp / "bench.key")
        arm = compile_model(
            str(args.model), "rasp4b", output=tmp / "arm.tar.gz", key=key.path, verify=False, quiet=True
        )
        x86 = compile_model(
            str(args.model), "x86_64", output=tmp / "x86.tar.gz", key=key.path, verify=False, quiet=True
        )
        feeds = sample_inputs(arm.manifest.inputs)
        ordered = [feeds[s.name] for s in arm.manifest.inputs]
        with open_package(x86.package, None) as opened:
            model = shared_worker().load(opened.library)  # the camera runtime, as the emulated run uses
            native = model.timed_run(ordered, args.repeat + 1)[1][1:]  # the first call warms up, as below
        with open_package(arm.package, None) as opened:
            emulated = run_library_emulated(sysroot, opened.library, ordered, repeat=args.repeat + 1)
        native_ms = statistics.median(native)
        emu_ms = statistics.median(emulated.run_ms[1:])
        print(
            f"model {args.model.name}: native x86_64 median {native_ms:.2f} ms, emulated aarch64 (qemu user) median {emu_ms:.2f} ms "
            f"-> emulated/native {emu_ms / native_ms:.1f}x; emulated python import + load {emulated.import_and_load_s:.1f} s"
        )
        np.testing.assert_allclose(emulated.outputs[0], model.run(ordered)[0], atol=1e-4, rtol=1e-3)


if __name__ == "__main__":
    main()
