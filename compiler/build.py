"""Relax IRModule -> optimized -> built -> exported shared library, for one target."""

from __future__ import annotations

import hashlib
import json
import traceback
from dataclasses import dataclass
from pathlib import Path

from edgefleet.compiler import tuning
from edgefleet.compiler.targets import Target
from edgefleet.errors import BuildError, EdgefleetError
from edgefleet.package import KernelFallback
from edgefleet.progress import Stages
from edgefleet.signing import edgefleet_home


def tvm_target(target: Target):
    import tvm

    return tvm.target.Target(target.tvm_target)


def tuning_dir(target: Target) -> Path:
    """One MetaSchedule database per exact TVM target, reused by every model compiled for it.

    MetaSchedule keys records by workload hash, so models sharing layers share tuning.
    """
    key = hashlib.sha256(json.dumps(target.tvm_target, sort_keys=True).encode()).hexdigest()[:16]
    return edgefleet_home() / "tuning" / f"{target.name}-{key}"


def _cpu_pipeline(target: Target, tune_trials: int, kernels: KernelFallbacks, rpc: tuning.RpcTracker | None = None):
    """CPU: clean graph, NCHWc layout with prepacked weights, fused kernels, schedules, lowering.

    Kernels found in the tuning database (from this or any earlier compile for the same
    target) use their tuned schedule; the rest get the default schedules of `schedules.py`.
    A convolution whose blocked form cannot be lowered, or a kernel a schedule rule fails on,
    falls back alone (`kernels` records which and why).
    """
    import tvm
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from edgefleet.compiler import graph, schedules, static_plan, vector_math

    tgt = tvm_target(target)
    work = tuning_dir(target)
    report = kernels.report
    passes = [
        graph.cleanup(),
        _guarded(
            graph.nchwc_layout(
                x86_rewrites=target.arch == "x86_64",
                narrow_float_outputs=graph.is_aarch64(tgt),
            ),
            "the NCHWc layout step",
            "convolutions stay in NCHW (slower)",
            report,
        ),
        # int8 convolutions on raw int8 operands with SDOT where the target has the dot product
        # (rasp5's Cortex-A76). Their rescale on int32 lanes with SQRDMULH and the rounding division
        # after it as one SRSHL on every AArch64 target (both ARMv8.0 AdvSIMD): on rasp4b, together,
        # int8 MobileNetV2-0.35 7.31 -> 7.00 M instructions (either alone gained nothing or lost there).
        # Then the narrowing to int8 as saturating narrowings (sqxtn, sqxtun) instead of int32 clamps.
        *([graph.dot_product_convs(), graph.dot_product_dense()] if graph.has_dot_product(tgt) else []),
        # Without it (rasp4b), the int8 classifier on int16 operands (`smlal`) instead of int32 ones.
        *([graph.int16_dense()] if graph.is_aarch64(tgt) and not graph.has_dot_product(tgt) else []),
        *(
            [graph.sqrdmulh_rescales(), graph.rounding_shifts(), graph.saturating_narrowings()]
            if graph.is_aarch64(tgt)
            else []
        ),
        # x86 with AVX-512 VNNI (ml_c6i, the x86_64 package's VNNI library): int8 convolutions and
        # fully connected layers with vpdpbusd.
        *([graph.dot_product_convs(unsigned=True), graph.vnni_dense()] if graph.has_vnni(tgt) else []),
        # x86: int8 depthwise convolutions on raw int8 input (VNNI: uint8, a window row of 4 taps per
        # vpdpbusd), the zero-point corrections of the raw int8 convolutions inside the rescale constant
        # (a 32 x 32-bit product), int8 classifier weights, then every rescale's high multiply on int32
        # lanes (vpmuldq on even and odd lanes), and the rounding division before a ReLU output's
        # narrowing as one shift (its sign fix-up dropped, its 2^p in the high multiply's nudge; on
        # AVX-512 the shift and the output's zero point too, on the 64-bit sum); a padded int8 output's
        # unblock, slice and block into a smaller block as one channel permutation.
        *(
            [
                graph.int8_depthwise_convs(unsigned=graph.has_vnni(tgt)),
                graph.fold_int8_corrections(),
                graph.int8_dense_weights(),
                graph.sqrdmulh_rescales(x86_lanes=schedules.vector_lanes(tgt)),
                graph.relu_rounding_divisions(wide_shifts=schedules.vector_lanes(tgt) == 16),
                graph.compact_channel_slices(),
            ]
            if target.arch == "x86_64"
            else []
        ),
        # Sort, scan (cumsum) and sampling ops have no LegalizeOps rule: they are dispatched first.
        *cpu.library_dispatch_passes(tgt),
        graph.legalize(kernels.layout_failed, vector_exp=vector_math.applies(tgt)),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        graph.int32_multipliers(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
        kernels.remember_unscheduled(),
    ]
    if tune_trials > 0:
        import psutil

        work.mkdir(parents=True, exist_ok=True)
        # MetaSchedule refuses a CPU target without num-cores: this machine's, or the device's
        # when candidates run on it through RPC.
        cores = rpc.cores if rpc is not None else psutil.cpu_count(logical=False) or 1
        tune_target = tvm.target.Target({**target.tvm_target, "num-cores": cores})
        passes.append(tuning.tune_pass(tune_target, work, tune_trials, report, rpc))
    if tuning.has_database(work):
        passes.append(relax.transform.MetaScheduleApplyDatabase(str(work)))
    passes += [
        schedules.default_schedules(kernels.schedule_failed),
        _report_unscheduled(report),
        # x86 only so far: ARM's instruction counts (docs/performance.md) were measured without it.
        *([graph.inplace_concats(kernels.unscheduled)] if target.arch == "x86_64" else []),
        *cpu.dataflow_lower_passes(tgt),
        *cpu.finalize_passes(tgt),
        static_plan.static_plan(report),
    ]
    return tvm.transform.Sequential(passes, name="EdgefleetCPU")


def _guarded(step, what: str, consequence: str, report):
    """`step`, or the module unchanged (with a notice) when it fails: one failing step must not
    cost the whole pipeline (whose fallback is TVM's unscheduled default)."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetGuarded")
    def _pass(mod, _ctx):
        try:
            return step(mod)
        except Exception as exc:  # TVM surfaces its C++ errors as several Python types
            report(f"warning: {what} failed ({tvm_message(exc, 200)}); {consequence}")
            return mod

    return _pass


def _report_unscheduled(report):
    """Name the kernels no default schedule rule took: they run correct but as written (slow)."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetReportUnscheduled")
    def _pass(mod, _ctx):
        # A scheduled kernel has parallel or vectorized loops; dlight marks nothing in 0.27.
        kernels = [(gv, f) for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)]
        marks = ("T.parallel", "T.vectorized")
        names = sorted(str(gv.name_hint) for gv, f in kernels if not any(k in f.script() for k in marks))
        if names:
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            report(f"{len(names)} kernel(s) without a default schedule, left as written (correct, slower): {shown}")
        return mod

    return _pass


def _optimize_pipeline(
    target: Target, tune_trials: int, kernels: KernelFallbacks, rpc: tuning.RpcTracker | None = None
):
    from tvm import relax

    if target.device == "cpu":
        return _cpu_pipeline(target, tune_trials, kernels, rpc)
    # For CUDA the default pipeline applies dlight's default GPU schedules (threads bound).
    return relax.get_default_pipeline(tvm_target(target))


# Recorded as the manifest's runtime.pipeline.
PIPELINE_CPU = "edgefleet-cpu"
PIPELINE_TVM_DEFAULT = "tvm-default"


class KernelFallbacks:
    """The CPU pipeline's fallbacks for single kernels: which fell back and why (the manifest's
    runtime.kernel_fallbacks), and every kernel as it was before any schedule, which is what the
    build uses for a kernel whose scheduled form TVM cannot build."""

    def __init__(self, report) -> None:
        self.report = report
        self.fallbacks: list[KernelFallback] = []
        self.unscheduled: dict[str, object] = {}  # kernel name -> tirx.PrimFunc

    def _add(self, kernel: str, step: str, reason: str, consequence: str) -> None:
        self.fallbacks.append(KernelFallback(kernel=kernel, step=step, reason=reason[:500]))
        self.report(f"warning: {kernel}: {reason}; {consequence}")

    def layout_failed(self, conv: str, reason: str) -> None:
        self._add(conv, "layout", f"the NCHWc layout step failed ({reason})", "this convolution runs in NCHW (slower)")

    def schedule_failed(self, kernel: str, exc: Exception) -> None:
        message = tvm_message(exc, 300)
        if not str(exc).strip():  # a bare assert (dlight's GEMV has them): say where it fired
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            message += f" at {'/'.join(Path(frame.filename).parts[-3:])}:{frame.lineno}"
        self._add(
            kernel,
            "schedule",
            f"the default schedule failed ({message})",
            "the kernel stays as written (correct, slower)",
        )

    def build_failed(self, kernel: str, reason: str) -> None:
        self._add(
            kernel,
            "schedule",
            f"TVM cannot build the scheduled kernel ({reason})",
            "it is built as written (correct, slower)",
        )

    def remember_unscheduled(self):
        import tvm
        from tvm import tirx

        @tvm.transform.module_pass(opt_level=0, name="EdgefleetRememberUnscheduled")
        def _pass(mod, _ctx):
            # In place: inplace_concats holds this dict to add its kernel copies' unscheduled forms.
            self.unscheduled.clear()
            self.unscheduled.update(
                {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
            )
            return mod

        return _pass


@dataclass
class Optimized:
    mod: object  # tvm.IRModule, ready for build_and_export
    pipeline: str  # PIPELINE_CPU or PIPELINE_TVM_DEFAULT
    fallback_reason: str | None = None  # why edgefleet's CPU pipeline was not used
    kernels: KernelFallbacks | None = None  # edgefleet's CPU pipeline: the kernels that fell back alone

    @property
    def kernel_fallbacks(self) -> list[KernelFallback]:
        return self.kernels.fallbacks if self.kernels is not None else []


def tvm_message(exc: Exception, limit: int = 400) -> str:
    """TVM's own words for a failure: its first line and its last (e.g. the offending call),
    without the "# Metadata omitted" footer TVM appends to printed IR."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith("# Metadata omitted")]
    if not lines:
        return type(exc).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} | {lines[-1]}"
    return text[:limit]


_first_line = tvm_message


def optimize(mod, target: Target, tune_trials: int, stages: Stages, rpc: tuning.RpcTracker | None = None) -> Optimized:
    """Run the target's pipeline; a CPU graph that edgefleet's pipeline cannot handle falls back.

    The fallback is TVM's default pipeline (correct, unscheduled kernels: tens of times slower),
    announced on the progress output and recorded in the manifest, so a rare graph shape costs
    speed instead of the whole compile.
    """
    tgt = tvm_target(target)
    detail = f"{tune_trials} tuning trials, database {tuning_dir(target)}" if tune_trials else ""
    with stages.stage("optimize", detail):
        try:
            with tgt:
                pipeline = PIPELINE_CPU if target.device == "cpu" else PIPELINE_TVM_DEFAULT
                kernels = KernelFallbacks(stages.note)
                return Optimized(_optimize_pipeline(target, tune_trials, kernels, rpc)(mod), pipeline, kernels=kernels)
        except EdgefleetError:  # edgefleet's own refusals (e.g. a damaged tuning database) say what to do
            raise
        except Exception as exc:  # TVM surfaces its C++ errors as several Python types
            first = exc
        if target.device == "cpu":
            from tvm import relax

            reason = _first_line(first)
            stages.note(
                f"warning: edgefleet's CPU pipeline failed ({reason}); building with TVM's default pipeline, whose kernels are unscheduled and much slower"
            )
            try:
                with tgt:
                    return Optimized(relax.get_default_pipeline(tgt)(mod), PIPELINE_TVM_DEFAULT, reason)
            except Exception:  # report the first failure: it is the one to fix
                pass
        raise BuildError(
            f"TVM failed to optimize the model for {target.name}: {_first_line(first)}",
            "report the model and target; try another target meanwhile",
        ) from None


def build_with_fallback(mod, optimized: Optimized, target: Target, out: Path, stages: Stages) -> Optimized:
    """Build `optimized`. When that fails after edgefleet's CPU pipeline, each kernel is built alone:
    those whose scheduled form TVM cannot build are built as written, named with TVM's message.
    Should that not do (the failure is outside the kernels, or a kernel fails as written too), say
    so and build `mod` (the imported model) with TVM's default pipeline. Returns what was built."""
    try:
        build_and_export(optimized.mod, target, out, stages)
        return optimized
    except BuildError as exc:
        if optimized.pipeline != PIPELINE_CPU:
            raise
        reason = exc.cause
    patched = _unschedule_unbuildable(optimized, target, stages)
    if patched is not None:
        try:
            build_and_export(patched.mod, target, out, stages)
            return patched
        except BuildError as exc:
            reason = exc.cause
    from tvm import relax

    stages.note(
        f"warning: the build after edgefleet's CPU pipeline failed ({reason}); "
        "building with TVM's default pipeline, whose kernels are unscheduled and much slower"
    )
    tgt = tvm_target(target)
    with tgt:
        fallback = Optimized(relax.get_default_pipeline(tgt)(mod), PIPELINE_TVM_DEFAULT, reason)
    build_and_export(fallback.mod, target, out, stages)
    return fallback


def _unschedule_unbuildable(optimized: Optimized, target: Target, stages: Stages) -> Optimized | None:
    """`optimized` with each kernel TVM cannot build as scheduled replaced by its unscheduled form;
    None when no kernel fails alone or a failing one has no unscheduled form that builds."""
    from tvm import tirx

    tgt = tvm_target(target)
    kernels = [(gv, f) for gv, f in optimized.mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    with stages.stage("find kernels that do not build", f"{len(kernels)} kernels, one at a time"):
        failed = {gv: (f, error) for gv, f in kernels if (error := _build_error(gv, f, tgt)) is not None}
        plain = {gv: _as_lowered(optimized.kernels.unscheduled.get(gv.name_hint), f) for gv, (f, _) in failed.items()}
        if not failed or any(f is None or _build_error(gv, f, tgt) is not None for gv, f in plain.items()):
            return None
    mod = optimized.mod.clone()
    for gv, (_, error) in failed.items():
        mod[gv] = plain[gv]
        optimized.kernels.build_failed(gv.name_hint, error)
    return Optimized(mod, PIPELINE_CPU, kernels=optimized.kernels)


def _as_lowered(unscheduled, scheduled):
    """The kernel before scheduling with the attributes the lowering passes since gave its scheduled
    form (global_symbol, which the VM links by); it has the same parameters. None without one."""
    if unscheduled is None:
        return None
    return unscheduled.with_attrs({k: v for k, v in scheduled.attrs.items() if k != "tirx.is_scheduled"})


def _build_error(gv, func, tgt) -> str | None:
    """TVM's message when `func` alone does not build for `tgt`, else None."""
    import tvm

    try:
        tvm.tirx.build(tvm.IRModule({gv: func}), target=tgt)
    except Exception as exc:  # TVM surfaces its C++ errors as several Python types
        return tvm_message(exc, 300)
    return None


def _exec_mode(target: Target) -> str:
    """CPU: the Relax VM's functions compiled to machine code with the kernels ("compiled"), which
    the VM calls instead of interpreting bytecode: 7% fewer ms per inference for int8
    MobileNetV2-0.35 on x86 (docs/performance.md, the cost outside the kernels). Libraries built
    with bytecode load and run on the same runtime. GPU builds keep TVM's default."""
    return "compiled" if target.device == "cpu" else "bytecode"


def _tir_config(target: Target) -> dict[str, bool]:
    """x86 CPU: the kernels built without their argument checks (each tensor argument's type, ndim,
    dtype, shape, strides, device and alignment, per call): only the VM's `main` calls them, with the
    tensors the model's types fix, and `main` still checks the model's inputs with its builtins
    (vm.builtin.check_tensor_info, match_shape). int8 MobileNetV2-0.35 on x86: 3.3% fewer ms per
    inference (docs/performance.md, the cost outside the kernels). ARM keeps them: its instruction
    counts were measured with them."""
    return {"tirx.disable_assert": True} if target.arch == "x86_64" and target.device == "cpu" else {}


def build_and_export(mod, target: Target, out: Path, stages: Stages) -> Path:
    import tvm

    tgt = tvm_target(target)
    with stages.stage("build"), tvm.transform.PassContext(config=_tir_config(target)):
        try:
            executable = tvm.relax.build(mod, target=tgt, relax_pipeline=None, exec_mode=_exec_mode(target))
        except Exception as exc:  # TVM surfaces its C++ errors as several Python types
            raise BuildError(
                f"TVM failed to build for {target.name}: {tvm_message(exc)}",
                "report the model and target; try another target meanwhile",
            ) from None
    with stages.stage("export", target.cross_cc or "host cc"):
        try:
            if target.cross_cc:
                executable.export_library(str(out), fcompile=tvm.support.cc.cross_compiler(target.cross_cc))
            else:
                executable.export_library(str(out))
        except RuntimeError as exc:
            raise BuildError(
                f"linking the library for {target.name} failed: {str(exc).strip().splitlines()[1 if len(str(exc).splitlines()) > 1 else 0][:300]}",
                f"check that {target.cross_cc or 'gcc'} works",
            ) from None
    return out
