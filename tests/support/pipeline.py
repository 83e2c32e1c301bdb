"""compiler/build.py's CPU pipeline up to fused kernels, for tests that look at the kernels the
default schedules and tuning receive (not at what they make of them)."""

from __future__ import annotations

import onnx


def fused_kernels(model: onnx.ModelProto, tgt):
    """`model` imported, blocked, legalized and fused for the TVM target `tgt`: an IRModule whose
    PrimFuncs are the unscheduled kernels."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from edgefleet.compiler import graph
    from edgefleet.compiler.build import KernelFallbacks

    passes = [
        graph.cleanup(),
        graph.nchwc_layout(),
        graph.legalize(KernelFallbacks(print).layout_failed),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
    with tgt:
        return tvm.transform.Sequential(passes)(from_onnx(model, keep_params_in_input=False))
