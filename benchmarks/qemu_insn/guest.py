"""Runs inside the ARM guest (QEMU with the insn_count plugin): one runtime, one model, counted inferences.

    python3 guest.py --runtime edgefleet|onnxruntime|litert --model M --input X.npy --output Y.npy --mark N [--windows 3] [--warmup 2] [--maps F]

Each counted inference sits between close(N) and close(N + 1), the syscalls the plugin watches.
Every runtime runs on one thread and is called through its Python API, as a camera would.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def mark(value: int) -> None:
    try:
        os.close(value)
    except OSError:
        pass  # EBADF, expected: the syscall itself is the signal


def runner(runtime: str, model: str):
    if runtime == "edgefleet":
        from edgefleet.agent.runtime import TvmModel, set_threads

        set_threads(1)
        tvm_model = TvmModel(Path(model), "cpu")
        return lambda x: tvm_model.run([x])[0]
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]
    if runtime == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model, num_threads=1)
        interp.allocate_tensors()
        src, dst = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

        def run(x):
            interp.set_tensor(src, x)
            interp.invoke()
            return interp.get_tensor(dst)

        return run
    raise SystemExit(f"unknown runtime {runtime!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("runtime", "model", "input", "output"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--mark", type=int, required=True)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--maps", help="write the guest's /proc/self/maps here (to place profiled blocks)")
    args = ap.parse_args()
    x = np.load(args.input)
    run = runner(args.runtime, args.model)
    for _ in range(args.warmup):
        out = run(x)
    np.save(args.output, np.asarray(out))
    if args.maps:
        Path(args.maps).write_text(Path("/proc/self/maps").read_text())
    for _ in range(args.windows):
        mark(args.mark)
        run(x)
        mark(args.mark + 1)


if __name__ == "__main__":
    main()
