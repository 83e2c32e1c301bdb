"""Grouped and depthwise-multiplier convolutions (AlexNet, ShuffleNet, ResNeXt style) compile with
edgefleet's CPU pipeline and match onnxruntime (issue 15). Fallbacks for single kernels: test_compile_kernel_fallbacks.py."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from support import torch_models  # noqa: E402

from edgefleet.package import open_package  # noqa: E402


@pytest.fixture(scope="module")
def grouped_model(tmp_path_factory):
    return torch_models.export("grouped", tmp_path_factory.mktemp("grouped") / "grouped.onnx")


def test_grouped_convolutions_compile_blocked_and_verify(grouped_model, tmp_path, signing_key, cli):
    result = cli("compile", grouped_model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    assert "warning" not in result.err
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as pkg:
        assert pkg.manifest.runtime.pipeline == "edgefleet-cpu" and pkg.manifest.verification.status == "passed"


def test_failing_layout_step_keeps_the_rest_of_the_cpu_pipeline(grouped_model, tmp_path, signing_key, cli,
                                                                monkeypatch):
    """A layout step that raises (faked) leaves the graph in NCHW with a warning; the other steps,
    schedules included, still run: the package says edgefleet-cpu, not TVM's fallback."""
    import tvm

    from edgefleet.compiler import graph

    @tvm.transform.module_pass(opt_level=0, name="Broken")
    def broken(mod, _ctx):
        raise RuntimeError("layout inference failed on this graph")

    monkeypatch.setattr(graph, "nchwc_layout", lambda: broken)
    result = cli("compile", grouped_model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    said = " ".join(result.err.split())
    assert "the NCHWc layout step failed (layout inference failed on this graph); convolutions stay in NCHW" in said
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as pkg:
        assert pkg.manifest.runtime.pipeline == "edgefleet-cpu" and pkg.manifest.verification.status == "passed"


def test_kernels_without_a_schedule_are_named(grouped_model, tmp_path, signing_key, cli, monkeypatch):
    import tvm

    from edgefleet.compiler import schedules

    monkeypatch.setattr(schedules, "default_schedules", lambda _on_failure: tvm.transform.Sequential([], name="NoSchedules"))
    result = cli("compile", grouped_model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    text = " ".join(result.err.split())
    assert "kernel(s) without a default schedule, left as written (correct, slower): fused_" in text
