"""Numeric verification of ARM packages under QEMU user-mode emulation."""

from __future__ import annotations

from pathlib import Path

from edgefleet.compiler.targets import Target
from edgefleet.package import TensorSpec, Verification


def verify_emulated(library: Path, target: Target, frontend, model_path: Path, inputs: list[TensorSpec], atol: float, rtol: float) -> Verification:
    return Verification(status="skipped", reason=f"{target.name} runs under {target.run_mode}; emulated verification is not available yet")
