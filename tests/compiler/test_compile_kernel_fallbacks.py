"""A layout or schedule step that fails on one kernel costs only that kernel (issue 15): the kernel
keeps TVM's plain form, the compile names it with TVM's message, the manifest lists it under
runtime.kernel_fallbacks, and every other kernel keeps edgefleet's CPU pipeline."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("torch")

from support import torch_models  # noqa: E402

from edgefleet.package import open_package  # noqa: E402

# ONNX's own conformance case (shipped in the onnx wheel): bfloat16 attention with a boolean mask.
# TVM 0.27 cannot build two of its kernels once the default schedules vectorize them (its bfloat16
# and bool legalization rejects vector stores); as written they build.
BF16_CASE = "test_attention_4d_attn_mask_causal_bf16"
BF16_UNBUILDABLE = {"fused_greater_where_max", "matmul1"}


@pytest.fixture(scope="module")
def grouped_model(tmp_path_factory):
    return torch_models.export("grouped", tmp_path_factory.mktemp("grouped") / "grouped.onnx")


@pytest.fixture(scope="module")
def bf16_case():
    from edgefleet.compiler.conformance import list_cases

    return list_cases(["node"])[BF16_CASE]


def _compile(cli, model, tmp_path):
    result = cli("compile", model, "--target", "x86_64", "--task", "other", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    return result, " ".join(result.err.split())


def test_unlowerable_blocked_convolution_alone_runs_in_nchw(grouped_model, tmp_path, signing_key, cli, monkeypatch):
    """What TVM 0.27 does with a grouped NCHW16c convolution (it stays an unlowered call, and the
    VM cannot emit it), faked for AlexNet's two-group convolution only: that one convolution runs
    in NCHW, the other grouped ones stay blocked."""
    from edgefleet.compiler import graph

    real = graph._legalize_conv2d
    monkeypatch.setattr(
        graph,
        "_legalize_conv2d",
        lambda bb, call: (
            call if int(call.attrs.groups) == 2 and len(str(call.attrs.data_layout)) > 4 else real(bb, call)
        ),
    )
    result, said = _compile(cli, grouped_model, tmp_path)
    assert (
        "warning: conv2d 32->64 channels 3x3 groups=2 (NCHW16c): the NCHWc layout step failed (no kernel lowers "
        "this layout); this convolution runs in NCHW (slower)"
    ) in said
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as pkg:
        runtime = pkg.manifest.runtime
        assert runtime.pipeline == "edgefleet-cpu" and pkg.manifest.verification.status == "passed"
        assert [(k.kernel, k.step) for k in runtime.kernel_fallbacks] == [
            ("conv2d 32->64 channels 3x3 groups=2 (NCHW16c)", "layout")
        ]


def test_failure_outside_the_kernels_falls_back_to_tvm_default(grouped_model, tmp_path, signing_key, cli, monkeypatch):
    """No blocked convolution lowered at all (TVM's LegalizeOps alone): the VM cannot emit them, no
    single kernel is at fault, so the whole model builds with TVM's default pipeline and says what TVM
    said, without its "# Metadata omitted" footer."""
    from tvm import relax

    from edgefleet.compiler import graph

    monkeypatch.setattr(graph, "legalize", lambda _on_fallback, **_: relax.transform.LegalizeOps())
    result, said = _compile(cli, grouped_model, tmp_path)
    assert "CodeGenVMTIR cannot emit this Relax operator" in said and "building with TVM's default pipeline" in said
    assert "Metadata omitted" not in result.err
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as pkg:
        runtime = pkg.manifest.runtime
        assert runtime.pipeline == "tvm-default" and pkg.manifest.verification.status == "passed"
        assert "CodeGenVM" in runtime.pipeline_fallback_reason and runtime.kernel_fallbacks == []


def test_schedule_rule_failing_on_one_kernel_costs_only_its_schedule(tmp_path, signing_key, cli):
    """A genuine case: dlight's GEMV rule asserts on the log-sum-exp reduction's kernel (TVM 0.27).
    That kernel stays as written; the convolutions keep their blocked schedules; onnxruntime agrees."""
    model = torch_models.export("logsumexp_pool", tmp_path / "lse.onnx")
    _, said = _compile(cli, model, tmp_path)
    failed = re.search(
        r"warning: (\S+): the default schedule failed \(AssertionError at dlight/\S+/gemv.py:\d+\); "
        r"the kernel stays as written \(correct, slower\)",
        said,
    )
    assert failed and "exp_sum" in failed.group(1), said
    assert f"1 kernel(s) without a default schedule, left as written (correct, slower): {failed.group(1)}" in said
    assert "layout step failed" not in said and "TVM's default pipeline" not in said
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as pkg:
        runtime = pkg.manifest.runtime
        assert runtime.pipeline == "edgefleet-cpu" and pkg.manifest.verification.status == "passed"
        assert [(k.kernel, k.step) for k in runtime.kernel_fallbacks] == [(failed.group(1), "schedule")]


def test_kernels_tvm_cannot_build_as_scheduled_are_built_as_written(bf16_case, tmp_path, signing_key, cli):
    """A genuine case: the compile names the two kernels with TVM's build error, builds them as written,
    and the package gives ONNX's expected outputs (onnxruntime has no bfloat16 kernels to verify with)."""
    import onnx
    from onnx.backend.test.runner import Runner

    from edgefleet.agent.runtime_worker import open_tvm_model

    onnx.save(bf16_case.model, tmp_path / "attention.onnx")
    _, said = _compile(cli, tmp_path / "attention.onnx", tmp_path)
    for kernel in BF16_UNBUILDABLE:
        assert f"warning: {kernel}: TVM cannot build the scheduled kernel (dtype mismatch on BufferStore" in said
    assert "TVM's default pipeline" not in said
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as pkg:
        runtime = pkg.manifest.runtime
        assert runtime.pipeline == "edgefleet-cpu"
        assert {k.kernel for k in runtime.kernel_fallbacks} == BF16_UNBUILDABLE
        assert all(
            k.step == "schedule" and "dtype mismatch on BufferStore" in k.reason for k in runtime.kernel_fallbacks
        )
        inputs, expected = bf16_case.data_sets[0]
        actual = open_tvm_model(pkg.library).run(list(inputs))
    # ONNX's own comparison: two bfloat16 ulps for bfloat16 outputs.
    Runner.assert_similar_outputs(expected, [np.asarray(a) for a in actual], rtol=bf16_case.rtol, atol=bf16_case.atol)


def test_only_the_unbuildable_kernels_lose_their_schedule(bf16_case, tmp_path):
    from tvm import tirx

    from edgefleet.compiler.build import PIPELINE_CPU, build_with_fallback, optimize
    from edgefleet.compiler.frontends import onnx as frontend
    from edgefleet.compiler.targets import resolve_target
    from edgefleet.progress import Stages

    def scheduled(mod) -> set[str]:
        return {
            gv.name_hint
            for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and "tirx.is_scheduled" in f.attrs
        }

    target, stages = resolve_target("x86_64"), Stages(quiet=True)
    mod = frontend.to_relax(bf16_case.model, frontend.input_specs(bf16_case.model, {}))
    optimized = optimize(mod, target, 0, stages)
    built = build_with_fallback(mod, optimized, target, tmp_path / "model.so", stages)
    assert built.pipeline == PIPELINE_CPU and BF16_UNBUILDABLE <= scheduled(optimized.mod)
    assert scheduled(built.mod) == scheduled(optimized.mod) - BF16_UNBUILDABLE
