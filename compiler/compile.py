"""`edgefleet compile`: model source -> signed model package for one target."""

from __future__ import annotations

import math
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edgefleet import __version__
from edgefleet.compiler import tuning
from edgefleet.compiler.baseline import check_source as check_baseline_source
from edgefleet.compiler.baseline import package_baseline
from edgefleet.compiler.build import PIPELINE_CPU, build_with_fallback, optimize, tuning_dir, tvm_message
from edgefleet.compiler.frontends import frontend_for
from edgefleet.compiler.source import fetch_model
from edgefleet.compiler.targets import ISA_LEVELS, IsaLevel, Target, resolve_target
from edgefleet.compiler.verify import DEFAULT_ATOL, DEFAULT_RTOL, skipped, verify_native
from edgefleet.errors import BuildError, NumericsMismatchError, UnsupportedOperatorsError, UsageError
from edgefleet.package import (
    NAME_PATTERN,
    VARIANTS,
    DetectionInfo,
    LibraryVariant,
    LibraryVariants,
    Manifest,
    Preprocessing,
    TargetInfo,
    TensorSpec,
    Verification,
    now_utc,
    parse_version,
    requirement_for,
    write_package,
)
from edgefleet.progress import Stages
from edgefleet.signing import load_signing_key
from edgefleet.strict import first_error

if TYPE_CHECKING:
    import numpy as np


@dataclass
class OperatorReport:
    """What `compile --check` prints: each operator, its count, and whether TVM converts it."""

    format: str
    counts: Counter
    unsupported: Counter
    # ONNX graph inputs whose values TVM needs at compile time -> where they are used
    # (compile them with --constant-input NAME=VALUES; compiler/frontends/onnx/params.py).
    constant_inputs_needed: dict[str, list[str]] = field(default_factory=dict)
    # TFLite: quantized operators compiled through TVM's float lowering, not TFLite's integer kernels
    # ("LOGISTIC (int8 quantized)" -> count); LiteRT verification decides.
    approximated: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.unsupported


@dataclass
class CompileResult:
    package: Path
    manifest: Manifest
    timings: dict[str, float] = field(default_factory=dict)


def unsupported_error(report: OperatorReport, uri: str) -> UnsupportedOperatorsError:
    listed = ", ".join(f"{op} x{n}" for op, n in sorted(report.unsupported.items()))
    fix = (
        frontend_for(report.format).refusal_fix()
        if report.format == "tflite"
        else (
            "replace them in the model (or export with another opset); `edgefleet compile --check` lists every operator"
        )
    )
    what = "operator type(s) TVM's TFLite importer" if report.format == "tflite" else "operator type(s) TVM"
    return UnsupportedOperatorsError(f"{uri} uses {len(report.unsupported)} {what} cannot convert: {listed}", fix)


def check_operators(model: str, *, member: str | None = None, workdir: Path | None = None) -> OperatorReport:
    """List the operators `model` uses and which of them the compiler cannot convert."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-check-", dir=workdir) as tmp:
        source = fetch_model(model, Path(tmp), member=member)
        frontend = frontend_for(source.format)
        parsed = frontend.load(source.path)
        needed, approximated = {}, Counter()
        if source.format == "onnx":
            from edgefleet.compiler.frontends.onnx.params import parameter_inputs

            needed = parameter_inputs(parsed)
        else:
            approximated = frontend.approximated(parsed)
        return OperatorReport(
            source.format, frontend.operators(parsed), frontend.unsupported(parsed), needed, approximated
        )


def _default_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "model"
    return name[:128]


def _read_labels(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read labels file {path}: {exc}", "pass a UTF-8 text file with one label per line"
        ) from None
    return [line for line in lines if line]


def _check_name_and_version(name: str | None, version: str) -> None:
    """Refuse a bad --name or --version before minutes of compiling, not at the signing step."""
    try:
        parse_version(version)
    except ValueError as exc:
        raise UsageError(
            f"--version {version!r}: {exc}", "pass dotted integers, e.g. --version 3 or --version 1.2.0"
        ) from None
    if name is not None and not re.fullmatch(NAME_PATTERN, name):
        raise UsageError(
            f"--name {name!r} is not a valid package name",
            "use letters, digits, '.', '_' and '-' (up to 128, starting with a letter or digit)",
        )


def default_layout(fmt: str) -> str:
    """TFLite models take NHWC images, ONNX exporters (PyTorch) NCHW."""
    return "NHWC" if fmt == "tflite" else "NCHW"


def build_preprocessing(
    options: Preprocessing | dict[str, Any] | None, fmt: str, inputs: list[TensorSpec], task: str
) -> Preprocessing:
    """Complete the preprocessing options (the layout defaults per model format) and check them against the input.

    For image tasks the agent must be able to produce the first input from a frame: its channel
    axis (per layout) must hold 3 values for RGB/BGR or 1 for GRAY, a --resize must equal the
    input's height and width, and mean/std need one value per channel.
    """
    if isinstance(options, Preprocessing):
        pre = options
    else:
        given = dict(options or {})
        if given.get("layout") is None:
            given["layout"] = default_layout(fmt)
        try:
            pre = Preprocessing(**given)
        except ValidationError as exc:
            first = first_error(exc)
            raise UsageError(
                f"preprocessing option {first.where}: {first.msg}",
                "see `edgefleet compile --help` for the preprocessing options",
            ) from None
    channels = 1 if pre.color_order == "GRAY" else 3
    for option, values in (("mean", pre.mean), ("std", pre.std)):
        if len(values) not in (channels, 3):
            raise UsageError(
                f"--{option} has {len(values)} values; {pre.color_order} frames have {channels} channel(s)",
                f"pass {channels} comma-separated value(s) to --{option}",
            )
    if any(v == 0 for v in pre.std):
        raise UsageError(
            "--std has a zero, which would divide by zero",
            "pass the per-channel standard deviations the model was trained with",
        )
    if task == "other" or not inputs or len(inputs[0].shape) != 4:
        return pre
    spec = inputs[0]
    axis = {"NCHW": 1, "NHWC": 3}
    if spec.shape[axis[pre.layout]] != channels:
        other = "NHWC" if pre.layout == "NCHW" else "NCHW"
        hint = (
            f"--layout {other}"
            if spec.shape[axis[other]] == channels
            else f"--color-order {'GRAY' if spec.shape[axis[pre.layout]] == 1 else 'RGB'} or the right --layout"
        )
        raise UsageError(
            f"input {spec.name} has shape {spec.shape}: with layout {pre.layout} its channel axis holds {spec.shape[axis[pre.layout]]}, but {pre.color_order} frames have {channels} channel(s)",
            f"pass {hint}",
        )
    hw = tuple(spec.shape[1:3] if pre.layout == "NHWC" else spec.shape[2:4])
    if pre.resize is not None and tuple(pre.resize) != hw:
        raise UsageError(
            f"--resize {pre.resize[0]}x{pre.resize[1]} does not match input {spec.name}'s {hw[0]}x{hw[1]}",
            f"drop --resize or fix the input with --input-shape {spec.name}:...",
        )
    return pre


def _input_hw(inputs: list[TensorSpec], pre: Preprocessing) -> tuple[int, int]:
    from edgefleet.agent.preprocess import input_hw

    if not inputs:
        raise UsageError(
            "a detection model needs an image input; this one has no inputs", "export the model with its image input"
        )
    return input_hw(inputs[0], pre)


def _check_labels(labels: list[str], outputs: list[TensorSpec], task: str) -> None:
    """A classifier's labels must name every class of its first output (batch axis excluded)."""
    if not labels or task != "classification" or not outputs or len(outputs[0].shape) < 2:
        return
    classes = math.prod(outputs[0].shape[1:])
    if classes != len(labels):
        raise UsageError(
            f"the labels file has {len(labels)} labels but the model outputs {classes} classes (shape {outputs[0].shape})",
            "pass the labels file that belongs to this model, one label per line",
        )


# Heads whose trainers letterbox (Ultralytics, YOLOX): their packages letterbox unless told otherwise.
LETTERBOX_HEADS = ("yolo", "yolov5", "yolox", "end2end")


def resolve_detection(
    task: str,
    head: str | None,
    outputs: list[TensorSpec],
    input_hw: tuple[int, int] | None,
    labels: list[str],
    source_format: str,
    thresholds: dict[str, Any] | None = None,
) -> DetectionInfo | None:
    """The manifest's `detection`: --head, else the one head that reads these output shapes."""
    from edgefleet.agent.detectors import detect_head, heads
    from edgefleet.agent.detectors.base import Shapes

    if task != "detection":
        if head not in (None, "auto"):
            raise UsageError(
                f"--head {head} applies to --task detection, not {task}", "add --task detection or drop --head"
            )
        return None
    assert input_hw is not None  # a detection model's image size (_input_hw)
    if head not in (None, "auto") and head not in heads():
        raise UsageError(f"--head {head!r} is not a detection head", f"pick one of: auto, {', '.join(heads())}")
    shapes = Shapes([list(o.shape) for o in outputs], input_hw, len(labels) or None)
    name = detect_head(shapes) if head in (None, "auto") else head
    # Ultralytics' TFLite exports give boxes relative to the input; its ONNX exports in pixels.
    options = {"coords": "normalized"} if name == "yolo" and source_format == "tflite" else {}
    given = {k: v for k, v in (thresholds or {}).items() if v is not None}
    try:
        return DetectionInfo(head=name, options=options, **given)
    except ValidationError as exc:
        first = first_error(exc)
        raise UsageError(f"detection option {first.where}: {first.msg}", "see `edgefleet compile --help`") from None


def _letterbox_default(
    pre: Preprocessing, given: Preprocessing | dict[str, Any] | None, detection: DetectionInfo | None
) -> Preprocessing:
    explicit = isinstance(given, Preprocessing) or "resize_mode" in (given or {})
    if detection is None or detection.head not in LETTERBOX_HEADS or explicit:
        return pre
    return pre.model_copy(update={"resize_mode": "letterbox"})


def _output_specs(mod) -> list[TensorSpec]:
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = ret.fields if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for i, info in enumerate(fields):
        shape = [int(d) for d in info.shape.values] if info.shape is not None else []
        specs.append(TensorSpec(name=f"output_{i}", shape=shape, dtype=str(info.dtype)))
    return specs


# Element types the reference runtimes' Python APIs cannot take or give (compiler/frontends/onnx/lowbit.py's).
_UNVERIFIABLE_DTYPES = ("float8", "float4", "int4", "uint4", "int2", "uint2")


def _verify(
    target: Target,
    library: Path,
    frontend,
    model_path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    atol: float,
    rtol: float,
    stages: Stages,
) -> Verification:
    odd = sorted({s.dtype for s in [*inputs, *outputs] if s.dtype.startswith(_UNVERIFIABLE_DTYPES)})
    if odd:
        return skipped(
            target,
            f"the reference runtime's Python API takes no {'/'.join(odd)} arrays, so the model's inputs or outputs cannot be compared",
        )
    with stages.stage("verify", "reference: " + frontend.reference_name()):
        if target.runs_here():
            return verify_native(library, frontend, model_path, inputs, atol, rtol)
        if target.run_mode in ("qemu-aarch64", "qemu-arm"):
            from edgefleet.cross.verify import verify_emulated

            return verify_emulated(library, target, frontend, model_path, inputs, atol, rtol)
        return skipped(target, f"{target.name} runs on {target.run_mode}, which this machine cannot execute")


def _verifier(verify, frontend, model_path, inputs, outputs, atol, rtol, stages):
    """The check each library of the package gets (model.so and its ISA-level variants); raises on a mismatch."""

    def check(target: Target, library: Path) -> Verification:
        if not verify:
            return skipped(target, "--no-verify")
        result = _verify(target, library, frontend, model_path, inputs, outputs, atol, rtol, stages)
        if result.status == "failed":
            raise NumericsMismatchError(
                f"compiled model ({library.name}) differs from {result.reference}: max abs diff {result.max_abs_diff:.3g}, max rel diff {result.max_rel_diff:.3g} (atol {atol}, rtol {rtol})",
                "report the model; --atol/--rtol loosen the check, --no-verify skips it",
            )
        return result

    return check


def _listed(level: IsaLevel, library: str, verification: Verification) -> LibraryVariant:
    return LibraryVariant(
        library=library,
        isa=level.name,
        tvm_target=level.tvm_target,
        cpu_features=list(level.cpu_features),
        verification=verification,
    )


def _has_int8(mod) -> bool:
    """Whether any tensor of the imported model is int8 or uint8 (a quantized model)."""
    from tvm import relax

    found = []

    def visit(expr) -> None:
        ty = getattr(expr, "ty", None)
        if isinstance(ty, relax.TensorType) and str(ty.dtype) in ("int8", "uint8"):
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function) and not found:
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def _build_variants(
    mod, target: Target, work: Path, verification: Verification, tune_trials: int, rpc, stages: Stages, check
) -> dict[str, Path]:
    """For a generic target, the libraries for its better ISA levels, each verified where this CPU runs it,
    and variants.json listing them all, best first (model.so last: the portable one). Empty for other targets."""
    if len(target.isa_levels) < 2:
        return {}
    from edgefleet.agent.variants import cpu_flags

    levels = [ISA_LEVELS[name] for name in target.isa_levels]
    listed = [_listed(levels[0], "model.so", verification)]
    files: dict[str, Path] = {}
    flags = cpu_flags()
    for level in levels[1:]:
        if level.int8_only and not _has_int8(mod):
            continue
        variant = replace(target, tvm_target=level.tvm_target)
        library = work / f"model.{level.name}.so"
        with stages.stage(
            level.name,
            "a library for CPUs with " + ", ".join(sorted(set(level.cpu_features) - set(levels[0].cpu_features))),
        ):
            built = build_with_fallback(mod, optimize(mod, variant, tune_trials, stages, rpc), variant, library, stages)
            if built.pipeline != PIPELINE_CPU:
                # Unscheduled kernels: slower than model.so, which the agent would then load instead.
                stages.note(f"warning: no {level.name} library in the package: {built.fallback_reason}")
                continue
            lacking = sorted(set(level.cpu_features) - flags)
            checked = (
                check(variant, library) if not lacking else skipped(variant, f"this CPU lacks {', '.join(lacking)}")
            )
        listed.insert(0, _listed(level, library.name, checked))
        files[library.name] = library
    if not files:
        return {}
    index = work / VARIANTS
    index.write_bytes(LibraryVariants(variants=listed).to_bytes())
    return {**files, VARIANTS: index}


def compile_model(
    model: str,
    target: str,
    *,
    output: Path | None = None,
    name: str | None = None,
    version: str = "1",
    input_shapes: dict[str, list[int]] | None = None,
    constant_inputs: dict[str, np.ndarray] | None = None,
    labels: Path | None = None,
    preprocessing: Preprocessing | dict[str, Any] | None = None,
    task: str = "classification",
    head: str | None = None,
    detection_thresholds: dict[str, Any] | None = None,
    tune_trials: int = 0,
    tune_rpc: str | None = None,
    verify: bool = True,
    key: Path | None = None,
    member: str | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    quiet: bool = False,
    baseline_images: str | None = None,
) -> CompileResult:
    """Compile `model` (.onnx, .tflite, or model.tar.gz, local or s3://) for `target` into a signed package.

    Stages: load, import, optimize, build, export, verify, sign; each prints its time. Raises
    an EdgefleetError subclass for every input a person can fix (see edgefleet.errors).
    `preprocessing` is a complete Preprocessing, or a dict of the options given (the rest take
    their defaults; the layout defaults to NHWC for TFLite and NCHW for ONNX).
    `constant_inputs` fixes ONNX graph inputs to values at compile time (they leave the
    package's inputs): for inputs that are really parameters TVM must know (compiler/frontends/onnx/params.py).
    """
    _check_name_and_version(name, version)
    if baseline_images is not None:
        check_baseline_source(baseline_images)
    resolved = resolve_target(target)
    resolved.check_toolchain()
    rpc = tuning.RpcTracker.parse(tune_rpc) if tune_rpc else None
    if tune_trials and rpc is None and not resolved.runs_here():
        # MetaSchedule measures candidates by running them: only on the target's own hardware.
        raise UsageError(
            f"--tune-trials needs to run candidates on {resolved.name} hardware, and this machine cannot run {resolved.name} code",
            "run TVM's rpc_server on a device and pass --tune-rpc HOST:PORT/KEY, tune on this machine's architecture, or drop --tune-trials",
        )
    signing_key = load_signing_key(key)  # fail before the long work, not after
    if resolved.device == "neuron":
        raise BuildError(
            f"the Neuron compiler is installed, but packaging {resolved.name} models is not implemented in this edgefleet",
            "compile for ml_c5 / ml_c6i, or run neuronx-cc yourself on the ONNX model",
        )
    stages = Stages(quiet=quiet)
    label_list = _read_labels(labels)
    with tempfile.TemporaryDirectory(prefix="edgefleet-compile-") as tmp:
        work = Path(tmp)
        with stages.stage("load", Path(model).name):
            source = fetch_model(model, work, member=member, show_progress=not quiet)
            frontend = frontend_for(source.format)
            parsed = frontend.load(source.path)
            reference_path = source.path
            if constant_inputs:
                if source.format != "onnx":
                    raise UsageError(
                        "--constant-input applies to ONNX models", "drop --constant-input for a TFLite model"
                    )
                from edgefleet.compiler.frontends.onnx.params import bind_inputs

                parsed = bind_inputs(parsed, constant_inputs)
                # The reference runtime checks the model as compiled: with the same values bound.
                reference_path = work / "bound-inputs.onnx"
                reference_path.write_bytes(parsed.SerializeToString())
            report = OperatorReport(source.format, frontend.operators(parsed), frontend.unsupported(parsed))
        if not report.ok:
            raise unsupported_error(report, model)
        with stages.stage("import", f"{source.format} -> Relax"):
            notices: list[str] = list(getattr(frontend, "import_notes", lambda _: [])(parsed))
            inputs = frontend.input_specs(parsed, input_shapes or {}, notices)
            try:
                mod = frontend.to_relax(parsed, inputs, notices)
            except UnsupportedOperatorsError:  # the frontend's own refusal already says what and why
                raise
            except Exception as exc:  # the importers raise many types on models they cannot map
                onnx_fix = "simplify the model (onnxsim) or export it with another opset"
                fix = onnx_fix if source.format == "onnx" else frontend.refusal_fix()
                cause = f"TVM's {source.format} importer failed: {tvm_message(exc)}"
                raise UnsupportedOperatorsError(cause, fix) from None
            outputs = _output_specs(mod)
            for notice in notices:
                stages.note(notice)
        if not label_list and source.labels:
            label_list = source.labels
        if source.preprocessing and not isinstance(preprocessing, Preprocessing):
            preprocessing = {**source.preprocessing, **(preprocessing or {})}
        _check_labels(label_list, outputs, task)
        pre = build_preprocessing(preprocessing, source.format, inputs, task)
        image_hw = _input_hw(inputs, pre) if task == "detection" else None  # classifiers may take any input
        detection = resolve_detection(task, head, outputs, image_hw, label_list, source.format, detection_thresholds)
        pre = _letterbox_default(pre, preprocessing, detection)
        optimized = optimize(mod, resolved, tune_trials, stages, rpc)
        library = work / "model.so"
        optimized = build_with_fallback(mod, optimized, resolved, library, stages)
        check = _verifier(verify, frontend, reference_path, inputs, outputs, atol, rtol, stages)
        verification = check(resolved, library)
        variant_files = _build_variants(mod, resolved, work, verification, tune_trials, rpc, stages, check)
        pkg_name = name or _default_name(source.path)
        out = Path(output) if output else Path.cwd() / f"{pkg_name}-{version}-{resolved.name}.tar.gz"
        baseline_files = (
            {}
            if baseline_images is None
            else package_baseline(  # drift baseline (compiler/baseline.py)
                baseline_images,
                work,
                stages,
                library=library,
                runs_here=resolved.runs_here(),
                target_name=resolved.name,
                frontend=frontend,
                model_path=reference_path,
                inputs=inputs,
                outputs=outputs,
                preprocessing=pre,
                labels=label_list,
                task=task,
                name=pkg_name,
                version=version,
                detection=detection,
            )
        )
        target_info = TargetInfo(
            name=resolved.name, tvm_target=resolved.tvm_target, arch=resolved.arch, device=resolved.device
        )
        tvm_version, ffi_version = dist_version("apache-tvm"), dist_version("apache-tvm-ffi")
        fields = dict(
            name=pkg_name,
            version=version,
            target=target_info,
            runtime=dict(
                kind="tvm",
                library="model.so",
                tvm_version=tvm_version,
                tvm_ffi_version=ffi_version,
                requires=requirement_for(target_info, tvm_version, ffi_version),
                pipeline=optimized.pipeline,
                pipeline_fallback_reason=optimized.fallback_reason,
                kernel_fallbacks=optimized.kernel_fallbacks,
            ),
            inputs=inputs,
            outputs=outputs,
            preprocessing=pre,
            task=task,
            labels=label_list,
            detection=detection,
            provenance=dict(
                source_uri=source.uri,
                source_sha256=source.sha256,
                source_format=source.format,
                training_job=source.training_job,
                compiler=f"edgefleet {__version__}",
                compiled_at=now_utc(),
            ),
            verification=verification,
            baseline="baseline.json" if baseline_files else None,
            tuning={"trials": tune_trials, "database": str(tuning_dir(resolved)), "rpc": tune_rpc}
            if tune_trials
            else None,
        )
        with stages.stage("sign", f"key {signing_key.key_id}"):
            manifest = write_package(out, fields, {"model.so": library, **variant_files, **baseline_files}, signing_key)
    return CompileResult(out, manifest, stages.timings)
