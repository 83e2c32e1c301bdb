"""Grouped and depthwise-multiplier convolutions (AlexNet, ShuffleNet, ResNeXt style) compile with
edgefleet's CPU pipeline and match onnxruntime; a build step that fails falls back and says why (issue 15)."""

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


def test_unbuildable_pipeline_output_falls_back_with_tvms_message(grouped_model, tmp_path, signing_key, cli,
                                                                  monkeypatch):
    """Fake the gap this issue found (grouped NCHW16c convolutions left unlowered): the build says what TVM
    said, without its "# Metadata omitted" footer, and builds with TVM's default pipeline instead."""
    from edgefleet.compiler import graph

    real = graph._legalize_conv2d
    # What TVM 0.27 does itself: a grouped convolution in NCHW16c stays an unlowered call.
    def leave_grouped(bb, call):
        grouped_blocked = int(call.attrs.groups) in (2, 4) and len(str(call.attrs.data_layout)) > 4
        return call if grouped_blocked else real(bb, call)

    monkeypatch.setattr(graph, "_legalize_conv2d", leave_grouped)
    result = cli("compile", grouped_model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    assert "CodeGenVM cannot emit this Relax operator" in result.err and "TVM's default pipeline" in result.err
    assert "Metadata omitted" not in result.err
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as pkg:
        assert pkg.manifest.runtime.pipeline == "tvm-default" and pkg.manifest.verification.status == "passed"
        assert "CodeGenVM" in pkg.manifest.runtime.pipeline_fallback_reason


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

    monkeypatch.setattr(schedules, "default_schedules", lambda: tvm.transform.Sequential([], name="NoSchedules"))
    result = cli("compile", grouped_model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    text = " ".join(result.err.split())
    assert "kernel(s) without a default schedule, left as written (correct, slower): fused_" in text
