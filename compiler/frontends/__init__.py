"""Model formats the compiler reads, one module per format, chosen by the source's format.

Each frontend module exposes the same functions:

- `load(path) -> model`                  parse, raising CorruptModelError
- `operators(model) -> Counter[str]`     operator names and counts
- `unsupported(model) -> Counter[str]`   operators TVM's importer cannot convert
- `input_specs(model, overrides, notices)` TensorSpecs (a dynamic batch axis becomes 1, with a notice),
                                         raising DynamicShapeError for other dynamic axes
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


def batch_one(name: str, dims: list[int | None], shown: str, notices: list[str] | None) -> list[int] | None:
    """`dims` with a dynamic batch axis (the first, and only it) fixed to 1, else None.

    Exporters mark the batch axis dynamic by default (torch dynamic_axes, Keras' -1), and a
    camera feeds one frame at a time: batch 1 is what the reference runtimes run too.
    """
    if len(dims) < 2 or dims[0] is not None or any(d is None for d in dims[1:]):
        return None
    fixed = [1, *dims[1:]]
    if notices is not None:
        notices.append(
            f"input {name} {shown} has a dynamic batch axis: compiled for batch 1 "
            f"(--input-shape {name}:N,{','.join(map(str, fixed[1:]))} compiles another)"
        )
    return fixed
