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
        tensors = [self._tvm.runtime.tensor(np.require(x, requirements="C"), self.device) for x in inputs]  # keeps 0-d inputs 0-d
        result = self.vm["main"](*tensors)
        return _flatten(result)


def _flatten(value) -> list[np.ndarray]:
    if hasattr(value, "numpy"):
        return [value.numpy()]
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
