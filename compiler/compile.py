"""`edgefleet compile`: model source -> signed model package for one target."""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path

from edgefleet import __version__
from edgefleet.compiler.build import build_and_export, optimize, tuning_dir
from edgefleet.compiler.frontends import frontend_for
from edgefleet.compiler.source import fetch_model
from edgefleet.compiler.targets import Target, resolve_target
from edgefleet.compiler.verify import DEFAULT_ATOL, DEFAULT_RTOL, skipped, verify_native
from edgefleet.errors import BuildError, NumericsMismatchError, UnsupportedOperatorsError, UsageError
from edgefleet.package import Manifest, Preprocessing, TensorSpec, Verification, now_utc, write_package
from edgefleet.progress import Stages
from edgefleet.signing import load_signing_key


@dataclass
class OperatorReport:
    """What `compile --check` prints: each operator, its count, and whether TVM converts it."""

    format: str
    counts: Counter
    unsupported: Counter

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
    return UnsupportedOperatorsError(
        f"{uri} uses {len(report.unsupported)} operator type(s) TVM cannot convert: {listed}",
        "replace them in the model (or export with another opset); `edgefleet compile --check` lists every operator",
    )


def check_operators(model: str, *, member: str | None = None, workdir: Path | None = None) -> OperatorReport:
    """List the operators `model` uses and which of them the compiler cannot convert."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-check-", dir=workdir) as tmp:
        source = fetch_model(model, Path(tmp), member=member)
        frontend = frontend_for(source.format)
        parsed = frontend.load(source.path)
        return OperatorReport(source.format, frontend.operators(parsed), frontend.unsupported(parsed))


def _default_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._") or "model"
    return name[:128]


def _read_labels(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read labels file {path}: {exc}", "pass a UTF-8 text file with one label per line") from None
    return [line for line in lines if line]


def _output_specs(mod) -> list[TensorSpec]:
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = ret.fields if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for i, info in enumerate(fields):
        shape = [int(d) for d in info.shape.values] if info.shape is not None else []
        specs.append(TensorSpec(name=f"output_{i}", shape=shape, dtype=str(info.dtype)))
    return specs


def _verify(target: Target, library: Path, frontend, model_path: Path, inputs: list[TensorSpec], atol: float, rtol: float, stages: Stages) -> Verification:
    with stages.stage("verify", "reference: " + frontend.reference_name()):
        if target.runs_here():
            return verify_native(library, frontend, model_path, inputs, atol, rtol)
        if target.run_mode in ("qemu-aarch64", "qemu-arm"):
            from edgefleet.cross.verify import verify_emulated

            return verify_emulated(library, target, frontend, model_path, inputs, atol, rtol)
        return skipped(target, f"{target.name} runs on {target.run_mode}, which this machine cannot execute")


def compile_model(
    model: str,
    target: str,
    *,
    output: Path | None = None,
    name: str | None = None,
    version: str = "1",
    input_shapes: dict[str, list[int]] | None = None,
    labels: Path | None = None,
    preprocessing: Preprocessing | None = None,
    task: str = "classification",
    tune_trials: int = 0,
    verify: bool = True,
    key: Path | None = None,
    member: str | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    quiet: bool = False,
) -> CompileResult:
    """Compile `model` (.onnx, .tflite, or model.tar.gz, local or s3://) for `target` into a signed package.

    Stages: load, import, optimize, build, export, verify, sign; each prints its time. Raises
    an EdgefleetError subclass for every input a person can fix (see edgefleet.errors).
    """
    resolved = resolve_target(target)
    resolved.check_toolchain()
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
            report = OperatorReport(source.format, frontend.operators(parsed), frontend.unsupported(parsed))
        if not report.ok:
            raise unsupported_error(report, model)
        with stages.stage("import", f"{source.format} -> Relax"):
            inputs = frontend.input_specs(parsed, input_shapes or {})
            try:
                mod = frontend.to_relax(parsed, inputs)
            except Exception as exc:  # the importers raise many types on models they cannot map
                raise UnsupportedOperatorsError(f"TVM's {source.format} importer failed: {str(exc).strip().splitlines()[-1][:300]}", "simplify the model (onnxsim) or export it with another opset") from None
            outputs = _output_specs(mod)
        if label_list and task == "classification" and outputs and outputs[0].shape and outputs[0].shape[-1] not in (len(label_list),):
            classes = outputs[0].shape[-1] if len(outputs[0].shape) == 2 else None
            if classes is not None:
                raise UsageError(f"the labels file has {len(label_list)} labels but the model outputs {classes} classes", "pass the labels file that belongs to this model")
        mod = optimize(mod, resolved, tune_trials, stages)
        library = work / "model.so"
        build_and_export(mod, resolved, library, stages)
        if verify:
            verification = _verify(resolved, library, frontend, source.path, inputs, atol, rtol, stages)
            if verification.status == "failed":
                raise NumericsMismatchError(
                    f"compiled model differs from {verification.reference}: max abs diff {verification.max_abs_diff:.3g}, max rel diff {verification.max_rel_diff:.3g} (atol {atol}, rtol {rtol})",
                    "report the model; --atol/--rtol loosen the check, --no-verify skips it",
                )
        else:
            verification = skipped(resolved, "--no-verify")
        pkg_name = name or _default_name(source.path)
        out = Path(output) if output else Path.cwd() / f"{pkg_name}-{version}-{resolved.name}.tar.gz"
        fields = dict(
            name=pkg_name,
            version=version,
            target=dict(name=resolved.name, tvm_target=resolved.tvm_target, arch=resolved.arch, device=resolved.device),
            runtime=dict(kind="tvm", library="model.so", tvm_version=dist_version("apache-tvm"), tvm_ffi_version=dist_version("apache-tvm-ffi")),
            inputs=inputs,
            outputs=outputs,
            preprocessing=preprocessing or Preprocessing(),
            task=task,
            labels=label_list,
            provenance=dict(
                source_uri=source.uri,
                source_sha256=source.sha256,
                source_format=source.format,
                training_job=source.training_job,
                compiler=f"edgefleet {__version__}",
                compiled_at=now_utc(),
            ),
            verification=verification,
            tuning={"trials": tune_trials, "database": str(tuning_dir(resolved))} if tune_trials else None,
        )
        with stages.stage("sign", f"key {signing_key.key_id}"):
            manifest = write_package(out, fields, {"model.so": library}, signing_key)
    return CompileResult(out, manifest, stages.timings)
