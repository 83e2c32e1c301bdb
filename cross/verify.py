"""Numeric verification of ARM packages under QEMU user-mode emulation.

`compile` calls verify_emulated for targets whose run mode is qemu-aarch64 or qemu-arm. The
compiled library runs in the cached sysroot's Python through the agent's own TvmModel, and
its outputs are compared with the reference runtime on x86 (same inputs, same tolerances as
native verification).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.compiler.targets import Target
from edgefleet.compiler.verify import compare, model_feeds
from edgefleet.cross.emulate import run_emulated, sysroot_arch_for
from edgefleet.cross.sysroot import Sysroot, build_command, find_sysroot
from edgefleet.errors import BuildError
from edgefleet.package import TensorSpec, Verification

GUEST_SCRIPT = Path(__file__).with_name("guest_infer.py")
GUEST_TIMEOUT_S = 900

@dataclass
class EmulatedRun:
    outputs: list[np.ndarray]
    run_ms: list[float]
    import_and_load_s: float
    machine: str


def _guest(sysroot: Sysroot, args: list[str], what: str) -> dict:
    try:
        proc = run_emulated(sysroot, ["python3", str(GUEST_SCRIPT), *args], capture=True, timeout=GUEST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} under {sysroot.arch.qemu} took longer than {GUEST_TIMEOUT_S} s", "try a smaller model, or pass --no-verify") from None
    if proc.returncode != 0:
        last = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
        raise BuildError(
            f"{what} under {sysroot.arch.qemu} failed (exit {proc.returncode}): {last[-1][:300] if last else 'no output'}",
            "the library does not run on the target; report the model and target, or pass --no-verify",
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_library_emulated(sysroot: Sysroot, library: Path, feeds: list[np.ndarray], repeat: int = 1) -> EmulatedRun:
    """Run a compiled TVM library in `sysroot` under QEMU on `feeds` (in input order)."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-emu-") as tmp:
        inputs, outputs = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(inputs, *feeds)
        report = _guest(sysroot, ["tvm", str(Path(library).resolve()), str(inputs), str(outputs), str(repeat)], "running the library")
        with np.load(outputs) as data:
            result = [data[f"arr_{i}"] for i in range(len(data.files))]
    return EmulatedRun(result, report["run_ms"], report["import_and_load_s"], report["machine"])


def load_library_emulated(sysroot: Sysroot, library: Path) -> dict:
    """Hand `library` to the sysroot's dynamic loader under QEMU; raises BuildError if it refuses."""
    return _guest(sysroot, ["load", str(Path(library).resolve())], "loading the library")


def verify_emulated(library: Path, target: Target, frontend, model_path: Path, inputs: list[TensorSpec], atol: float, rtol: float) -> Verification:
    """Run `library` under QEMU in the cached sysroot and compare with the x86 reference.

    Without a built sysroot it returns a `skipped` Verification naming the command that builds
    one. For armhf (rasp3b, armv7) it checks that the library loads and returns `skipped` with
    the reason it cannot execute (ArchInfo.note).
    """
    arch = sysroot_arch_for(target)
    sysroot = find_sysroot(arch)
    if sysroot is None:
        return Verification(status="skipped", reason=f"no {arch} sysroot to emulate {target.name}; build it once with `{build_command(arch)}`")
    ran_on = f"{sysroot.arch.qemu} user mode, Debian {sysroot.info.spec.suite} {arch} sysroot {sysroot.info.key}"
    if not sysroot.info.spec.requirements:
        report = load_library_emulated(sysroot, library)
        return Verification(status="skipped", ran_on=ran_on, reason=f"{target.name}: loaded by the {report['machine']} dynamic loader under {sysroot.arch.qemu}, not executed: {sysroot.arch.note}")
    feeds = model_feeds(frontend, model_path, inputs)
    expected = frontend.reference_run(model_path, feeds)
    run = run_library_emulated(sysroot, library, [feeds[s.name] for s in inputs])
    max_abs, max_rel, ok = compare(run.outputs, expected, atol, rtol)
    return Verification(
        status="passed" if ok else "failed",
        reference=frontend.reference_name(),
        ran_on=ran_on,
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        atol=atol,
        rtol=rtol,
    )
