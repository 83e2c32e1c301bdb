"""Model formats the compiler reads, one module per format, chosen by the source's format.

Each frontend module exposes the same functions:

- `load(path) -> model`                  parse, raising CorruptModelError
- `operators(model) -> Counter[str]`     operator names and counts
- `unsupported(model) -> Counter[str]`   operators TVM's importer cannot convert
- `input_specs(model, overrides)`        TensorSpecs, raising DynamicShapeError
- `output_specs(model, inputs)`          TensorSpecs
- `to_relax(model, inputs) -> IRModule`
- `reference_run(path, feeds) -> list[ndarray]` and `reference_name() -> str`
"""

from __future__ import annotations

from types import ModuleType


def frontend_for(fmt: str) -> ModuleType:
    if fmt == "onnx":
        from edgefleet.compiler.frontends import onnx as module
    elif fmt == "tflite":
        from edgefleet.compiler.frontends import tflite as module
    else:  # formats are detected by the loader, so this is a programming error
        raise ValueError(f"no frontend for {fmt}")
    return module
