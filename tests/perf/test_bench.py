"""`edgefleet bench`: real TVM package vs real ONNX Runtime on a small model, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefleet.cli import cli
from edgefleet.compiler.bench import bench, cpu_peak_gflops, onnx_gflop
from edgefleet.compiler.compile import compile_model
from edgefleet.errors import UsageError
from edgefleet.models.mobilenetv2 import save as save_mobilenetv2
from edgefleet.signing import create_signing_key


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One small package for the module (compiling takes most of these tests' time)."""
    tmp = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEFLEET_HOME", str(tmp / "home"))
        mp.delenv("EDGEFLEET_SIGNING_KEY", raising=False)
        create_signing_key()
        model = save_mobilenetv2(tmp / "mnv2.onnx", size=32, width=0.35, classes=10)
        package = compile_model(str(model), "x86_64", output=tmp / "mnv2.tar.gz", quiet=True).package
        yield model, package


@pytest.fixture
def small_model(compiled) -> Path:
    return compiled[0]


@pytest.fixture
def small_package(compiled, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGEFLEET_HOME", str(compiled[1].parent / "home"))
    return compiled[1]


def test_gflop_count_of_a_known_model(tmp_path: Path):
    # MobileNetV2 1.0 at 224x224 is ~300 M multiply-adds (the paper's table 3).
    gflop = onnx_gflop(save_mobilenetv2(tmp_path / "m.onnx"))
    assert 0.55 < gflop < 0.65


def test_gflop_count_follows_a_channel_shuffle_reshaped_by_x_shape(tmp_path: Path):
    """The ShuffleNet-like test net reshapes by `x.shape` (Shape/Gather/Concat/Reshape in ONNX); the
    count must match one taken from the PyTorch modules' output shapes, every conv after a shuffle included."""
    torch = pytest.importorskip("torch")
    from support import torch_models

    cls, size = torch_models.MODELS["shufflenet"]
    model, flops = cls().eval(), []

    def count(module, _inputs, out) -> None:
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            flops.append(2 * out.numel() * k)
        elif isinstance(module, torch.nn.Linear):
            flops.append(2 * out.numel() * module.in_features)

    for m in model.modules():
        m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.rand(1, 3, size, size))
    gflop = onnx_gflop(torch_models.export("shufflenet", tmp_path / "s.onnx"))
    assert gflop == pytest.approx(sum(flops) / 1e9, rel=1e-9)


def test_bench_package_against_onnxruntime(small_package: Path):
    result = bench(str(small_package), runs=3, warmup=1, threads=1)
    by = {r.runtime: r for r in result.results}
    assert by["tvm"].median_ms > 0 and by["onnxruntime"].median_ms > 0
    assert by["onnxruntime"].ratio_to_tvm == pytest.approx(by["tvm"].median_ms / by["onnxruntime"].median_ms)
    assert by["onnxruntime"].max_abs_diff < 1e-3  # same inputs, same model
    assert "ONNX" in by["tflite"].skipped and by["tflite"].median_ms is None
    assert result.gflop and by["tvm"].gflops == pytest.approx(result.gflop / by["tvm"].median_ms * 1e3)
    if cpu_peak_gflops(1):
        assert 0 < by["tvm"].peak_fraction < 1


def test_bench_cli_json_and_missing_source(small_package: Path, small_model: Path, tmp_path: Path):
    out = CliRunner().invoke(cli, ["bench", str(small_package), "--runs", "2", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["format_version"] == 1
    assert [r["runtime"] for r in data["results"]] == ["tvm", "onnxruntime", "tflite"]
    # Source moved away: ONNX Runtime is skipped with the reason, unless --reference is given.
    moved = tmp_path / "elsewhere.onnx"
    shutil.move(small_model, moved)
    try:
        result = bench(str(small_package), runs=1, warmup=1)
        assert "not on this machine" in {r.runtime: r for r in result.results}["onnxruntime"].skipped
        result = bench(str(small_package), runs=1, warmup=1, reference=moved)
        assert {r.runtime: r for r in result.results}["onnxruntime"].median_ms > 0
    finally:
        shutil.move(moved, small_model)


def test_bench_usage_errors(small_model: Path, tmp_path: Path, edgefleet_home):
    with pytest.raises(UsageError, match="--target is required"):
        bench(str(small_model))
    with pytest.raises(UsageError, match="not a package"):
        bench(str(tmp_path / "x.tar.gz"), target="x86_64")
