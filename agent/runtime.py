"""Load a model package's compiled model and run it: the TVM library or a plain TFLite file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgefleet.errors import MissingToolError, PackageIntegrityError, TargetNotRunnableError
from edgefleet.package import Manifest, OpenedPackage


class TvmModel:
    """A compiled Relax library executed by the runtime's Relax virtual machine.

    Only `tvm.runtime` is used, so a process that sets TVM_USE_RUNTIME_LIB=1 before importing
    tvm (as `edgefleet agent run` does) never loads the compiler library: ~100 MB less resident
    memory and a faster start, which matters most under emulation and on small boards.
    """

    def __init__(self, library: Path, device: str = "cpu") -> None:
        import tvm
        import tvm.runtime.vm

        self._tvm = tvm
        self.device = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
        try:
            lib = tvm.runtime.load_module(str(library))
        except Exception as exc:  # TVM raises plain RuntimeError / TVMError for bad libraries
            raise PackageIntegrityError(f"cannot load the compiled library {library.name}: {str(exc).splitlines()[0][:200]}", "the package was built for another machine; check its target") from None
        self.vm = tvm.runtime.vm.VirtualMachine(lib, self.device)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [self._tensor(np.require(x, requirements="C")) for x in inputs]  # keeps 0-d inputs 0-d
        result = self.vm["main"](*tensors)
        return _flatten(result)

    def _tensor(self, x: np.ndarray):
        bits = _SUBBYTE_BITS.get(x.dtype.name)
        if bits is None:
            return self._tvm.runtime.tensor(x, self.device)
        packed = self._tvm.runtime.tensor(_pack(x, bits), self.device)
        return packed._create_view(x.shape, x.dtype.name)


# 4- and 2-bit element types (ml_dtypes names = TVM dtypes). TVM's runtime sizes their tensors
# packed, the first element in the high bits of each byte; edgefleet's compiled models
# (compiler/onnx_lowbit.py) read and write that layout. numpy (ml_dtypes) keeps one per byte.
_SUBBYTE_BITS = {"float4_e2m1fn": 4, "int4": 4, "uint4": 4, "int2": 2, "uint2": 2}


def _pack(x: np.ndarray, bits: int) -> np.ndarray:
    per = 8 // bits
    codes = x.reshape(-1).view(np.uint8) & ((1 << bits) - 1)  # ml_dtypes keeps the value's low bits
    codes = np.concatenate([codes, np.zeros(-codes.size % per, np.uint8)]).reshape(-1, per)
    shifts = np.arange(per - 1, -1, -1, dtype=np.uint8) * bits
    return np.bitwise_or.reduce(codes << shifts, axis=1).astype(np.uint8)


def _unpack(tensor, bits: int) -> np.ndarray:
    import ml_dtypes

    dtype = np.dtype(getattr(ml_dtypes, str(tensor.dtype)))
    shape = tuple(int(d) for d in tensor.shape)
    count, per = int(np.prod(shape)), 8 // bits
    packed = tensor._create_view((-(-count * bits // 8),), "uint8").numpy()
    shifts = np.arange(per - 1, -1, -1, dtype=np.uint8) * bits
    codes = ((packed[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1)[:count]
    return codes.view(dtype).reshape(shape)  # ml_dtypes, too, keeps just the low bits


def _flatten(value) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        bits = _SUBBYTE_BITS.get(str(value.dtype))
        return [value.numpy() if bits is None else _unpack(value, bits)]
    out: list[np.ndarray] = []
    for item in value:
        out.extend(_flatten(item))
    return out


class TfliteModel:
    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError:
                raise MissingToolError("running a .tflite model needs ai-edge-litert (or tflite-runtime), which is not installed", "pip install 'edgefleet[litert]'") from None
        try:
            self.interpreter = Interpreter(model_path=str(path))
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise PackageIntegrityError(f"cannot load the TFLite model {Path(path).name}: {str(exc).splitlines()[0][:200]}", "check that the file is a complete .tflite model") from None

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        for detail, x in zip(self.interpreter.get_input_details(), inputs):
            self.interpreter.set_tensor(detail["index"], x)
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_tensor(d["index"])) for d in self.interpreter.get_output_details()]


def host_arch() -> str:
    import platform

    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64", "armv7l": "armv7", "armv8l": "armv7"}.get(machine, machine)


def check_runnable(manifest: Manifest) -> None:
    """Refuse, before anything runs, a package built for another architecture."""
    if manifest.runtime.kind == "tvm" and manifest.target.arch != host_arch():
        raise TargetNotRunnableError(
            f"package {manifest.name} {manifest.version} is built for {manifest.target.arch} ({manifest.target.name}); this machine is {host_arch()}",
            "run it on its target, or under emulation with `edgefleet cross run`",
        )


def load_model(package: OpenedPackage):
    manifest = package.manifest
    check_runnable(manifest)
    if manifest.runtime.kind == "tflite":
        return TfliteModel(package.library)
    return TvmModel(package.library, manifest.target.device)
