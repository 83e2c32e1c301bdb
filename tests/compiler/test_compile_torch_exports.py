"""Detector and classifier exports from torch.onnx.export compile as exported (issue 15).

The models (tests/support/torch_models.py) are built and exported here, without downloads.
Their exports carry Shape -> Gather -> Concat -> Reshape chains; a dynamic batch axis compiles
for batch 1 with a notice. Verification compares the package with onnxruntime.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("torch")

from support import torch_models  # noqa: E402

from edgefleet.package import inspect_package  # noqa: E402

SHAPE_CHAIN = ("Shape", "Gather", "Concat", "Reshape")


def _built(package):
    """The package's runtime and verification records."""
    manifest = inspect_package(package, []).manifest
    return manifest.runtime, manifest.verification


def _outputs_depend_on_input(path) -> float:
    """Largest change of any output between two random images (0 would make numerics checks vacuous)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = [1 if not isinstance(d, int) else d for d in session.get_inputs()[0].shape]
    rng = np.random.default_rng(3)
    a, b = (session.run(None, {"images": rng.random(shape, dtype=np.float32)}) for _ in range(2))
    return max(float(np.abs(x - y).max() / (np.abs(x).max() + 1e-9)) for x, y in zip(a, b))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic-batch"])
@pytest.mark.parametrize("name", list(torch_models.MODELS))
def test_torch_export_compiles_and_verifies(name, dynamic, tmp_path, signing_key, cli):
    import onnx

    model = torch_models.export(name, tmp_path / f"{name}.onnx", dynamic_batch=dynamic)
    ops = Counter(n.op_type for n in onnx.load(str(model)).graph.node)
    # torch folds a static export's x.size(0) itself; the YOLO chunk/grid chains stay in every export.
    chained = dynamic or name.startswith("yolo")
    assert all(ops[op] for op in SHAPE_CHAIN) or not chained, f"no shape arithmetic to fold: {dict(ops)}"
    assert _outputs_depend_on_input(model) > 0.01
    result = cli("compile", model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    runtime, verification = _built(tmp_path / "p.tar.gz")
    assert verification.status == "passed" and runtime.pipeline == "edgefleet-cpu" and not runtime.kernel_fallbacks, (
        verification,
        runtime,
    )
    assert ("dynamic batch axis: compiled for batch 1" in result.err) == dynamic, result.err


def test_torch_default_export_folded_by_torch_compiles(tmp_path, signing_key):
    """torch's own constant folding (its default) leaves fewer chains; that export compiles as well."""
    from edgefleet.compiler.compile import compile_model

    model = torch_models.export("yolov8", tmp_path / "yolo.onnx", dynamic_batch=True, fold=True)
    result = compile_model(str(model), "x86_64", output=tmp_path / "p.tar.gz", task="other", quiet=True)
    assert result.manifest.verification.status == "passed"
    assert result.manifest.inputs[0].shape == [1, 3, 96, 96]
