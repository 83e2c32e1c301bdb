"""Numeric verification of ARM packages under QEMU user-mode emulation.

`compile` calls verify_emulated for targets whose run mode is qemu-aarch64 or qemu-arm. The
compiled library runs in the cached sysroot's Python on the runtime bundle of that
architecture, the same C ABI and libraries a camera loads, and its outputs are compared with
the reference runtime on x86 (same inputs, same tolerances as native verification).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.compiler.targets import Target
from edgefleet.compiler.verify import verify_on
from edgefleet.cross.emulate import emulated_worker, sysroot_arch_for
from edgefleet.cross.sysroot import Sysroot, build_command, find_sysroot
from edgefleet.package import TensorSpec, Verification


@dataclass
class EmulatedRun:
    outputs: list[np.ndarray]
    run_ms: list[float]
    import_and_load_s: float
    machine: str
    runtime_key: str


def run_library_emulated(sysroot: Sysroot, library: Path, feeds: list[np.ndarray], repeat: int = 1) -> EmulatedRun:
    """Run a compiled TVM library in `sysroot` under QEMU on `feeds` (in input order)."""
    with emulated_worker(sysroot) as worker:
        described = worker.describe()
        model = worker.load(library)
        outputs, times = model.timed_run(feeds, repeat)
    return EmulatedRun(outputs, times, model.load_s, described["machine"], described["runtime_key"])


def verify_emulated(
    library: Path, target: Target, frontend, model_path: Path, inputs: list[TensorSpec], atol: float, rtol: float
) -> Verification:
    """Run `library` under QEMU in the cached sysroot and compare with the x86 reference.

    Without a built sysroot it returns a `skipped` Verification naming the command that builds one.
    """
    arch = sysroot_arch_for(target)
    sysroot = find_sysroot(arch)
    if sysroot is None:
        return Verification(
            status="skipped",
            reason=f"no {arch} sysroot to emulate {target.name}; build it once with `{build_command(arch)}`",
        )
    with emulated_worker(sysroot) as worker:
        runtime = worker.describe()["runtime_key"]
        ran_on = f"{sysroot.arch.qemu} user mode, Debian {sysroot.info.spec.suite} {arch} sysroot {sysroot.info.key}, edgefleet runtime {runtime}"
        return verify_on(worker.load(library), ran_on, frontend, model_path, inputs, atol, rtol)
