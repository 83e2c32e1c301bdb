"""Runs inside the emulated ARM Python (started by edgefleet.cross.verify), never on the host.

    python3 guest_infer.py tvm  LIBRARY INPUTS.npz OUTPUTS.npz REPEAT
        load LIBRARY with the agent's own TvmModel, run it on the arrays of INPUTS.npz (arr_0, arr_1, ...
        in input order) REPEAT times, save the outputs to OUTPUTS.npz and print one JSON line of timings.
    python3 guest_infer.py load LIBRARY
        only hand LIBRARY to the target's dynamic loader (for armhf, where no TVM runtime exists) and
        print one JSON line naming the exported TVM functions.

It imports nothing from the compiler so it runs in a sysroot that holds only the agent's wheels.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
import time
from pathlib import Path


def run_tvm(library: str, inputs: str, outputs: str, repeat: int) -> dict:
    import numpy as np

    start = time.perf_counter()
    from edgefleet.agent.runtime import TvmModel

    model = TvmModel(Path(library))
    load_s = time.perf_counter() - start
    with np.load(inputs) as data:
        feeds = [data[f"arr_{i}"] for i in range(len(data.files))]
    times = []
    result = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        result = model.run(feeds)
        times.append((time.perf_counter() - t0) * 1000)
    np.savez(outputs, *result)
    return {"machine": platform.machine(), "import_and_load_s": load_s, "run_ms": times}


def load_only(library: str) -> dict:
    # RTLD_LAZY: the TVM FFI functions the kernels call are resolved on first call, which never
    # comes; everything else (ELF class, float ABI, libc symbol versions) is checked here.
    lib = ctypes.CDLL(library, mode=os.RTLD_LAZY)
    exported = [name for name in ("__tvm_ffi__library_bin", "__tvm_ffi__library_ctx") if hasattr(lib, name)]
    return {"machine": platform.machine(), "loaded": True, "exported": exported}


def main(argv: list[str]) -> int:
    mode = argv[1]
    if mode == "tvm":
        report = run_tvm(argv[2], argv[3], argv[4], int(argv[5]))
    elif mode == "load":
        report = load_only(argv[2])
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
