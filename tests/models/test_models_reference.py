"""Reference architectures built from code: the right structure, and ONNX that runs."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.errors import UsageError
from edgefleet.models.reference import export_reference


def _load(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    params = sum(numpy_helper.to_array(t).size for t in model.graph.initializer if t.dims)
    return model, convs, groups, params


def _run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path)).run(None, {"input": x})[0]


def test_mobilenetv2_has_the_papers_structure(tmp_path, cli):
    result = cli("models", "reference", "mobilenetv2", "--out", tmp_path / "mobilenetv2.onnx")
    assert result.code == 0, result.err
    model, convs, groups, params = _load(tmp_path / "mobilenetv2.onnx")
    # 1 stem conv + 17 inverted residual blocks (the first has no expansion) + the final 1x1 conv.
    assert len(convs) == 52
    assert sum(g > 1 for g in groups) == 17  # one depthwise conv per block
    # torchvision's MobileNetV2 has 3,504,872 parameters; folding batch norm drops one per channel (17,056).
    assert params == 3_504_872 - 17_056
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 224, 224]


def test_mobilenetv2_small_input_runs(tmp_path):
    path = export_reference("mobilenetv2", tmp_path / "m.onnx", input_size=96, classes=10, seed=1)
    rng = np.random.default_rng(0)
    a, b = (_run(path, rng.normal(0, 1, (1, 3, 96, 96)).astype(np.float32)) for _ in range(2))
    assert a.shape == (1, 10) and np.isfinite(a).all() and np.abs(a - b).max() > 1e-3


def test_scenenet_reference_is_the_trained_architecture(tmp_path):
    import torch

    from edgefleet.models.train import SceneNet

    path = export_reference("scenenet", tmp_path / "scenenet.onnx", classes=3, seed=2)
    model, convs, _, _ = _load(path)
    assert len(convs) == 4 and [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    torch.manual_seed(2)
    net = SceneNet(3).eval()
    x = np.random.default_rng(0).normal(0, 1, (1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert np.abs(_run(path, x) - expected).max() < 1e-4


def test_reference_refuses_unknown_names_and_sizes(tmp_path):
    with pytest.raises(UsageError, match="unknown reference architecture 'resnet9000'"):
        export_reference("resnet9000", tmp_path / "x.onnx")
    with pytest.raises(UsageError, match="outside 16..1024"):
        export_reference("scenenet", tmp_path / "x.onnx", input_size=8)
    assert not (tmp_path / "x.onnx").exists()
