"""The camera runtime bundle: TVM's runtime built for one architecture, without the compiler.

A bundle is one folder (format version 1, see docs/runtime.md):

    runtime.json                   RuntimeBundleInfo below; written last, so its presence means complete
    lib/libedgefleet_runtime.so    edgefleet's C ABI over the Relax VM (agent/native), called via ctypes
    lib/libtvm_runtime.so          TVM's runtime, built from the sources of the TVM the compiler uses
    lib/libtvm_runtime_extra.so    TVM's sort/random kernels that compiled models may call
    lib/libtvm_ffi.so              TVM's FFI

`edgefleet runtime build --arch ...` (cross/runtime_build.py) makes bundles; the agent finds
one with `find_bundle` and refuses a package whose `RuntimeRequirement` the bundle cannot meet.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import ValidationError

from edgefleet.errors import MissingToolError, PackageIntegrityError, TargetNotRunnableError, UsageError
from edgefleet.package import RuntimeRequirement, minor_version, sha256_file
from edgefleet.strict import Strict, first_error

FORMAT_VERSION: Final = 1
# The C ABI of libedgefleet_runtime.so (EF_ABI_VERSION in agent/native/edgefleet_runtime.cc).
RUNTIME_ABI = 3
BUNDLE_ENV = "EDGEFLEET_RUNTIME"
CACHE_ENV = "EDGEFLEET_RUNTIME_CACHE"
INFO_FILE = "runtime.json"
SHIM = "libedgefleet_runtime.so"
# Load order: each library's dependencies come before it.
LIBRARIES = ("libtvm_ffi.so", "libtvm_runtime.so", "libtvm_runtime_extra.so", SHIM)
# A CUDA build (on a Jetson, docs/runtime.md) adds TVM's CUDA device API, loaded after the runtime it extends.
CUDA_LIBRARY = "libtvm_runtime_cuda.so"
# Architecture names as packages state them (Target.arch), and the aliases people type.
ARCH_ALIASES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv7": "armv7",
    "armhf": "armv7",
    "armv7l": "armv7",
    "armv8l": "armv7",
}


class CudaInfo(Strict):
    version: str  # the CUDA toolkit the runtime was built against, e.g. "12.6"
    sms: list[str]  # GPUs it serves, e.g. ["sm_87"]


class RuntimeBundleInfo(Strict):
    """runtime.json."""

    format_version: Literal[1] = FORMAT_VERSION
    abi: int
    arch: str
    tvm_version: str
    tvm_ffi_version: str
    cuda: CudaInfo | None = None
    glibc: str  # the newest glibc symbol version the libraries need: the oldest OS they run on
    libraries: dict[str, str]  # file name -> sha256
    key: str
    built_at: str
    toolchain: str

    def describe(self) -> str:
        gpu = f", CUDA {self.cuda.version} {'/'.join(self.cuda.sms)}" if self.cuda else ", no CUDA"
        return f"{self.arch}, TVM {minor_version(self.tvm_version)}, TVM FFI {minor_version(self.tvm_ffi_version)}{gpu}"


@dataclass(frozen=True)
class Bundle:
    path: Path
    info: RuntimeBundleInfo

    @property
    def lib(self) -> Path:
        return self.path / "lib"

    def load_order(self) -> list[str]:
        """The libraries to load, each after its dependencies."""
        return [*LIBRARIES[:3], *([CUDA_LIBRARY] if CUDA_LIBRARY in self.info.libraries else []), SHIM]


def canonical_arch(arch: str) -> str:
    try:
        return ARCH_ALIASES[arch.lower()]
    except KeyError:
        raise MissingToolError(
            f"no runtime exists for architecture {arch!r}",
            f"use one of {', '.join(sorted(set(ARCH_ALIASES.values())))}",
        ) from None


def host_arch() -> str:
    import platform

    return ARCH_ALIASES.get(platform.machine().lower(), platform.machine().lower())


def cache_dir() -> Path:
    """Where `edgefleet runtime build` keeps bundles: $EDGEFLEET_RUNTIME_CACHE, else ~/.cache/edgefleet/runtime.

    Not under $EDGEFLEET_HOME: a bundle is a build product keyed by its inputs, shared by every
    key and fleet home on the machine (tests give each test its own home).
    """
    env = os.environ.get(CACHE_ENV)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(env) if env else base / "edgefleet" / "runtime"


def installed_dir() -> Path:
    """Where a camera install (Debian package, installer) puts the bundle of its own architecture."""
    return Path(sys.prefix) / "lib" / "edgefleet-runtime"


def read_bundle(path: Path, *, check_hashes: bool = True) -> Bundle:
    """The bundle in `path`; PackageIntegrityError if its runtime.json or a library is missing or altered."""
    info_path = Path(path) / INFO_FILE
    try:
        info = RuntimeBundleInfo.model_validate_json(info_path.read_bytes())
    except FileNotFoundError:
        raise PackageIntegrityError(
            f"{path} is not a runtime bundle: it has no {INFO_FILE}",
            "point EDGEFLEET_RUNTIME at a folder made by `edgefleet runtime build`",
        ) from None
    except ValidationError as exc:
        raise PackageIntegrityError(
            f"{info_path} is malformed: {first_error(exc).msg}", "rebuild it with `edgefleet runtime build`"
        ) from None
    bundle = Bundle(Path(path), info)
    if check_hashes:
        for name, digest in info.libraries.items():
            lib = bundle.lib / name
            if not lib.is_file() or sha256_file(lib) != digest:
                why = "missing" if not lib.is_file() else "altered (sha256 differs from runtime.json)"
                raise PackageIntegrityError(
                    f"the runtime bundle in {path} is corrupt: lib/{name} is {why}",
                    f"rebuild it with `edgefleet runtime build --arch {info.arch} --force`",
                )
    return bundle


# The C ABI library's sources (agent/native): the shim, and the thread pool compiled into it
# (agents before C ABI 2 have the shim alone).
SHIM_SOURCES = ("edgefleet_runtime.cc", "edgefleet_pool.cc", "edgefleet_pool.h")


def _cached_bundles(arch: str) -> list[Path]:
    """Bundles in the build cache: those built from this checkout's C ABI source first, then the newest.

    One machine may build bundles from several checkouts (branches with another C ABI); each
    checkout's agent should run on its own.
    """
    root = cache_dir()
    found = [p.parent for p in root.glob(f"{arch}-*/{INFO_FILE}")] if root.is_dir() else []
    own = _local_shim_sha256()
    return sorted(found, key=lambda p: (_shim_of(p) == own, (p / INFO_FILE).stat().st_mtime), reverse=True)


def _local_shim_sha256() -> str | None:
    agent = importlib.util.find_spec("edgefleet.agent")  # locates the package without importing it
    if agent is None or not agent.submodule_search_locations:
        return None
    native = Path(agent.submodule_search_locations[0]) / "native"
    return shim_sha256(native) if (native / SHIM_SOURCES[0]).is_file() else None


def shim_sha256(native: Path) -> str:
    """The hash of the C ABI's sources in `native` (agent/native): a bundle's `shim_sha256`."""
    return hashlib.sha256("".join(map(sha256_file, shim_files(native))).encode()).hexdigest()


def shim_files(native: Path) -> list[Path]:
    """The C ABI's sources that `native` has, in SHIM_SOURCES order."""
    return [native / name for name in SHIM_SOURCES if (native / name).is_file()]


def shim_abi(native: Path) -> int:
    """The C ABI that the shim in `native` speaks: its `#define EF_ABI_VERSION`."""
    source = native / SHIM_SOURCES[0]
    found = re.search(r"^#define EF_ABI_VERSION (\d+)$", source.read_text(), re.MULTILINE) if source.is_file() else None
    if found is None:
        raise UsageError(
            f"{native} holds no edgefleet C ABI: no `#define EF_ABI_VERSION` in {source.name}",
            "point at an agent's agent/native folder",
        )
    return int(found.group(1))


def _shim_of(bundle: Path) -> str | None:
    try:
        shim = json.loads((bundle / "spec.json").read_text()).get("shim_sha256")
    except (OSError, ValueError):
        return None
    return shim if isinstance(shim, str) else None


def find_bundle(arch: str | None = None) -> Bundle:
    """The runtime bundle for `arch` (default: this machine's).

    Looked for in $EDGEFLEET_RUNTIME (a bundle folder; when set, nothing else is tried), then
    where a camera install puts it, then the newest build in the build cache.
    """
    arch = canonical_arch(arch or host_arch())
    explicit = os.environ.get(BUNDLE_ENV)
    if explicit:
        return _matching(read_bundle(Path(explicit)), arch)
    candidates = [installed_dir()] if (installed_dir() / INFO_FILE).is_file() else []
    for path in candidates + _cached_bundles(arch):
        bundle = read_bundle(path)
        if bundle.info.arch == arch and bundle.info.abi == RUNTIME_ABI:
            return bundle
    raise MissingToolError(
        f"no edgefleet runtime for {arch} on this machine",
        f"build it with `edgefleet runtime build --arch {arch}`, or set {BUNDLE_ENV} to a runtime folder",
    )


def _matching(bundle: Bundle, arch: str) -> Bundle:
    if bundle.info.arch != arch or bundle.info.abi != RUNTIME_ABI:
        raise TargetNotRunnableError(
            f"the runtime in {bundle.path} is for {bundle.info.arch} (ABI {bundle.info.abi}); this agent needs {arch} (ABI {RUNTIME_ABI})",
            f"build the right one with `edgefleet runtime build --arch {arch}`",
        )
    return bundle


def requirement_problems(need: RuntimeRequirement, have: RuntimeBundleInfo) -> list[str]:
    """Why a runtime cannot run a package; empty when it can."""
    problems = []
    if need.arch != have.arch:
        problems.append(f"architecture {need.arch} vs {have.arch}")
    if need.tvm != minor_version(have.tvm_version):
        problems.append(f"TVM {need.tvm} vs {minor_version(have.tvm_version)}")
    if need.tvm_ffi != minor_version(have.tvm_ffi_version):
        problems.append(f"TVM FFI {need.tvm_ffi} vs {minor_version(have.tvm_ffi_version)}")
    if need.device == "cuda":
        if have.cuda is None:
            problems.append("CUDA needed, the runtime has none")
        else:
            if need.cuda_sm and need.cuda_sm not in have.cuda.sms:
                problems.append(f"GPU {need.cuda_sm} vs {'/'.join(have.cuda.sms)}")
            if need.cuda_version and _major(need.cuda_version) > _major(have.cuda.version):
                problems.append(f"CUDA {need.cuda_version} vs {have.cuda.version}")
    elif need.device != "cpu":
        problems.append(f"device {need.device} has no edgefleet runtime")
    return problems


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def check_runs(need: RuntimeRequirement, have: Bundle, what: str) -> None:
    """Refuse, naming both sides, a package (`what`) that this runtime cannot run."""
    problems = requirement_problems(need, have.info)
    if problems:
        raise TargetNotRunnableError(
            f"{what} needs a runtime for {need.describe()}; this machine's runtime ({have.path}) is {have.info.describe()}: {'; '.join(problems)}",
            "compile the model for this device's target (`edgefleet targets`), or install the matching runtime (`edgefleet runtime build`)",
        )
