"""`edgefleet models`: synthetic scenes, the local SageMaker-style training job, reference models."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edgefleet.cli import console, print_json
from edgefleet.errors import UsageError
from edgefleet.models.reference import REFERENCES
from edgefleet.models.scenes import CLASSES
from edgefleet.strict import first_error


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not WxH, e.g. 320x240", param_hint="--size") from None
    return (w, h)


def _hp(values: tuple[str, ...]) -> dict:
    """`--hp name=value` (repeatable); values are read as JSON numbers/booleans when they parse, else strings."""
    import json

    hps: dict = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--hp {item!r} is not NAME=VALUE", "for example --hp weight-decay=0.0005")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        hps[name] = value if isinstance(value, (bool, int, float, str)) else raw
    return hps


@click.group("models")
def models() -> None:
    """Synthetic camera scenes, the SageMaker-style training job, and reference architectures."""


@models.command("dataset")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="New or empty folder for train/ and validation/."
)
@click.option(
    "--per-class", default=200, show_default=True, type=click.IntRange(min=1), help="Training images per class."
)
@click.option(
    "--validation-per-class",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    help="Validation images per class.",
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Random seed: the same seed draws the same images."
)
@click.option("--size", default="96x72", show_default=True, help="Image size WxH.")
def dataset_command(out: Path, per_class: int, validation_per_class: int, seed: int, size: str) -> None:
    """Draw a person / vehicle / empty scene dataset in the folder layout a training job reads.

    \b
    Examples:
      edgefleet models dataset --out data/
      edgefleet models dataset --out data/ --per-class 500 --size 128x96 --seed 3
    """
    from edgefleet.models.scenes import write_dataset

    meta = write_dataset(
        out, per_class=per_class, validation_per_class=validation_per_class, seed=seed, size=_size(size)
    )
    counts = ", ".join(f"{split}: {sum(c.values())}" for split, c in meta["counts"].items())
    console.print(f"[green]wrote[/green] {out} ({counts}; classes {', '.join(meta['classes'])})")


@models.command("frames")
@click.option("--label", "label", required=True, type=click.Choice(CLASSES), help="Scene class.")
@click.option("--count", default=10, show_default=True, type=click.IntRange(min=1), help="Frames to write.")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Folder for the frames (created if missing)."
)
@click.option(
    "--seed", default=0, show_default=True, type=int, help="Random seed: the same seed draws the same frames."
)
@click.option(
    "--start",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="First frame index (to add more frames later).",
)
@click.option("--size", default="320x240", show_default=True, help="Frame size WxH.")
@click.option(
    "--format", "fmt", default="jpg", show_default=True, type=click.Choice(["jpg", "png"]), help="Image file format."
)
def frames_command(label: str, count: int, out: Path, seed: int, start: int, size: str, fmt: str) -> None:
    """Write camera frames of one class, e.g. into an agent's folder source.

    \b
    Examples:
      edgefleet models frames --label person --count 20 --out /var/lib/edgefleet/incoming
      edgefleet models frames --label vehicle --count 5 --start 20 --out frames/ --format png
    """
    from edgefleet.models.scenes import write_frames

    paths = write_frames(out, label, count, seed=seed, start=start, size=_size(size), fmt=fmt)
    console.print(f"[green]wrote[/green] {len(paths)} {label} frames to {out}")


@models.command("train")
@click.option(
    "--data", required=True, type=click.Path(path_type=Path), help="Folder with train/ (and validation/) class folders."
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New or empty folder for the job.")
@click.option("--epochs", type=click.IntRange(min=1), help="Hyperparameter (default in train.py: 10).")
@click.option("--lr", type=float, help="Hyperparameter: peak learning rate (default 0.005).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Hyperparameter (default 32).")
@click.option("--seed", type=int, help="Hyperparameter (default 0).")
@click.option("--hp", "extra", multiple=True, metavar="NAME=VALUE", help="Any other hyperparameter (repeatable).")
@click.option("--job-name", help="SageMaker-style job name (default edgefleet-scenes-<time>).")
@click.option(
    "--detector", is_flag=True, help="Train the scene detector (models/train_detector.py) instead of the classifier."
)
@click.option(
    "--entry-point",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Another script-mode entry point (default models/train.py).",
)
@click.option(
    "--timeout",
    "timeout_s",
    default=3600,
    show_default=True,
    type=click.IntRange(min=1),
    help="Seconds before the job is stopped.",
)
@click.option("--quiet", "-q", is_flag=True, help="Do not stream the script's output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_command(
    data, out, epochs, lr, batch_size, seed, extra, job_name, detector, entry_point, timeout_s, quiet, as_json
) -> None:
    """Run the SageMaker script-mode entry point here and write model.tar.gz as SageMaker does.

    \b
    Examples:
      edgefleet models train --data data/ --out job/ --epochs 5
      edgefleet models train --data data/ --out job-det/ --detector --epochs 20
    """
    from pydantic import ValidationError

    from edgefleet.models.job import DETECTOR_ENTRY_POINT, TrainingJobConfig, run_training_job

    if detector and entry_point:
        raise UsageError("--detector and --entry-point both name the script to run", "pass one of them")

    hps = _hp(extra)
    for name, value in (("epochs", epochs), ("lr", lr), ("batch-size", batch_size), ("seed", seed)):
        if value is not None:
            hps[name] = value
    fields = dict(data=data, out=out, hyperparameters=hps, timeout_s=timeout_s)
    if job_name:
        fields["job_name"] = job_name
    if entry_point or detector:
        fields["entry_point"] = entry_point or DETECTOR_ENTRY_POINT
    try:
        config = TrainingJobConfig(**fields)
    except ValidationError as exc:
        first = first_error(exc)
        raise UsageError(
            f"bad training job settings: {first.where}: {first.msg}",
            "job names are letters, digits and dashes, at most 63; hyperparameter values are numbers, booleans or strings",
        ) from None
    result = run_training_job(config, stream=None if quiet or as_json else sys.stderr)
    if as_json:
        print_json(
            {
                "job_dir": str(result.job_dir),
                "model_artifact": str(result.model_artifact),
                "output_artifact": str(result.output_artifact),
                "metrics": result.metrics,
                "seconds": result.seconds,
            }
        )
        return
    scores = {
        k: result.metrics[k]
        for k in ("validation_accuracy", "validation_box_precision", "validation_box_recall")
        if k in result.metrics
    }
    console.print(
        f"[green]wrote[/green] {result.model_artifact} in {result.seconds:.1f} s"
        + "".join(f", {k.replace('_', ' ')} {v:.3f}" for k, v in scores.items()),
        soft_wrap=True,
    )
    # The compiler reads preprocessing.json and labels.txt from the archive; a detector also needs its task and head.
    flags = ["--task", "detection", "--head", "yolo"] if detector else []
    console.print(
        "compile it with: "
        + shlex.join(["edgefleet", "compile", str(result.model_artifact), "--target", "TARGET", *flags]),
        soft_wrap=True,
    )


@models.command("reference")
@click.argument("name", type=click.Choice(sorted(REFERENCES)))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ONNX file to write.")
@click.option(
    "--input-size",
    type=click.IntRange(16, 1024),
    help="Square input side (default: 224 for MobileNetV2, 64 for SceneNet).",
)
@click.option("--classes", default=1000, show_default=True, type=click.IntRange(min=2), help="Output classes.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed of the weights.")
def reference_command(name: str, out: Path, input_size: int | None, classes: int, seed: int) -> None:
    """Export reference architecture NAME (random weights) to ONNX, e.g. to measure compile and run times.

    \b
    Examples:
      edgefleet models reference mobilenetv2 --out mobilenetv2.onnx
      edgefleet models reference scenenet --out scenenet.onnx --classes 3 --input-size 64
    """
    from edgefleet.models.reference import export_reference

    path = export_reference(name, out, input_size=input_size, classes=classes, seed=seed)
    console.print(f"[green]wrote[/green] {path} ({path.stat().st_size / 1e6:.2f} MB)")
