"""Reference architectures built from code: the right structure, and ONNX that matches torch."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.errors import UsageError
from edgefleet.models.reference import build_reference, export_reference


def _conv_nodes(path):
    import onnx

    model = onnx.load(str(path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    return model, convs, groups


def _torch_vs_onnxruntime(name: str, path, size: int, classes: int) -> float:
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).normal(0, 1, (1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = build_reference(name, classes=classes, seed=0)(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    assert got.shape == (1, classes)
    return float(np.abs(got - expected).max())


def test_mobilenetv2_has_the_papers_structure_and_exports_faithfully(tmp_path):
    net = build_reference("mobilenetv2", classes=1000)
    assert sum(p.numel() for p in net.parameters()) == 3_504_872  # MobileNetV2 1.0, 224, 1000 classes
    path = export_reference("mobilenetv2", tmp_path / "mobilenetv2.onnx", input_size=96, classes=1000)
    _, convs, groups = _conv_nodes(path)
    # 1 stem conv + 17 inverted residual blocks (the first has no expansion) + the final 1x1 conv.
    assert len(convs) == 52
    assert sum(g > 1 for g in groups) == 17  # one depthwise conv per block
    assert _torch_vs_onnxruntime("mobilenetv2", path, 96, 1000) < 1e-4


def test_scenenet_reference_is_the_trained_architecture(tmp_path, models_cli):
    result = models_cli("models", "reference", "scenenet", "--out", tmp_path / "scenenet.onnx", "--classes", 3)
    assert result.code == 0, result.err
    model, convs, _ = _conv_nodes(tmp_path / "scenenet.onnx")
    assert len(convs) == 4 and [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert _torch_vs_onnxruntime("scenenet", tmp_path / "scenenet.onnx", 64, 3) < 1e-4


def test_reference_refuses_unknown_names_and_sizes(tmp_path):
    with pytest.raises(UsageError, match="unknown reference architecture 'resnet9000'"):
        export_reference("resnet9000", tmp_path / "x.onnx")
    with pytest.raises(UsageError, match="outside 16..1024"):
        export_reference("scenenet", tmp_path / "x.onnx", input_size=8)
    assert not (tmp_path / "x.onnx").exists()
