"""`edgefleet runtime build`: TVM's runtime alone, from TVM's own sources, for x86_64, aarch64 and armv7.

Sources (each pinned; see docs/runtime.md):
- the runtime's .cc files and headers as the installed apache-tvm wheel ships them
  (`tvm/src/runtime`, `tvm/include`): exactly the runtime the compiler's TVM was released with;
- the TVM source release for what the wheel lacks (CMake files and 12 support headers):
  a path (`--tvm-source`, $EDGEFLEET_TVM_SOURCE, or the project's shared third_party folder);
- apache-tvm-ffi's source distribution from PyPI (`pip download`);
- edgefleet's C ABI over the VM, agent/native/edgefleet_runtime.cc, and its thread pool
  (agent/native/edgefleet_pool.cc).

Steps, each logged: sources, unpack, configure (CMake, a toolchain file for cross builds),
build (tvm_runtime, tvm_runtime_extra), shim, strip, check (ELF machine, glibc floor). The
bundle (edgefleet/runtime_bundle.py) is cached under `<cache>/<arch>-<key>`, `<key>` a hash of
every input, built in a scratch folder and renamed when complete: a failed or interrupted
build leaves nothing half-built, and its logs are kept in `<arch>-<key>.failed/logs`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edgefleet.errors import BuildError, MissingToolError, UsageError
from edgefleet.locks import exclusive
from edgefleet.package import now_utc, sha256_file
from edgefleet.progress import Stages
from edgefleet.runtime_bundle import (
    CUDA_LIBRARY,
    INFO_FILE,
    LIBRARIES,
    RUNTIME_ABI,
    SHIM,
    Bundle,
    CudaInfo,
    RuntimeBundleInfo,
    cache_dir,
    canonical_arch,
    host_arch,
    read_bundle,
    shim_abi,
    shim_files,
    shim_sha256,
)
from edgefleet.strict import Strict

TVM_WHEEL_VERSION = "0.27.0.post1"
TVM_SOURCE_NAME = "tvm-v0.27.dev0-src.tar.gz"
TVM_SOURCE_SHA256 = "221a31436b8f1cc2d6b76dcd70d0b775ada9f6957af7202b37d443fa9b009a4a"
TVM_SOURCE_ENV = "EDGEFLEET_TVM_SOURCE"
FFI_VERSION = "0.1.14.post0"
FFI_SDIST = f"apache_tvm_ffi-{FFI_VERSION}.tar.gz"
FFI_SDIST_SHA256 = "53cb68ac05ca84fd32042211c13fcee372729dcbff537f8689289b7f2f7d765d"
BUILD_LOCK = ".build.lock"  # in the cache: held by the build under way
# This agent's C ABI: the shim and its thread pool (runtime_bundle.SHIM_SOURCES).
NATIVE_SOURCES = Path(__file__).resolve().parents[1] / "agent" / "native"
MIN_CMAKE = (3, 26)
# Runtime only: no compiler (LLVM), no GPU, no RPC server, TVM's own thread pool (no OpenMP),
# and no backtrace machinery or segfault handler inside the agent's process.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DUSE_LLVM=OFF",
    "-DUSE_CUDA=OFF",
    "-DUSE_Z3=OFF",
    "-DUSE_GTEST=OFF",
    "-DUSE_OPENMP=OFF",
    "-DUSE_RPC=OFF",
    "-DUSE_LIBBACKTRACE=OFF",
    "-DUSE_CCACHE=OFF",
    "-DTVM_FFI_USE_LIBBACKTRACE=OFF",
    "-DTVM_FFI_BACKTRACE_ON_SEGFAULT=OFF",
)
FORMAT = 1
# Source edits applied to tvm-ffi before it is built: (file under tvm-ffi, text, replacement), each
# text found exactly once. Part of the cache key. TVM's library loader copies a model's embedded
# VM executable (the weights) from a std::string into an ffi::Bytes and keeps both while the
# executable copies the weights into tensors: moving the string instead (ffi::Bytes has a
# std::string&& constructor) removes one transient copy of the weights (MobileNetV2: 14 MB of the
# load's peak; docs/runtime.md).
FFI_EDITS = (
    (
        "src/ffi/extra/library_module.cc",
        "LoadModuleFromBytes(kind, Bytes(module_bytes))",
        "LoadModuleFromBytes(kind, Bytes(std::move(module_bytes)))",
    ),
)


@dataclass(frozen=True)
class Toolchain:
    triple: str
    cmake_processor: str
    elf_machine: int  # e_machine in the ELF header
    debian: str  # the Debian package of the cross compiler

    def tool(self, name: str) -> str:
        return name if self.triple == _HOST_TRIPLES.get(host_arch()) else f"{self.triple}-{name}"


TOOLCHAINS = {
    "x86_64": Toolchain("x86_64-linux-gnu", "x86_64", 0x3E, "g++-x86-64-linux-gnu"),
    "aarch64": Toolchain("aarch64-linux-gnu", "aarch64", 0xB7, "g++-aarch64-linux-gnu"),
    "armv7": Toolchain("arm-linux-gnueabihf", "arm", 0x28, "g++-arm-linux-gnueabihf"),
}
_HOST_TRIPLES = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "armv7": "arm-linux-gnueabihf"}


class BuildSpec(Strict):
    """Every input of a runtime build; its hash is the cache key."""

    format: int = FORMAT
    abi: int = RUNTIME_ABI
    arch: str
    tvm_wheel_version: str
    tvm_wheel_sources_sha256: str
    tvm_source_sha256: str
    tvm_ffi_version: str
    tvm_ffi_sdist_sha256: str
    tvm_ffi_edits: list[list[str]]
    shim_sha256: str
    cmake_options: list[str]
    compiler: str  # `g++ --version`, first line
    cuda_version: str | None = None  # `nvcc --version` of a CUDA build (on the board), e.g. "12.6"
    cuda_sms: list[str] | None = None  # the GPUs it compiles for, e.g. ["sm_87"]

    def key(self) -> str:
        # exclude_none: a CPU build's key stays what it was before CUDA builds existed.
        return _digest(self.model_dump(exclude_none=True))

    def tvm_key(self) -> str:
        """The key of TVM's libraries alone: every input but edgefleet's C ABI."""
        return _digest(self.model_dump(exclude_none=True, exclude={"shim_sha256", "abi"}))


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Sources:
    wheel_tvm: Path  # the installed `tvm` package folder
    tvm_source: Path
    ffi_sdist: Path


# ---- inputs ------------------------------------------------------------------------------


def _wheel_tvm_dir() -> Path:
    try:
        installed = version("apache-tvm")
    except PackageNotFoundError:
        raise MissingToolError(
            "building the runtime needs the runtime sources inside the apache-tvm wheel, which is not installed",
            f"pip install 'edgefleet[compiler]' (apache-tvm=={TVM_WHEEL_VERSION})",
        ) from None
    if installed != TVM_WHEEL_VERSION:
        raise UsageError(
            f"apache-tvm {installed} is installed; the runtime is built from {TVM_WHEEL_VERSION}, the version the compiler pins",
            f"pip install apache-tvm=={TVM_WHEEL_VERSION}",
        )
    spec = importlib.util.find_spec("tvm")  # finds the folder without importing the compiler
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0])


def _tree_sha256(*roots: Path) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def tvm_source_candidates() -> list[Path]:
    """Where the TVM source release is looked for, in order."""
    env = os.environ.get(TVM_SOURCE_ENV)
    checkout = Path(__file__).resolve().parents[1]
    return ([Path(env)] if env else []) + [
        cache_dir() / "sources" / TVM_SOURCE_NAME,
        checkout.parent / "shared" / "third_party" / TVM_SOURCE_NAME,
    ]


def _tvm_source(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else tvm_source_candidates()
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise MissingToolError(
            f"the TVM source release {TVM_SOURCE_NAME} is not at {', '.join(map(str, candidates))}",
            f"pass --tvm-source PATH (apache/tvm at tag v0.27.dev0 as a tar.gz with a tvm/ prefix; see docs/runtime.md) or set {TVM_SOURCE_ENV}",
        )
    digest = sha256_file(found)
    if digest != TVM_SOURCE_SHA256:
        raise UsageError(
            f"{found} has sha256 {digest}; the pinned TVM source release has {TVM_SOURCE_SHA256}",
            "use the archive named in docs/runtime.md",
        )
    return found


def _ffi_sdist(stages: Stages, log: Path) -> Path:
    """apache-tvm-ffi's sdist, downloaded once into the cache and checked against its pin."""
    dest = cache_dir() / "sources"
    path = dest / FFI_SDIST
    if not path.is_file():
        dest.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--isolated",
            "--disable-pip-version-check",
            "--no-deps",
            # Only this package as its source: ":all:" would also build its build backend's
            # dependencies (cmake among them) from source to prepare metadata, ~11 minutes.
            "--no-binary",
            "apache-tvm-ffi",
            "--dest",
            str(dest),
            f"apache-tvm-ffi=={FFI_VERSION}",
        ]
        _run(stages, "download", f"apache-tvm-ffi {FFI_VERSION} source from PyPI", argv, log)
    if not path.is_file() or sha256_file(path) != FFI_SDIST_SHA256:
        path.unlink(missing_ok=True)
        raise BuildError(
            f"the downloaded {FFI_SDIST} is missing or does not match its pinned sha256",
            f"read {log}; retry when PyPI is reachable",
        )
    return path


def _compiler_version(toolchain: Toolchain) -> str:
    compiler = _require(toolchain.tool("g++"), toolchain)
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else compiler


def _require(name: str, toolchain: Toolchain) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(
            f"`{name}` is not on PATH: the {toolchain.triple} runtime cannot be built",
            f"apt-get install {toolchain.debian}",
        )
    return path


def _cmake() -> str:
    """A CMake >= 3.26: the one next to this Python (PyPI's `cmake`) first, then PATH."""
    for candidate in (Path(sys.executable).parent / "cmake", shutil.which("cmake")):
        if candidate and Path(candidate).is_file():
            out = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, check=False).stdout
            found = re.search(r"(\d+)\.(\d+)", out)
            if found and (int(found.group(1)), int(found.group(2))) >= MIN_CMAKE:
                return str(candidate)
    raise MissingToolError(
        "building the runtime needs CMake >= 3.26 (tvm-ffi's requirement; Debian 12 has 3.25)",
        "pip install 'cmake>=3.26'",
    )


# ---- the build ---------------------------------------------------------------------------


def _run(stages: Stages, name: str, detail: str, argv: list[str], log: Path, cwd: Path | None = None) -> None:
    with stages.stage(name, detail), open(log, "a") as fh:
        fh.write("$ " + " ".join(argv) + "\n")
        fh.flush()
        proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    if proc.returncode != 0:
        raise _StepFailed(name, f"exited with status {proc.returncode}")


class _StepFailed(Exception):
    def __init__(self, step: str, why: str) -> None:
        super().__init__(step)
        self.step, self.why = step, why


def _unpack(sources: Sources, src: Path) -> Path:
    with tarfile.open(sources.tvm_source) as tar:
        tar.extractall(src, filter="data")
    tvm = src / "tvm"
    for sub in ("src/runtime", "include"):  # the wheel's runtime is the released one; the archive is a dev tag
        shutil.copytree(sources.wheel_tvm / sub, tvm / sub, dirs_exist_ok=True)
    with tarfile.open(sources.ffi_sdist) as tar:
        tar.extractall(src, filter="data")
    ffi = tvm / "3rdparty" / "tvm-ffi"
    shutil.rmtree(ffi, ignore_errors=True)
    (src / FFI_SDIST.removesuffix(".tar.gz")).rename(ffi)
    for name, text, replacement in FFI_EDITS:
        source = ffi / name
        code = source.read_text()
        if code.count(text) != 1:
            raise _StepFailed("unpack", f"cannot edit tvm-ffi's {name}: `{text}` is not there exactly once")
        source.write_text(code.replace(text, replacement))
    return tvm


def _toolchain_file(toolchain: Toolchain, path: Path) -> Path:
    path.write_text(
        "set(CMAKE_SYSTEM_NAME Linux)\n"
        f"set(CMAKE_SYSTEM_PROCESSOR {toolchain.cmake_processor})\n"
        f"set(CMAKE_C_COMPILER {toolchain.tool('gcc')})\n"
        f"set(CMAKE_CXX_COMPILER {toolchain.tool('g++')})\n"
    )
    return path


def _shim_argv(toolchain: Toolchain, tvm_libs: Path, native: Path, lib: Path) -> list[str]:
    return [
        toolchain.tool("g++"),
        "-O2",
        "-fPIC",
        "-shared",
        "-std=c++17",
        "-fvisibility=hidden",
        *(f"-I{tvm_libs / sub}" for sub in ("include", "ffi-include", "dlpack-include")),
        *(str(source) for source in shim_files(native) if source.suffix == ".cc"),
        f"-L{lib}",
        "-ltvm_runtime",
        "-ltvm_ffi",
        # Linked although no symbol of it is used: loading it registers the sort/random kernels.
        "-Wl,--no-as-needed",
        "-ltvm_runtime_extra",
        "-Wl,--as-needed",
        "-Wl,-rpath,$ORIGIN",
        "-o",
        str(lib / SHIM),
    ]


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return -1
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def _glibc_floor(libs: list[Path]) -> str:
    """The newest GLIBC_x.y symbol version any library needs (readelf reads every architecture)."""
    out = subprocess.run(
        ["readelf", "-W", "--dyn-syms", *map(str, libs)], capture_output=True, text=True, check=False
    ).stdout
    versions = {tuple(int(x) for x in m.split(".")) for m in re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", out)}
    return ".".join(map(str, max(versions))) if versions else "unknown"


SM_PATTERN = re.compile(r"sm_(\d{2,3})")


def cuda_options(sms: list[str]) -> list[str]:
    """CMake options for a CUDA build: USE_CUDA=ON (replacing OFF) for the given GPUs, e.g. ["sm_87"]."""
    bad = [sm for sm in sms if not SM_PATTERN.fullmatch(sm)]
    if bad:
        raise UsageError(
            f"{', '.join(bad)} is not a CUDA GPU architecture", "name it like sm_87 (Orin) or sm_72 (Xavier)"
        )
    options = [o for o in CMAKE_OPTIONS if o != "-DUSE_CUDA=OFF"]
    numbers = ";".join(SM_PATTERN.fullmatch(sm).group(1) for sm in sms)
    return [*options, "-DUSE_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={numbers}"]


def cuda_version() -> str:
    """The CUDA toolkit's version from `nvcc --version` ("release 12.6, V12.6.68" -> "12.6")."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc is None:
        raise MissingToolError(
            "a CUDA build needs nvcc, which is not on PATH nor in /usr/local/cuda/bin",
            "apt-get install nvidia-jetpack (JetPack's CUDA); add /usr/local/cuda/bin to PATH",
        )
    found = re.search(r"release (\d+\.\d+)", subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout)
    if found is None:
        raise MissingToolError(f"`{nvcc} --version` does not say its release", "check the CUDA toolkit install")
    return found.group(1)


def spec_for(
    arch: str, sources: Sources, toolchain: Toolchain, native: Path, cuda_sms: list[str] | None = None
) -> BuildSpec:
    return BuildSpec(
        abi=shim_abi(native),
        cuda_version=cuda_version() if cuda_sms else None,
        cuda_sms=list(cuda_sms) if cuda_sms else None,
        arch=arch,
        tvm_wheel_version=TVM_WHEEL_VERSION,
        tvm_wheel_sources_sha256=_tree_sha256(sources.wheel_tvm / "src" / "runtime", sources.wheel_tvm / "include"),
        tvm_source_sha256=TVM_SOURCE_SHA256,
        tvm_ffi_version=FFI_VERSION,
        tvm_ffi_sdist_sha256=FFI_SDIST_SHA256,
        tvm_ffi_edits=[list(edit) for edit in FFI_EDITS],
        shim_sha256=shim_sha256(native),
        cmake_options=cuda_options(cuda_sms) if cuda_sms else list(CMAKE_OPTIONS),
        compiler=_compiler_version(toolchain),
    )


def build_runtime(
    arch: str,
    *,
    tvm_source: Path | None = None,
    force: bool = False,
    quiet: bool = False,
    jobs: int | None = None,
    cuda_sms: list[str] | None = None,
    abi_source: Path | None = None,
) -> Bundle:
    """Build (or return the cached) runtime bundle for `arch` (x86_64, aarch64 or armv7/armhf).

    TVM's libraries are cached on their own (`<cache>/tvm/<arch>-<key>`), so a change to
    edgefleet's C ABI alone recompiles one file, not TVM. `cuda_sms` (e.g. ["sm_87"]) builds with
    CUDA against this machine's toolkit: on the board itself (a Jetson), never cross, since the
    CUDA libraries linked are the board's. `abi_source` is another agent's agent/native folder:
    the bundle then speaks that agent's C ABI (an older agent's, for cameras that still run it).

    Raises MissingToolError naming the Debian or pip package of a missing tool or source, and
    BuildError naming the failed step and its kept log.
    """
    arch = canonical_arch(arch)
    toolchain = TOOLCHAINS[arch]
    native = abi_source or NATIVE_SOURCES
    shim_abi(native)  # refuse a folder without a C ABI before anything starts
    if cuda_sms:
        if arch != host_arch():
            raise UsageError(
                f"a CUDA runtime for {arch} cannot be cross-built on {host_arch()}: it links the board's",
                "run scripts/jetson_runtime_build.sh on the Jetson itself",
            )
        cuda_options(cuda_sms)  # refuse a bad GPU name before anything starts
        cuda_version()
    stages = Stages(quiet=quiet)
    _require(toolchain.tool("gcc"), toolchain)
    cmake = _cmake()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache: another process building the same bundle (or downloading the
    # shared sources) would be replaced under it; the one that waited then finds the bundle built.
    with exclusive(cache / BUILD_LOCK, lambda: stages.note(f"waiting for another runtime build in {cache}")):
        work = cache / f".{arch}.partial-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        logs = work / "logs"
        logs.mkdir(parents=True)
        try:
            sources = Sources(_wheel_tvm_dir(), _tvm_source(tvm_source), _ffi_sdist(stages, logs / "download.log"))
            spec = spec_for(arch, sources, toolchain, native, cuda_sms)
            final = cache / f"{arch}-{spec.key()}"
            if not force and (final / INFO_FILE).is_file():
                return read_bundle(final)
            tvm_libs = cache / "tvm" / f"{arch}-{spec.tvm_key()}"
            if force or not (tvm_libs / "spec.json").is_file():
                _publish(
                    _build_tvm(spec, sources, toolchain, cmake, work, stages, jobs or os.cpu_count() or 2), tvm_libs
                )
            info = _assemble(spec, toolchain, tvm_libs, native, work, stages)
            _publish(work, final, keep=("lib", "logs", INFO_FILE, "spec.json"))
            shutil.rmtree(cache / f"{arch}.failed", ignore_errors=True)
            return Bundle(final, info)
        except _StepFailed as failed:
            kept = cache / f"{arch}.failed"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(logs, kept / "logs")
            log = kept / "logs" / f"{failed.step}.log"
            raise BuildError(
                f"runtime build step `{failed.step}` for {arch} {failed.why}; last line: {_last_line(log)}",
                f"read the log {log}",
            ) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _publish(built: Path, final: Path, keep: tuple[str, ...] | None = None) -> None:
    """Move a finished build into place (a rename: readers never see half a tree)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    if keep is None:
        built.rename(staging)
    else:
        staging.mkdir(parents=True)
        for name in keep:
            (built / name).rename(staging / name)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)


def _last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.is_file() else []
    return lines[-1][:200] if lines else "(empty log)"


def _build_tvm(
    spec: BuildSpec, sources: Sources, toolchain: Toolchain, cmake: str, work: Path, stages: Stages, jobs: int
) -> Path:
    """TVM's libraries and the headers the C ABI compiles against, in `work/tvm-libs`."""
    logs, build, out = work / "logs", work / "build", work / "tvm-libs"
    with stages.stage("unpack", f"TVM {spec.tvm_wheel_version} runtime sources, tvm-ffi {spec.tvm_ffi_version}"):
        tvm = _unpack(sources, work / "src")
    configure = [cmake, "-S", str(tvm), "-B", str(build), *spec.cmake_options]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    if toolchain.tool("g++") != "g++":
        configure.append(f"-DCMAKE_TOOLCHAIN_FILE={_toolchain_file(toolchain, work / 'toolchain.cmake')}")
    _run(stages, "configure", f"CMake for {toolchain.triple}", configure, logs / "configure.log")
    targets = ["tvm_runtime", "tvm_runtime_extra", *(["tvm_runtime_cuda"] if spec.cuda_sms else [])]
    _run(
        stages,
        "build",
        f"{', '.join(targets)} with {jobs} jobs (~4 CPU-minutes)",
        [cmake, "--build", str(build), "--target", *targets, "--parallel", str(jobs)],
        logs / "build.log",
    )
    (out / "lib").mkdir(parents=True)
    for name in _tvm_libraries(spec):
        shutil.copy2(build / "lib" / name, out / "lib" / name)
    ffi = tvm / "3rdparty" / "tvm-ffi"
    for source, dest in (
        (tvm / "include", "include"),
        (ffi / "include", "ffi-include"),
        (ffi / "3rdparty" / "dlpack" / "include", "dlpack-include"),
    ):
        shutil.copytree(source, out / dest)
    (out / "spec.json").write_text(spec.model_dump_json(indent=2) + "\n")  # written last: its presence means complete
    return out


def _tvm_libraries(spec: BuildSpec) -> list[str]:
    return [*LIBRARIES[:-1], *([CUDA_LIBRARY] if spec.cuda_sms else [])]


def _assemble(
    spec: BuildSpec, toolchain: Toolchain, tvm_libs: Path, native: Path, work: Path, stages: Stages
) -> RuntimeBundleInfo:
    """The bundle in `work`: TVM's libraries, edgefleet's C ABI compiled against them, stripped and checked."""
    logs, lib = work / "logs", work / "lib"
    lib.mkdir()
    for name in _tvm_libraries(spec):
        shutil.copy2(tvm_libs / "lib" / name, lib / name)
    _run(
        stages,
        "shim",
        "libedgefleet_runtime.so (the agent's C ABI)",
        _shim_argv(toolchain, tvm_libs, native, lib),
        logs / "shim.log",
    )
    libs = [lib / name for name in [*_tvm_libraries(spec), SHIM]]
    _run(
        stages,
        "strip",
        "debug symbols",
        [_require(toolchain.tool("strip"), toolchain), "--strip-unneeded", *map(str, libs)],
        logs / "strip.log",
    )
    with stages.stage("check", "ELF machine and glibc floor"):
        wrong = [p.name for p in libs if _elf_machine(p) != toolchain.elf_machine]
        if wrong:
            raise _StepFailed("check", f"produced libraries for the wrong machine: {', '.join(wrong)}")
        glibc = _glibc_floor(libs)
    info = RuntimeBundleInfo(
        abi=spec.abi,
        arch=spec.arch,
        tvm_version=spec.tvm_wheel_version,
        tvm_ffi_version=spec.tvm_ffi_version,
        glibc=glibc,
        libraries={p.name: sha256_file(p) for p in libs},
        key=spec.key(),
        built_at=now_utc(),
        toolchain=spec.compiler,
        cuda=CudaInfo(version=spec.cuda_version, sms=spec.cuda_sms) if spec.cuda_sms else None,
    )
    (work / "spec.json").write_text(spec.model_dump_json(indent=2) + "\n")
    (work / INFO_FILE).write_text(info.model_dump_json(indent=2) + "\n")
    return info
