"""Where a model comes from: a local .onnx/.tflite, or a SageMaker training output model.tar.gz
(local or `s3://`) that holds one of those."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from edgefleet.archive import ArchiveLimits, safe_extract
from edgefleet.errors import CorruptModelError, ModelSourceError
from edgefleet.package import Preprocessing, TensorSpec, sha256_file
from edgefleet.strict import Strict, first_error

MODEL_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# SageMaker writes s3://BUCKET/PREFIX/<training-job-name>/output/model.tar.gz
_SAGEMAKER_OUTPUT = re.compile(r"/([A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))/output/model\.tar\.gz$")


@dataclass(frozen=True)
class ModelSource:
    path: Path  # the model file itself, ready to parse
    format: str  # "onnx" or "tflite"
    uri: str  # what the user passed
    sha256: str  # of what the user passed (the archive, when it was one)
    training_job: str | None
    # From a training output's preprocessing.json / labels.txt beside the model (see
    # docs/compiler.md); explicit compile options win over these.
    preprocessing: dict | None = None
    labels: list[str] | None = None


def _download_s3(uri: str, dest_dir: Path, show_progress: bool, max_bytes: int) -> Path:
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ModelSourceError("reading s3:// needs boto3", "pip install 'edgefleet[compiler]'") from None
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ModelSourceError(f"{uri} is not s3://BUCKET/KEY", "pass the S3 URI of the model.tar.gz")
    dest = dest_dir / Path(key).name
    s3 = boto3.client("s3")
    try:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if size > max_bytes:
            raise ModelSourceError(
                f"{uri} is {size} bytes, over the {max_bytes}-byte cap",
                "check the URI; a model this large cannot be packaged",
            )
        if show_progress:
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            with Progress(
                *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True
            ) as bar:
                task = bar.add_task(f"download {Path(key).name}", total=size)
                s3.download_file(bucket, key, str(dest), Callback=lambda n: bar.advance(task, n))
        else:
            s3.download_file(bucket, key, str(dest))
    except (BotoCoreError, ClientError) as exc:
        raise ModelSourceError(
            f"cannot download {uri}: {exc}", "check the URI and your AWS credentials (AWS_PROFILE / AWS_ACCESS_KEY_ID)"
        ) from None
    return dest


def _pick_member(files: list[str], root: Path, member: str | None, archive: str) -> Path:
    candidates = sorted(f for f in files if Path(f).suffix in MODEL_SUFFIXES)
    if member is not None:
        if member not in files:
            raise ModelSourceError(
                f"{archive} has no member {member!r}", f"its models are: {', '.join(candidates) or 'none'}"
            )
        return root / member
    if not candidates:
        listed = ", ".join(sorted(files)[:10]) or "nothing"
        raise ModelSourceError(
            f"{archive} holds no .onnx or .tflite model (found: {listed})",
            "export the model to ONNX or TFLite inside the training script's SM_MODEL_DIR",
        )
    if len(candidates) > 1:
        raise ModelSourceError(
            f"{archive} holds several models: {', '.join(candidates)}", "pick one with --member NAME"
        )
    return root / candidates[0]


def fetch_model(
    uri: str,
    workdir: Path,
    *,
    member: str | None = None,
    show_progress: bool = False,
    limits: ArchiveLimits = ArchiveLimits(),
) -> ModelSource:
    """Resolve `uri` into a local model file (downloading and extracting as needed)."""
    workdir = Path(workdir)
    training_job = None
    if uri.startswith("s3://"):
        match = _SAGEMAKER_OUTPUT.search(uri)
        training_job = match.group(1) if match else None
        local = _download_s3(uri, workdir, show_progress, limits.max_total_bytes)
    else:
        local = Path(uri).expanduser()
        if not local.exists():
            raise ModelSourceError(f"no model at {uri}", "check the path")
        if local.is_dir():
            raise ModelSourceError(f"{uri} is a directory", "pass the .onnx, .tflite or model.tar.gz file itself")
    digest = sha256_file(local)
    name = local.name.lower()
    if name.endswith(ARCHIVE_SUFFIXES):
        extracted = workdir / "extracted"
        if extracted.exists():
            shutil.rmtree(extracted)
        files = safe_extract(local, extracted, limits)
        path = _pick_member(files, extracted, member, uri)
        preprocessing, labels = _training_sidecar(path.parent, uri)
    elif local.suffix.lower() in MODEL_SUFFIXES:
        path = local
        preprocessing, labels = None, None
    else:
        raise CorruptModelError(
            f"{uri}: cannot tell the model format from the name", "pass a .onnx, .tflite or SageMaker model.tar.gz"
        )
    return ModelSource(
        path=path,
        format=MODEL_SUFFIXES[path.suffix.lower()],
        uri=uri,
        sha256=digest,
        training_job=training_job,
        preprocessing=preprocessing,
        labels=labels,
    )


class ServingSpec(Strict):
    """preprocessing.json (format version 1), written by a training script beside its model:
    how to serve the model exactly as it was trained (see docs/compiler.md)."""

    format_version: Literal[1]
    input: TensorSpec | None = None
    task: Literal["classification", "detection", "other"] = "classification"
    labels: str | None = None  # a file beside the model, one label per line
    preprocessing: Preprocessing


def read_serving_spec(folder: Path) -> ServingSpec | None:
    """The serving spec beside a model, or None when the training output has none."""
    path = Path(folder) / "preprocessing.json"
    if not path.is_file():
        return None
    try:
        return ServingSpec.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = first_error(exc)
        raise ModelSourceError(
            f"{path.name} is not a version-1 serving spec: {first.where}: {first.msg}",
            "fix or remove preprocessing.json in the training output",
        ) from None


def _training_sidecar(folder: Path, uri: str) -> tuple[dict | None, list[str] | None]:
    """Preprocessing options and labels from a training output's serving spec, if it has one."""
    spec = read_serving_spec(folder)
    if spec is None:
        return None, None
    labels = None
    if spec.labels:
        labels_path = (folder / spec.labels).resolve()
        if folder.resolve() not in labels_path.parents or not labels_path.is_file():
            raise ModelSourceError(
                f"{uri}: preprocessing.json names labels file {spec.labels!r}, which is not beside the model",
                "put the labels file next to the model in the archive",
            )
        labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
    return spec.preprocessing.model_dump(exclude_unset=True), labels
