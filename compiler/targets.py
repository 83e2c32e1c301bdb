"""The target registry: every name `--target` accepts and what it compiles to.

Each entry says what TVM target it compiles to, which cross compiler links it, and how it
runs in tests on an x86_64 machine (`native`, `qemu-aarch64`, `qemu-arm`, `gpu`, `none`).
SageMaker Neo's target names are accepted as they are, so Neo users can switch; so are
Neo's TargetPlatform form (os / arch / accelerator) and a raw TVM target dict.
"""

from __future__ import annotations

import ast
import difflib
import json
import platform
import re
import shutil
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class IsaLevel:
    """An x86-64 micro-architecture level (psABI): the LLVM CPU to build for and the Linux
    /proc/cpuinfo flags a CPU needs to run what it builds (the agent checks them at load)."""

    name: str
    tvm_target: dict[str, Any]
    cpu_features: tuple[str, ...]
    # Built only for models with int8 tensors: for float models its code would be the level below's.
    int8_only: bool = False


_V2 = ("cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3")
_V3 = (*_V2, "abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave")
_V4 = (*_V3, "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl")
ISA_LEVELS = {
    "x86-64-v3": IsaLevel("x86-64-v3", _x86("x86-64-v3"), _V3),
    # +avx512f names the level's widest registers to the schedules' register tiling (schedules.py).
    "x86-64-v4": IsaLevel("x86-64-v4", {**_x86("x86-64-v4"), "mattr": ["+avx512f"]}, _V4),
    # x86-64-v4 with AVX-512 VNNI (Ice Lake, Zen 4 onward): int8 convolutions with vpdpbusd (graph.has_vnni).
    "x86-64-v4-vnni": IsaLevel(
        "x86-64-v4-vnni",
        {**_x86("x86-64-v4"), "mattr": ["+avx512f", "+avx512vnni"]},
        (*_V4, "avx512_vnni"),
        int8_only=True,
    ),
}


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
    # Generic targets: the ISA level of the default library, then the better levels built beside it
    # into the same package; the agent loads the best one its CPU runs (docs/package-format.md).
    isa_levels: tuple[str, ...] = field(default=())

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
        ISA_LEVELS["x86-64-v3"].tvm_target,
        None,
        "native",
        aliases=("amd64", "x86-64"),
        isa_levels=("x86-64-v3", "x86-64-v4", "x86-64-v4-vnni"),
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
    ("ANDROID", "ARM64", None): "aarch64",
    ("ANDROID", "ARM_EABIHF", None): "armv7",
}
# Neo's NVIDIA compiler option `gpu-code` picks the board (its CUDA arch).
_GPU_CODE = {"sm_53": "jetson_nano", "sm_62": "jetson_tx2", "sm_72": "jetson_xavier", "sm_87": "jetson_orin"}
# The first CUDA release that compiles for each arch: a board whose CUDA (`cuda-ver`) is older
# cannot load kernels for it.
_MIN_CUDA = {"sm_53": (7, 0), "sm_62": (8, 0), "sm_72": (10, 0), "sm_87": (11, 4)}
_PLATFORM_KEYS = ("os", "arch", "accelerator")
# Every key Neo documents for OutputConfig.CompilerOptions (names normalized: lower case, "-").
# gpu-code, cuda-ver, mcpu and mattr are honoured; the rest are refused with the reason.
_HONOURED_OPTIONS = ("gpu-code", "cuda-ver", "mcpu", "mattr")
_REFUSED_OPTIONS = {
    "trt-ver": "edgefleet compiles Jetson models to TVM CUDA kernels, not TensorRT engines, so no TensorRT "
    "version applies",
    "dtype": "input data types are read from the model itself (ONNX and TFLite declare them)",
    "android-platform": "edgefleet builds Linux (glibc) libraries, not Android NDK ones",
    "class-labels": "it is a CoreML option; give labels with --labels",
    "precision-mode": "it is an Elastic Inference option, a target edgefleet does not compile for",
    "signature-def-key": "it is an Elastic Inference option, a target edgefleet does not compile for",
    "output-names": "it is an Elastic Inference option, a target edgefleet does not compile for",
}


def _suggest(name: str) -> str:
    candidates = list(TARGETS) + list(_ALIASES)
    close = difflib.get_close_matches(name.lower(), candidates, n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""


def _compiler_options(raw: Any) -> dict[str, Any]:
    """Neo's CompilerOptions: an object, or a string holding one (JSON, or the Python-literal
    quoting Neo's own examples use), with names normalized."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            try:
                raw = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raw = None
    if not isinstance(raw, dict):
        raise UnknownTargetError(
            'CompilerOptions must be an object such as {"gpu-code": "sm_53"}',
            "Neo's Inferentia flag string is for ml_inf targets, which take no CompilerOptions here",
        )
    options = {str(k).lower().replace("_", "-"): v for k, v in raw.items()}
    for key in options:
        if key in _REFUSED_OPTIONS:
            raise UnknownTargetError(
                f"CompilerOptions {key!r} is not supported: {_REFUSED_OPTIONS[key]}", f"remove {key!r}"
            )
        if key not in _HONOURED_OPTIONS:
            raise UnknownTargetError(
                f"CompilerOptions {key!r} is not an option Neo documents",
                f"use {', '.join(_HONOURED_OPTIONS)} (docs/compiler.md, Targets)",
            )
    return options


def _split_platform(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Os/Arch/Accelerator, compiler options) from a TargetPlatform object, an OutputConfig-like
    {"TargetPlatform": ..., "CompilerOptions": ...}, or the flat form with options beside Os/Arch."""
    norm = {k.lower(): v for k, v in spec.items()}
    if isinstance(norm.get("targetplatform"), dict):
        norm = {**{k.lower(): v for k, v in norm.pop("targetplatform").items()}, **norm}
    platform_ = {k: norm.pop(k) for k in _PLATFORM_KEYS if k in norm}
    options = _compiler_options(norm.pop("compileroptions", {}))
    return platform_, {**options, **_compiler_options(norm)} if norm else options


def _cuda_version(value: Any) -> tuple[int, int]:
    try:
        major, minor = (int(p) for p in str(value).split(".")[:2])
    except ValueError:
        raise UnknownTargetError(f"cuda-ver {value!r} is not a version x.y", "for example cuda-ver 10.2") from None
    return major, minor


def _nvidia(options: dict[str, Any]) -> Target:
    gpu_code = options.get("gpu-code")
    if not gpu_code:
        raise UnknownTargetError(
            "Accelerator NVIDIA needs CompilerOptions gpu-code (the board's CUDA arch)",
            f"add gpu-code: {', '.join(f'{c} ({n})' for c, n in _GPU_CODE.items())}",
        )
    code = str(gpu_code).lower()
    if code not in _GPU_CODE:
        raise UnknownTargetError(
            f"gpu-code {gpu_code!r} is not a known Jetson architecture", f"use one of {', '.join(_GPU_CODE)}"
        )
    for key in ("mcpu", "mattr"):
        if key in options:
            raise UnknownTargetError(
                f"CompilerOptions {key!r} is a CPU option; Jetson targets build their host code for generic aarch64",
                f"remove {key!r}",
            )
    if "cuda-ver" in options and _cuda_version(options["cuda-ver"]) < _MIN_CUDA[code]:
        need = ".".join(map(str, _MIN_CUDA[code]))
        raise UnknownTargetError(
            f"gpu-code {code} needs CUDA {need} or newer; cuda-ver {options['cuda-ver']} cannot load its kernels",
            "check the board's JetPack: the gpu-code or the cuda-ver is wrong",
        )
    return TARGETS[_GPU_CODE[code]]


def _mattr(value: Any) -> list[str]:
    """Neo gives mattr as a list (['+neon']); a string "+neon,+vfp4" or "+neon+vfp4" is split."""
    flags = (
        [f for part in re.split(r"[,\s]+", value) for f in re.split(r"(?=\+)", part) if f]
        if isinstance(value, str)
        else value
    )
    if not isinstance(flags, list) or not flags or not all(isinstance(f, str) and f[:1] in "+-" for f in flags):
        raise UnknownTargetError(f"mattr {value!r} is not a list of +feature / -feature flags", "e.g. ['+neon']")
    return flags


def _with_cpu_options(target: Target, options: dict[str, Any]) -> Target:
    """`target` with Neo's CPU options applied to its TVM target, each checked against LLVM."""
    for key in ("gpu-code", "cuda-ver"):
        if key in options:
            raise UnknownTargetError(f"CompilerOptions {key!r} applies to Accelerator NVIDIA only", f"remove {key!r}")
    if not options:
        return target
    from tvm.target import Target as TvmTarget  # heavy: only when options are given
    from tvm.target import codegen

    tvm_target = dict(target.tvm_target or {})
    triple = tvm_target["mtriple"]
    if "mcpu" in options:
        if not codegen.llvm_is_valid_cpu(str(options["mcpu"]), triple):
            raise UnknownTargetError(
                f"mcpu {options['mcpu']!r} is not a CPU LLVM knows for {triple}", "e.g. cortex-a72, skylake-avx512"
            )
        tvm_target["mcpu"] = str(options["mcpu"])
    if "mattr" in options:
        tvm_target["mattr"] = _mattr(options["mattr"])
        enabled = codegen.llvm_get_cpu_features(TvmTarget(tvm_target))
        unknown = [f for f in tvm_target["mattr"] if (f[1:] in enabled) != (f[0] == "+")]
        if unknown:  # LLVM itself only warns and ignores them
            raise UnknownTargetError(
                f"mattr {', '.join(unknown)} is not a feature LLVM can set for {triple} ({tvm_target.get('mcpu')})",
                "use LLVM feature names, e.g. +neon, +dotprod, +avx512f",
            )
    shown = ", ".join(f"{k}={options[k]}" for k in ("mcpu", "mattr") if k in options)
    return replace(target, tvm_target=tvm_target, description=f"{target.description}; CompilerOptions {shown}")


def _from_platform(spec: dict[str, Any]) -> Target:
    platform_, options = _split_platform(spec)
    os_ = str(platform_.get("os", "LINUX")).upper()
    arch = str(platform_.get("arch", "")).upper()
    accel = platform_.get("accelerator")
    accel = str(accel).upper() if accel else None
    if accel == "NVIDIA" and arch == "ARM64" and os_ == "LINUX":
        return _nvidia(options)
    name = _PLATFORMS.get((os_, arch, accel))
    if name is None:
        known = ", ".join(f"os={o} arch={a}" + (f" accelerator={c}" if c else "") for o, a, c in _PLATFORMS)
        raise UnknownTargetError(
            f"target platform os={os_} arch={arch} accelerator={accel} is not supported", f"use one of: {known}"
        )
    return _with_cpu_options(TARGETS[name], options)


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
    target dict (has "kind") or Neo's TargetPlatform (Os / Arch / Accelerator, with Neo's
    CompilerOptions inside, beside it or as {"TargetPlatform": ..., "CompilerOptions": ...}), or
    the compact form `os=linux,arch=arm64[,accelerator=nvidia,gpu-code=sm_53][,mcpu=...]`.
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
