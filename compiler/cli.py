"""`edgefleet compile` and `edgefleet targets`."""

from __future__ import annotations

from pathlib import Path

import click

from edgefleet.cli import console, parse_shape_option, print_json, table
from edgefleet.errors import UsageError


def _floats(value: str | None, option: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise UsageError(
            f"{option} {value!r} is not comma-separated numbers", f"for example {option} 0.485,0.456,0.406"
        ) from None


def _resize(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        h = w = 0
    if h <= 0 or w <= 0:
        raise UsageError(f"--resize {value!r} is not HxW with positive sizes", "for example --resize 224x224")
    return (h, w)


def _supported_cell(op: str, unsupported, approximated) -> str:
    # Entries read "Op (attribute)": the operator converts, but not with that attribute (unsupported),
    # or its quantized uses go through TVM's float lowering (approximated, TFLite).
    if op in unsupported:
        return "no"
    reasons = [key[len(op) + 2 : -1] for key in unsupported if key.startswith(op + " (")]
    if reasons:
        return f"no: {'; '.join(reasons)}"
    approx = [f"{key[len(op) + 2 : -1]} x{n}" for key, n in sorted(approximated.items()) if key.startswith(op + " (")]
    return f"yes, {', '.join(approx)} by TVM's float lowering (LiteRT verification decides)" if approx else "yes"


@click.command("compile")
@click.argument("model")
@click.option(
    "--target",
    "-t",
    help="Target name (see `edgefleet targets`), Neo TargetPlatform (os=linux,arch=arm64) or a TVM target JSON dict.",
)
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), help="Package path (default NAME-VERSION-TARGET.tar.gz here)."
)
@click.option("--name", help="Model name (default: the model file's stem).")
@click.option(
    "--version",
    "model_version",
    default="1",
    show_default=True,
    help="Package version: dotted integers, e.g. 3 or 1.2.0.",
)
@click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D1,D2,...", help="Fix an input's shape (repeatable)."
)
@click.option(
    "--constant-input",
    "constant_inputs",
    multiple=True,
    metavar="NAME=V1,V2,...|NAME=@FILE.npy",
    help="Fix an ONNX input's value at compile time, for inputs that are really parameters (axes, scales, k, pads); repeatable.",
)
@click.option(
    "--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Text file, one label per line."
)
@click.option(
    "--task",
    type=click.Choice(["classification", "detection", "other"]),
    default="classification",
    show_default=True,
    help="What the outputs mean: class scores, boxes (see --head), or anything else (passed through).",
)
@click.option(
    "--head",
    default="auto",
    show_default=True,
    metavar="auto|ssd|yolo|yolov5|yolox|end2end",
    help="Detection head (--task detection): how outputs become boxes; auto reads the output shapes.",
)
@click.option(
    "--score-threshold", type=click.FloatRange(0, 1), help="Detection: drop boxes under this score (default 0.25)."
)
@click.option(
    "--iou-threshold", type=click.FloatRange(0, 1, min_open=True), help="Detection: NMS IoU threshold (default 0.45)."
)
@click.option(
    "--resize-mode",
    type=click.Choice(["stretch", "letterbox"]),
    default=None,
    help="letterbox keeps the aspect ratio and pads (default for YOLO heads), stretch fills the input.",
)
@click.option("--resize", help="Resize frames to HxW before inference (default: the input's size).")
@click.option("--mean", help="Per-channel mean, e.g. 0.485,0.456,0.406 (after --scale).")
@click.option("--std", help="Per-channel std, e.g. 0.229,0.224,0.225.")
@click.option("--scale", type=float, default=None, show_default="1/255", help="Multiply pixel values by this first.")
@click.option(
    "--color-order",
    type=click.Choice(["RGB", "BGR", "GRAY"]),
    default=None,
    show_default="RGB",
    help="Channel order the model expects.",
)
@click.option(
    "--layout",
    type=click.Choice(["NCHW", "NHWC"]),
    default=None,
    help="Input layout (default: NCHW for ONNX, NHWC for TFLite).",
)
@click.option(
    "--tune-trials",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="MetaSchedule trials; the tuning database is kept and reused.",
)
@click.option(
    "--tune-rpc",
    metavar="HOST:PORT/KEY@CORES",
    help="Run tuning candidates on devices registered with a TVM RPC tracker under KEY (for targets this machine cannot run).",
)
@click.option("--no-verify", is_flag=True, help="Skip the numeric check against the reference runtime.")
@click.option(
    "--atol", type=float, default=1e-3, show_default=True, help="Verification: absolute tolerance per output element."
)
@click.option(
    "--rtol", type=float, default=1e-3, show_default=True, help="Verification: tolerance relative to the reference."
)
@click.option("--key", type=click.Path(path_type=Path), help="Signing key (default ~/.edgefleet/keys/signing.key).")
@click.option("--member", help="Which model inside a model.tar.gz, when it holds several.")
@click.option(
    "--baseline-images",
    metavar="DIR|s3://BUCKET/PREFIX",
    help="Images like the cameras' (e.g. the training channel): put a drift baseline and Model Monitor statistics/constraints in the package.",
)
@click.option("--check", is_flag=True, help="Only list the model's operators and whether each is supported.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def compile_command(
    model,
    target,
    output,
    name,
    model_version,
    input_shapes,
    constant_inputs,
    labels,
    task,
    head,
    score_threshold,
    iou_threshold,
    resize_mode,
    resize,
    mean,
    std,
    scale,
    color_order,
    layout,
    tune_trials,
    tune_rpc,
    no_verify,
    atol,
    rtol,
    key,
    member,
    baseline_images,
    check,
    quiet,
    as_json,
) -> None:
    """Compile MODEL (.onnx, .tflite, or a SageMaker model.tar.gz, local or s3://) into a signed package.

    \b
    Examples:
      edgefleet compile model.onnx --target rasp4b --labels labels.txt --version 2
      edgefleet compile s3://bucket/job/output/model.tar.gz --target jetson_nano --name scenes
      edgefleet compile yolov8n.onnx --target x86_64 --task detection --head yolo --labels coco.txt
      edgefleet compile model.onnx --target os=linux,arch=arm64,mcpu=cortex-a76 --baseline-images train/
      edgefleet compile model.onnx --check
    """
    from edgefleet.compiler.compile import check_operators, compile_model, unsupported_error
    from edgefleet.compiler.frontends.onnx.params import parse_constant_input

    if check:
        report = check_operators(model, member=member)
        if as_json:
            print_json(
                {
                    "format": report.format,
                    "operators": dict(report.counts),
                    "unsupported": dict(report.unsupported),
                    "constant_inputs_needed": report.constant_inputs_needed,
                    "approximated": dict(report.approximated),
                }
            )
        else:
            rows = [
                [op, n, _supported_cell(op, report.unsupported, report.approximated)]
                for op, n in sorted(report.counts.items())
            ]
            table(["operator", "count", "supported"], rows, title=f"{model} ({report.format})")
            for input_name, uses in sorted(report.constant_inputs_needed.items()):
                console.print(
                    f"input [bold]{input_name}[/bold] sets {', '.join(sorted(set(uses)))}, which TVM needs at compile time: give it with --constant-input {input_name}=VALUES"
                )
        if not report.ok:
            raise unsupported_error(report, model)
        return
    if not target:
        raise UsageError("--target is required", "pick one from `edgefleet targets`, e.g. --target rasp4b")
    # Only the options given; compile_model fills in the defaults, the layout per model format.
    given = dict(
        resize=_resize(resize),
        resize_mode=resize_mode,
        color_order=color_order,
        layout=layout,
        scale=scale,
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
    )
    pre = {k: v for k, v in given.items() if v is not None}
    result = compile_model(
        model,
        target,
        output=output,
        name=name,
        version=model_version,
        input_shapes=parse_shape_option(input_shapes),
        constant_inputs=dict(parse_constant_input(option) for option in constant_inputs) or None,
        labels=labels,
        preprocessing=pre,
        task=task,
        head=head,
        detection_thresholds={"score_threshold": score_threshold, "iou_threshold": iou_threshold},
        tune_trials=tune_trials,
        tune_rpc=tune_rpc,
        verify=not no_verify,
        key=key,
        member=member,
        atol=atol,
        rtol=rtol,
        quiet=quiet or as_json,
        baseline_images=baseline_images,
    )
    v = result.manifest.verification
    if as_json:
        print_json(
            {
                "package": str(result.package),
                "timings": result.timings,
                "manifest": result.manifest.model_dump(mode="json"),
            }
        )
        return
    verdict = (
        f"verified against {v.reference} (max abs diff {v.max_abs_diff:.3g})"
        if v.status == "passed"
        else f"not verified: {v.reason}"
    )
    console.print(f"[green]wrote[/green] {result.package} ({result.package.stat().st_size / 1e6:.2f} MB), {verdict}")


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets_command(as_json: bool) -> None:
    """List the compile targets: what each compiles to and how it runs in tests.

    \b
    Examples:
      edgefleet targets
      edgefleet targets --json
    """
    from edgefleet.compiler.targets import TARGETS

    if as_json:
        print_json(
            {
                n: {
                    "description": t.description,
                    "arch": t.arch,
                    "tvm_target": t.tvm_target,
                    "cross_cc": t.cross_cc,
                    "run_mode": t.run_mode,
                    "neo_name": t.neo,
                    "aliases": list(t.aliases),
                }
                for n, t in TARGETS.items()
            }
        )
        return
    table(
        ["target", "arch", "runs in tests", "cross compiler", "neo", "description"],
        [[n, t.arch, t.run_mode, t.cross_cc or "-", "yes" if t.neo else "", t.description] for n, t in TARGETS.items()],
    )
    console.print(
        'Also accepted: Neo TargetPlatform with its CompilerOptions (--target os=linux,arch=arm64[,accelerator=nvidia,gpu-code=sm_72][,mcpu=...,mattr=...]) and a raw TVM target dict (--target \'{"kind": "llvm", ...}\'); see docs/compiler.md.'
    )
