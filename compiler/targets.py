"""The target registry: every name `--target` accepts and what it compiles to.

Each entry says what TVM target it compiles to, which cross compiler links it, and how it
runs in tests on an x86_64 machine (`native`, `qemu-aarch64`, `qemu-arm`, `gpu`, `none`).
SageMaker Neo's target names are accepted as they are, so Neo users can switch; so are
Neo's TargetPlatform form (os / arch / accelerator) and a raw TVM target dict.
"""

from __future__ import annotations

import difflib
import json
import platform
import shutil
from dataclasses import dataclass, field
from typing import Any, Literal

from edgefleet.errors import MissingToolError, UnknownTargetError

RunMode = Literal["native", "qemu-aarch64", "qemu-arm", "gpu", "none"]
Arch = Literal["x86_64", "aarch64", "armv7"]

# Debian package that provides each cross compiler, for the "missing tool" message.
CROSS_PACKAGES = {
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "arm-linux-gnueabihf-gcc": "gcc-arm-linux-gnueabihf",
}

_AARCH64_HOST = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}


def _arm64(mcpu: str, mattr: list[str] | None = None) -> dict[str, Any]:
    return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": mcpu, "mattr": mattr or ["+neon"]}


def _armv7(mcpu: str) -> dict[str, Any]:
    # Debian's armhf userland is hard-float: objects must use VFP register arguments to link.
    return {
        "kind": "llvm",
        "mtriple": "armv7l-linux-gnueabihf",
        "mcpu": mcpu,
        "mattr": ["+neon", "+vfp4"],
        "mfloat-abi": "hard",
    }


def _x86(mcpu: str) -> dict[str, Any]:
    return {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu}


def _cuda(arch: str) -> dict[str, Any]:
    return {"kind": "cuda", "arch": arch, "host": dict(_AARCH64_HOST)}


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: Arch
    tvm_target: dict[str, Any] | None
    cross_cc: str | None
    run_mode: RunMode
    device: Literal["cpu", "cuda", "neuron"] = "cpu"
    neo: bool = False
    # For Inferentia: the Neuron compiler executable that must be on PATH.
    neuron_compiler: str | None = None
    aliases: tuple[str, ...] = field(default=())

    def runs_here(self) -> bool:
        """Whether the compiled package can execute natively on this machine."""
        return self.run_mode == "native" and platform.machine() in ("x86_64", "AMD64") and self.arch == "x86_64"

    def check_toolchain(self) -> None:
        """Raise a MissingToolError naming the Debian/pip package when a needed tool is absent."""
        if self.neuron_compiler and shutil.which(self.neuron_compiler) is None:
            raise MissingToolError(
                f"target {self.name} (AWS Inferentia) needs the AWS Neuron compiler `{self.neuron_compiler}`, which is not installed",
                f"install it from AWS's package index (it is not on PyPI): "
                f"pip install --extra-index-url https://pip.repos.neuron.amazonaws.com {self.neuron_compiler}; "
                "or compile for a CPU target such as ml_c5",
            )
        if self.cross_cc and shutil.which(self.cross_cc) is None:
            raise MissingToolError(
                f"target {self.name} needs the cross compiler `{self.cross_cc}`, which is not on PATH",
                f"apt-get install {CROSS_PACKAGES.get(self.cross_cc, self.cross_cc)}",
            )


_ENTRIES: list[Target] = [
    # Raspberry Pi boards (Neo: rasp3b, rasp4b).
    Target(
        "rasp3b",
        "Raspberry Pi 3 Model B, 32-bit Raspberry Pi OS (Cortex-A53, armv7 hard-float)",
        "armv7",
        _armv7("cortex-a53"),
        "arm-linux-gnueabihf-gcc",
        "qemu-arm",
        neo=True,
    ),
    Target(
        "rasp4b",
        "Raspberry Pi 4 Model B, 64-bit OS (Cortex-A72)",
        "aarch64",
        _arm64("cortex-a72"),
        "aarch64-linux-gnu-gcc",
        "qemu-aarch64",
        neo=True,
    ),
    Target(
        "rasp5",
        "Raspberry Pi 5, 64-bit OS (Cortex-A76)",
        "aarch64",
        _arm64("cortex-a76", ["+neon", "+dotprod", "+fullfp16"]),
        "aarch64-linux-gnu-gcc",
        "qemu-aarch64",
    ),
    # NVIDIA Jetson: CUDA kernels plus an aarch64 host library; compiled here, run on the board.
    Target(
        "jetson_nano",
        "NVIDIA Jetson Nano (Maxwell sm_53, Cortex-A57 host)",
        "aarch64",
        _cuda("sm_53"),
        "aarch64-linux-gnu-gcc",
        "gpu",
        device="cuda",
        neo=True,
    ),
    Target(
        "jetson_tx2",
        "NVIDIA Jetson TX2 (Pascal sm_62)",
        "aarch64",
        _cuda("sm_62"),
        "aarch64-linux-gnu-gcc",
        "gpu",
        device="cuda",
        neo=True,
    ),
    Target(
        "jetson_xavier",
        "NVIDIA Jetson AGX Xavier / Xavier NX (Volta sm_72)",
        "aarch64",
        _cuda("sm_72"),
        "aarch64-linux-gnu-gcc",
        "gpu",
        device="cuda",
        neo=True,
    ),
    Target(
        "jetson_orin",
        "NVIDIA Jetson AGX Orin / Orin Nano (Ampere sm_87)",
        "aarch64",
        _cuda("sm_87"),
        "aarch64-linux-gnu-gcc",
        "gpu",
        device="cuda",
    ),
    # EC2 instance families as Neo names them.
    Target("ml_c5", "EC2 C5 (Intel Skylake-SP, AVX-512)", "x86_64", _x86("skylake-avx512"), None, "native", neo=True),
    Target(
        "ml_m5",
        "EC2 M5 (Intel Skylake-SP / Cascade Lake, AVX-512)",
        "x86_64",
        _x86("skylake-avx512"),
        None,
        "native",
        neo=True,
    ),
    Target("ml_c6i", "EC2 C6i (Intel Ice Lake, AVX-512)", "x86_64", _x86("icelake-server"), None, "native", neo=True),
    Target(
        "ml_inf1",
        "EC2 Inf1 (AWS Inferentia, Neuron SDK neuron-cc)",
        "x86_64",
        None,
        None,
        "none",
        device="neuron",
        neo=True,
        neuron_compiler="neuron-cc",
    ),
    Target(
        "ml_inf2",
        "EC2 Inf2 (AWS Inferentia2, Neuron SDK neuronx-cc)",
        "x86_64",
        None,
        None,
        "none",
        device="neuron",
        neo=True,
        neuron_compiler="neuronx-cc",
    ),
    # Generic CPUs.
    Target(
        "x86_64",
        "Any x86-64 Linux machine with AVX2 (x86-64-v3)",
        "x86_64",
        _x86("x86-64-v3"),
        None,
        "native",
        aliases=("amd64", "x86-64"),
    ),
    Target(
        "aarch64",
        "Any 64-bit ARM Linux machine (Cortex-A53 baseline, NEON)",
        "aarch64",
        _arm64("cortex-a53"),
        "aarch64-linux-gnu-gcc",
        "qemu-aarch64",
        aliases=("arm64",),
    ),
    Target(
        "armv7",
        "Any 32-bit ARMv7 hard-float Linux machine with NEON",
        "armv7",
        _armv7("cortex-a7"),
        "arm-linux-gnueabihf-gcc",
        "qemu-arm",
        aliases=("armhf", "arm_eabihf"),
    ),
]

TARGETS: dict[str, Target] = {t.name: t for t in _ENTRIES}
_ALIASES: dict[str, str] = {alias: t.name for t in _ENTRIES for alias in t.aliases}

# Neo's TargetPlatform: (Os, Arch, Accelerator) -> registry name.
_PLATFORMS: dict[tuple[str, str, str | None], str] = {
    ("LINUX", "X86_64", None): "x86_64",
    ("LINUX", "ARM64", None): "aarch64",
    ("LINUX", "ARM_EABIHF", None): "armv7",
    ("LINUX", "ARM64", "NVIDIA"): "jetson_xavier",
    ("ANDROID", "ARM64", None): "aarch64",
    ("ANDROID", "ARM_EABIHF", None): "armv7",
}
# Neo's NVIDIA compiler option `gpu-code` picks the CUDA arch.
_GPU_CODE = {"sm_53": "jetson_nano", "sm_62": "jetson_tx2", "sm_72": "jetson_xavier", "sm_87": "jetson_orin"}


def _suggest(name: str) -> str:
    candidates = list(TARGETS) + list(_ALIASES)
    close = difflib.get_close_matches(name.lower(), candidates, n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""


def _from_platform(spec: dict[str, Any]) -> Target:
    norm = {k.lower(): v for k, v in spec.items()}
    os_ = str(norm.get("os", "LINUX")).upper()
    arch = str(norm.get("arch", "")).upper()
    accel = norm.get("accelerator")
    accel = str(accel).upper() if accel else None
    gpu_code = norm.get("gpu-code") or norm.get("gpu_code")
    if accel == "NVIDIA" and gpu_code:
        name = _GPU_CODE.get(str(gpu_code).lower())
        if name is None:
            raise UnknownTargetError(
                f"gpu-code {gpu_code!r} is not a known Jetson architecture", f"use one of {', '.join(_GPU_CODE)}"
            )
        return TARGETS[name]
    name = _PLATFORMS.get((os_, arch, accel))
    if name is None:
        known = ", ".join(f"os={o} arch={a}" + (f" accelerator={c}" if c else "") for o, a, c in _PLATFORMS)
        raise UnknownTargetError(
            f"target platform os={os_} arch={arch} accelerator={accel} is not supported", f"use one of: {known}"
        )
    return TARGETS[name]


def _from_tvm_dict(spec: dict[str, Any]) -> Target:
    import tvm  # heavy: imported only when a raw target is given

    try:
        canonical = tvm.target.Target(spec)
    except Exception as exc:  # TVM raises its own error types for bad dicts
        raise UnknownTargetError(
            f"TVM rejects the target dict {json.dumps(spec)}: {str(exc).splitlines()[0]}",
            "see `edgefleet targets` for working dicts",
        ) from None
    kind = canonical.kind.name
    host = spec.get("host", spec) if kind != "llvm" else spec
    triple = str(host.get("mtriple", ""))
    if triple.startswith("aarch64"):
        arch, cc, run = "aarch64", "aarch64-linux-gnu-gcc", "qemu-aarch64"
    elif triple.startswith("arm"):
        arch, cc, run = "armv7", "arm-linux-gnueabihf-gcc", "qemu-arm"
    elif triple in ("", "x86_64-linux-gnu") or triple.startswith("x86_64"):
        arch, cc, run = "x86_64", None, "native"
    else:
        raise UnknownTargetError(
            f"mtriple {triple!r} is not one edgefleet can link",
            "use aarch64-linux-gnu, armv7l-linux-gnueabihf or x86_64-linux-gnu",
        )
    device = "cuda" if kind == "cuda" else "cpu"
    if device == "cuda":
        run = "gpu"
    return Target("custom", f"raw TVM target {json.dumps(spec, sort_keys=True)}", arch, spec, cc, run, device=device)


def resolve_target(spec: str) -> Target:
    """Turn a `--target` value into a Target.

    Accepts a registry name or alias (case-insensitive), a JSON object that is either a raw TVM
    target dict (has "kind") or Neo's TargetPlatform (Os / Arch / Accelerator, optionally with
    "gpu-code"), or the compact platform form `os=linux,arch=arm64[,accelerator=nvidia]`.
    """
    text = spec.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UnknownTargetError(
                f"--target looks like JSON but does not parse: {exc}",
                'quote it, e.g. --target \'{"kind": "llvm", "mcpu": "skylake"}\'',
            ) from None
        if not isinstance(obj, dict):
            raise UnknownTargetError(
                "--target JSON must be an object", "pass a TVM target dict or a TargetPlatform object"
            )
        return _from_tvm_dict(obj) if "kind" in obj else _from_platform(obj)
    if "=" in text:
        pairs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        return _from_platform(pairs)
    key = text.lower()
    if key in TARGETS:
        return TARGETS[key]
    if key in _ALIASES:
        return TARGETS[_ALIASES[key]]
    raise UnknownTargetError(f"unknown target {spec!r}", f"{_suggest(key)}run `edgefleet targets` for the list")
