"""Load a model package's compiled model and run it: the TVM library or a plain TFLite file."""

from __future__ import annotations

import ctypes
import importlib.abc
import math
import os
import sys
import threading
from pathlib import Path

import numpy as np

from edgefleet.agent.config import RuntimeConfig
from edgefleet.errors import BadInputError, MissingToolError, PackageIntegrityError, TargetNotRunnableError, UsageError
from edgefleet.package import Manifest, OpenedPackage
from edgefleet.runtime_bundle import RUNTIME_ABI, Bundle, check_runs, find_bundle, host_arch


class _Runtime:
    """libedgefleet_runtime.so and the TVM libraries under it, loaded once per process through ctypes.

    No TVM Python package is imported: the same bundle serves every Python version and
    architectures without TVM wheels (armv7). The bundle comes from `find_bundle`.
    """

    _loaded: _Runtime | None = None

    def __init__(self, bundle: Bundle) -> None:
        if "tvm" in sys.modules:
            # The compiler's TVM has its own libtvm_runtime/libtvm_ffi under the same names; the
            # dynamic loader would hand those to the shim, and the package would not run on
            # the camera's runtime. Compiler-side callers use runtime_worker instead.
            raise UsageError(
                "the camera runtime cannot load in a process that imported the TVM compiler",
                "run the model with edgefleet.agent.runtime_worker",
            )
        self.bundle = bundle
        # The shim reads the pool when it loads, TVM the spin count when its workers first start.
        os.environ["EDGEFLEET_POOL"] = _pool.pool
        if not _pool.spin:
            os.environ["TVM_THREAD_POOL_SPIN_COUNT"] = "0"
            os.environ["EDGEFLEET_POOL_SPIN"] = "0"
        # RTLD_GLOBAL: compiled models call TVM FFI symbols they do not link against.
        self.libs = [ctypes.CDLL(str(bundle.lib / name), mode=ctypes.RTLD_GLOBAL) for name in bundle.load_order()]
        self.api = _declare(self.libs[-1])
        abi = self.api.ef_abi_version()
        if abi != RUNTIME_ABI:
            raise PackageIntegrityError(
                f"the runtime in {bundle.path} has C ABI {abi}; this agent speaks {RUNTIME_ABI}",
                f"rebuild it with `edgefleet runtime build --arch {bundle.info.arch} --force`",
            )
        self._configured = threading.local()
        self.use_threads()
        sys.meta_path.insert(0, _RefuseCompiler())

    def use_threads(self) -> None:
        """Apply `_pool.threads` to the calling thread: TVM keeps one pool per thread that runs a
        model, so a model loaded on one thread and run on another would run on a default pool."""
        if getattr(self._configured, "threads", None) == _pool.threads:
            return
        _size_pools(_pool.threads)
        if self.api.ef_set_threads(_pool.threads) != 0:
            raise UsageError(
                f"cannot use {_pool.threads} threads: {self.error()}", "set [runtime] threads to a positive count"
            )
        self._configured.threads = _pool.threads

    @classmethod
    def get(cls) -> _Runtime:
        if cls._loaded is None:
            cls._loaded = cls(find_bundle())
        return cls._loaded

    def error(self) -> str:
        return self.api.ef_last_error().decode(errors="replace")


class _RefuseCompiler(importlib.abc.MetaPathFinder):
    """Once the camera runtime is loaded, importing TVM's Python packages would abort the process
    (both register the same FFI types under the same library names): refuse it with a reason."""

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if fullname.split(".")[0] in ("tvm", "tvm_ffi"):
            raise ImportError(
                f"{fullname} cannot be imported: this process runs models on the camera runtime; import the TVM compiler before running any model, or use a separate process"
            )
        return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64p = ctypes.POINTER(ctypes.c_int64)
    signatures = {
        "ef_abi_version": (ctypes.c_int, []),
        "ef_last_error": (ctypes.c_char_p, []),
        "ef_model_load": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]),
        "ef_model_run": (
            ctypes.c_int,
            [
                ctypes.c_void_p,
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_void_p),
                i64p,
                ctypes.POINTER(ctypes.c_int),
                ctypes.POINTER(i64p),
                ctypes.POINTER(ctypes.c_char_p),
                ctypes.c_int,
                ctypes.POINTER(ctypes.c_void_p),
                i64p,
                ctypes.POINTER(ctypes.c_int),
            ],
        ),
        "ef_model_output": (
            ctypes.c_int,
            [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int), i64p, ctypes.c_char_p, ctypes.c_int, i64p],
        ),
        "ef_model_output_copy": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64]),
        "ef_model_free": (None, [ctypes.c_void_p]),
        "ef_model_plan": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
        "ef_set_threads": (ctypes.c_int, [ctypes.c_int]),
        "ef_pool_tasks": (ctypes.c_int, [i64p, i64p]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


# DLPack device types.
_DEVICES = {"cpu": 1, "cuda": 2}


class TvmModel:
    """A compiled Relax library executed by the camera runtime's virtual machine (no TVM Python package)."""

    def __init__(self, library: Path, device: str = "cpu") -> None:
        self._rt = _Runtime.get()
        if device not in _DEVICES:
            raise TargetNotRunnableError(
                f"the camera runtime cannot run {device} models", "compile for a CPU or CUDA target"
            )
        handle = self._rt.api.ef_model_load(str(library).encode(), _DEVICES[device], 0)
        if not handle:
            reason = self._rt.error().splitlines()[0][:300] if self._rt.error() else "unknown error"
            raise PackageIntegrityError(
                f"cannot load the compiled library {Path(library).name}: {reason}",
                "the package was built for another machine or TVM version; check its target",
            )
        self._handle = ctypes.c_void_p(handle)
        self._arguments: _RunArguments | None = None
        self._out = _OutputFields()
        self._outputs = _OutputBuffers([])

    def use_plan(self, enabled: bool = True) -> bool:
        """Run on the library's static plan (compiler/static_plan.py, the default where it has one)
        or, `enabled` False, on the Relax VM; True when runs follow the plan from now on."""
        return self._rt.api.ef_model_plan(self._handle, int(enabled)) == 1

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._rt.api.ef_model_free(handle)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self._rt.use_threads()
        # np.require keeps 0-d inputs 0-d; it costs ~1 us per call, so C-ordered arrays skip it.
        arrays = [
            x if type(x) is np.ndarray and x.flags.c_contiguous else np.require(x, requirements="C") for x in inputs
        ]
        signature = [(x.shape, x.dtype) for x in arrays]
        if self._arguments is None or self._arguments.signature != signature:
            self._arguments = _RunArguments(signature)
        # The bytes TVM expects: sub-byte element types packed, everything else as is.
        raw = [x if bits is None else _pack(x, bits) for x, bits in zip(arrays, self._arguments.bits)]
        outputs = self._outputs.fresh()
        count = self._rt.api.ef_model_run(
            self._handle, *self._arguments.pointing_at(raw), *self._outputs.pointing_at(outputs)
        )
        if count < 0:
            raise BadInputError(
                f"the model failed to run: {self._rt.error()[:500]}",
                "check the inputs' shapes and dtypes against the manifest",
            )
        if self._outputs.copied:
            return outputs
        # The first run, or outputs of another shape than the last run's: read them one by one.
        outputs = [self._output(i) for i in range(count)]
        self._outputs = _OutputBuffers(outputs)
        return outputs

    def _output(self, index: int) -> np.ndarray:
        out = self._out
        if self._rt.api.ef_model_output(self._handle, index, out.ndim, out.shape, out.dtype, 32, out.nbytes) != 0:
            raise BadInputError(f"cannot read output {index}: {self._rt.error()}", "report the model")
        dims, name, nbytes = tuple(out.shape[: out.ndim.value]), out.dtype.value.decode(), out.nbytes.value
        buffer = np.empty(nbytes, np.uint8)
        if self._rt.api.ef_model_output_copy(self._handle, index, buffer.ctypes.data, nbytes) != 0:
            raise BadInputError(f"cannot copy output {index}: {self._rt.error()}", "report the model")
        bits = _SUBBYTE_BITS.get(name)
        return buffer.view(numpy_dtype(name)).reshape(dims) if bits is None else _unpack(buffer, dims, name, bits)


class _RunArguments:
    """ef_model_run's argument arrays for one signature of inputs (each one's shape and dtype),
    kept by the model until the signature changes: only the data pointers change between runs.
    Building them anew per run cost 9 us of int8 MobileNetV2-0.35's 0.16 ms on x86 (docs/performance.md,
    the cost outside the kernels)."""

    def __init__(self, signature: list[tuple[tuple[int, ...], np.dtype]]) -> None:
        n = len(signature)
        self.signature = signature
        self.bits = [_SUBBYTE_BITS.get(dtype.name) for _, dtype in signature]
        self.count = n
        self.data = (ctypes.c_void_p * n)()
        self.nbytes = (ctypes.c_int64 * n)(
            *[
                _packed_size(shape, bits) if bits else math.prod(shape) * dtype.itemsize
                for (shape, dtype), bits in zip(signature, self.bits)
            ]
        )
        self.ndims = (ctypes.c_int * n)(*[len(shape) for shape, _ in signature])
        self._shapes = [(ctypes.c_int64 * max(1, len(shape)))(*shape) for shape, _ in signature]
        self.shapes = (ctypes.POINTER(ctypes.c_int64) * n)(
            *[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in self._shapes]
        )
        self.dtypes = (ctypes.c_char_p * n)(*[dtype.name.encode() for _, dtype in signature])

    def pointing_at(self, raw: list[np.ndarray]) -> tuple:
        """The arguments after the handle, the data pointers at `raw` (which must outlive the call)."""
        for i, r in enumerate(raw):
            self.data[i] = r.ctypes.data
        return self.count, self.data, self.nbytes, self.ndims, self.shapes, self.dtypes


class _OutputBuffers:
    """ef_model_run's output arguments: fresh arrays of the last run's output shapes and dtypes,
    which the run copies its outputs into when they are the same again (the caller owns them).
    One C call per run instead of two more per output: 5 us of int8 MobileNetV2-0.35's 0.13 ms on
    x86 (docs/performance.md, the cost outside the kernels). Sub-byte outputs are read one by one."""

    def __init__(self, last: list[np.ndarray]) -> None:
        direct = all(_SUBBYTE_BITS.get(x.dtype.name) is None for x in last)
        self.layout = [(x.shape, x.dtype) for x in last] if direct else []
        sizes = [x.nbytes for x in last] if direct else []
        self.data = (ctypes.c_void_p * max(1, len(sizes)))()
        self.nbytes = (ctypes.c_int64 * max(1, len(sizes)))(*sizes)
        self._copied = ctypes.c_int()

    def fresh(self) -> list[np.ndarray]:
        return [np.empty(shape, dtype) for shape, dtype in self.layout]

    def pointing_at(self, outputs: list[np.ndarray]) -> tuple:
        """The output arguments of ef_model_run, the data pointers at `outputs`."""
        for i, x in enumerate(outputs):
            self.data[i] = x.ctypes.data
        return len(outputs), self.data, self.nbytes, self._copied

    @property
    def copied(self) -> bool:
        return bool(self._copied.value)


class _OutputFields:
    """ef_model_output's out-parameters, allocated once per model."""

    def __init__(self) -> None:
        self.ndim = ctypes.c_int()
        self.shape = (ctypes.c_int64 * 8)()
        self.dtype = ctypes.create_string_buffer(32)
        self.nbytes = ctypes.c_int64()


# The pool the runtime starts with ([runtime] of the agent config; `configure_pool` changes it).
# EDGEFLEET_POOL chooses which pool where no agent config applies (the host's runtime worker:
# verification, `edgefleet bench`, the benchmarks).
_pool = RuntimeConfig(**({"pool": os.environ["EDGEFLEET_POOL"]} if os.environ.get("EDGEFLEET_POOL") else {}))


def configure_pool(settings: RuntimeConfig) -> None:
    """Thread count, spinning and pool for the runtime, applied when it loads. Once loaded, only
    the thread count can still change: TVM read the spin count when its workers started, the
    shim the pool when it loaded."""
    global _pool
    if _Runtime._loaded is not None and (settings.spin, settings.pool) != (_pool.spin, _pool.pool):
        what, setting = (
            ("its workers' spinning", "spin") if settings.spin != _pool.spin else ("its thread pool", "pool")
        )
        raise UsageError(
            f"the runtime is already running: {what} cannot change", f"restart the agent to apply [runtime] {setting}"
        )
    _pool = settings
    if _Runtime._loaded is not None:
        _Runtime._loaded.use_threads()


def set_threads(count: int) -> None:
    """Size the runtime's thread pool (it starts with `configure_pool`'s count, 1 by default)."""
    if count < 1:
        raise UsageError(f"cannot use {count} threads", "pass a positive thread count")
    configure_pool(_pool.model_copy(update={"threads": count}))
    _Runtime.get().use_threads()


def _size_pools(threads: int) -> None:
    """TVM sizes a thread's pool, when that thread first runs a model, from TVM_NUM_THREADS, else
    from half the CPUs on x86 (it takes every two CPUs for one core's hyper-threads): on a 2-core
    machine without SMT that is one, and `threads = 2` ran on one core. A pool that exists keeps
    its size, so this is raised before any thread asks for more (never lowered: fewer threads of a
    larger pool is what `ef_set_threads` chooses)."""
    current = os.environ.get("TVM_NUM_THREADS", "")
    if not current.isdigit() or int(current) < threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)


def numpy_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16, float8_*, ...: ml_dtypes names them as TVM does
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


# 4- and 2-bit element types (ml_dtypes names = TVM dtypes). TVM's runtime sizes their tensors
# packed, the first element in the high bits of each byte; edgefleet's compiled models
# (compiler/frontends/onnx/lowbit.py) read and write that layout. numpy (ml_dtypes) keeps one per byte.
_SUBBYTE_BITS = {"float4_e2m1fn": 4, "int4": 4, "uint4": 4, "int2": 2, "uint2": 2}


def _packed_size(shape: tuple[int, ...], bits: int) -> int:
    """The bytes of `_pack`'s result for an array of `shape`."""
    return -(-math.prod(shape) * bits // 8)


def _pack(x: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    codes = x.reshape(-1).view(np.uint8) & ((1 << bits) - 1)  # ml_dtypes keeps the value's low bits
    codes = np.concatenate([codes, np.zeros(-codes.size % per, np.uint8)]).reshape(-1, per)
    shifts = np.arange(per - 1, -1, -1, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(codes << shifts, axis=1).astype(np.uint8)


def _unpack(packed: np.ndarray, shape: tuple[int, ...], name: str, bits: int) -> np.ndarray:
    count, per = int(np.prod(shape)), 8 // bits
    shifts = np.arange(per - 1, -1, -1, dtype=np.uint8) * bits
    codes = ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]
    return codes.view(numpy_dtype(name)).reshape(shape)  # ml_dtypes, too, keeps just the low bits


class TfliteModel:
    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError:
                raise MissingToolError(
                    "running a .tflite model needs ai-edge-litert (or tflite-runtime), which is not installed",
                    "pip install 'edgefleet[litert]'",
                ) from None
        try:
            self.interpreter = Interpreter(model_path=str(path))
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise PackageIntegrityError(
                f"cannot load the TFLite model {Path(path).name}: {str(exc).splitlines()[0][:200]}",
                "check that the file is a complete .tflite model",
            ) from None

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        for detail, x in zip(self.interpreter.get_input_details(), inputs):
            self.interpreter.set_tensor(detail["index"], x)
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_tensor(d["index"])) for d in self.interpreter.get_output_details()]


def check_runnable(manifest: Manifest) -> None:
    """Refuse, before anything runs, a package this machine or its runtime cannot run, naming both sides."""
    if manifest.runtime.kind != "tvm":
        return
    if manifest.target.arch != host_arch():
        raise TargetNotRunnableError(
            f"package {manifest.name} {manifest.version} is built for {manifest.target.arch} ({manifest.target.name}); this machine is {host_arch()}",
            "run it on its target, or under emulation with `edgefleet cross run`",
        )
    need = manifest.runtime_requirement()
    if need is not None:
        check_runs(need, find_bundle(), f"package {manifest.name} {manifest.version} ({manifest.target.name})")


def load_model(package: OpenedPackage):
    manifest = package.manifest
    check_runnable(manifest)
    if manifest.runtime.kind == "tflite":
        return TfliteModel(package.library)
    from edgefleet.agent.runtime_worker import open_tvm_model
    from edgefleet.agent.variants import select_library

    return open_tvm_model(select_library(package).path, manifest.target.device)
