"""Drift baseline at compile time: `edgefleet compile ... --baseline-images DIR|s3://BUCKET/PREFIX`.

Runs the baseline images through exactly what the agent does with a camera frame
(edgefleet.agent.preprocess, the model, edgefleet.agent.postprocess) and accumulates them in
the agent's own telemetry window (edgefleet.agent.metrics.AgentMetrics), so the baseline has
the same fixed bin edges and shape as every drift summary a device sends. Three files go
into the package:

    baseline.json     edgefleet's baseline (format version 1, edgefleet.fleet.drift.Baseline)
    statistics.json   the same data as SageMaker Model Monitor statistics (schema version 0)
    constraints.json  Model Monitor constraints suggested from the baseline

The predictions come from the compiled model when the target runs on this machine, else
from the source model's reference runtime (ONNX Runtime / TFLite); baseline.json says which.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.agent.metrics import AgentMetrics, luma_stats
from edgefleet.agent.postprocess import interpret
from edgefleet.agent.preprocess import decode_image, geometry, preprocess
from edgefleet.contracts.drift import Baseline, parse_summary
from edgefleet.errors import BadInputError, ModelSourceError, UsageError
from edgefleet.package import DetectionInfo, Preprocessing, TensorSpec, now_utc

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
MAX_IMAGES = 1000  # enough for stable 10-bin histograms; keeps the KLL sketch exact (n <= k)
MIN_IMAGES = 10
BASELINE_FILE, STATISTICS_FILE, CONSTRAINTS_FILE = "baseline.json", "statistics.json", "constraints.json"
KLL_K = 2048


@dataclass
class BaselineResult:
    baseline: Baseline
    files: dict[str, Path]  # package file name -> path
    skipped: dict[str, str]  # image -> why it was not used


def _evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    return [items[int(i * len(items) / n)] for i in range(n)]


def _s3_images(uri: str, dest: Path, max_images: int) -> list[Path]:
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise ModelSourceError("reading s3:// needs boto3", "pip install 'edgefleet[compiler]'") from None
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    s3 = boto3.client("s3")
    try:
        keys = [
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        ]
        keys = _evenly(sorted(k for k in keys if Path(k).suffix.lower() in IMAGE_SUFFIXES), max_images)
        dest.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, key in enumerate(keys):
            path = dest / f"{i:05d}{Path(key).suffix.lower()}"
            s3.download_file(bucket, key, str(path))
            paths.append(path)
    except (BotoCoreError, ClientError) as exc:
        raise ModelSourceError(
            f"cannot read baseline images under {uri}: {exc}", "check the prefix and your AWS credentials"
        ) from None
    return paths


def collect_images(source: str, workdir: Path, max_images: int = MAX_IMAGES) -> list[Path]:
    """Image files under a local folder (recursively) or an S3 prefix, at most `max_images`, spread evenly."""
    if source.startswith("s3://"):
        check_source(source)
        paths = _s3_images(source, workdir / "baseline-images", max_images)
    else:
        root = Path(source)
        if not root.is_dir():
            raise UsageError(
                f"--baseline-images {source} is not a folder",
                "pass a folder of images like the ones the cameras will see (e.g. the training channel)",
            )
        paths = _evenly(
            sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), max_images
        )
    if not paths:
        raise UsageError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}",
            "pass the folder or S3 prefix that holds the baseline images",
        )
    return paths


def check_source(source: str) -> None:
    """Refuse a bad --baseline-images before minutes of compiling (S3 prefixes are read later)."""
    if source.startswith("s3://"):
        if not source[len("s3://") :].partition("/")[0]:
            raise UsageError(
                f"--baseline-images {source} is not s3://BUCKET/PREFIX",
                "pass the S3 prefix of the training channel, e.g. s3://bucket/data/train/",
            )
        return
    collect_images(source, Path("."))


def summarise(
    images: list[Path],
    run: Callable[[np.ndarray], list[np.ndarray]],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    pre: Preprocessing,
    labels: list[str],
    task: str,
    detection: DetectionInfo | None = None,
) -> tuple[dict, dict[str, list[float]], dict[str, str]]:
    """The agent's drift summary over `images`, the raw per-image values, and the images skipped (with why)."""
    metrics = AgentMetrics()
    # What interpret() reads of a manifest.
    shape = types.SimpleNamespace(
        task=task, labels=labels, outputs=outputs, inputs=inputs, preprocessing=pre, detection=detection
    )
    values: dict[str, list[float]] = {"brightness": [], "contrast": [], "confidence": []}
    skipped: dict[str, str] = {}
    for path in images:
        try:
            image = decode_image(path.read_bytes())
            where = geometry(image.size, inputs[0], pre)
            result = interpret(run(preprocess(image, inputs[0], pre)), shape, where)  # type: ignore[arg-type]
        except (BadInputError, OSError) as exc:
            skipped[path.name] = getattr(exc, "cause", str(exc))
            continue
        brightness, contrast = luma_stats(image)
        metrics.frame_ok(0.0, 0.0, brightness, contrast, result.top_label, result.top_score)
        values["brightness"].append(brightness)
        values["contrast"].append(contrast)
        values["confidence"].append(result.top_score)
    return metrics.window()["drift"], values, skipped


def _numerical(name: str, vals: list[float], hist: dict) -> dict:
    arr = np.asarray(vals, dtype=np.float64)
    edges, counts = hist["edges"], hist["counts"]
    return {
        "name": name,
        "inferred_type": "Fractional",
        "numerical_statistics": {
            "common": {"num_present": int(arr.size), "num_missing": 0},
            "mean": float(arr.mean()),
            "sum": float(arr.sum()),
            "std_dev": float(arr.std()),
            "min": float(arr.min()),
            "max": float(arr.max()),
            "distribution": {
                "kll": {
                    "buckets": [
                        {"lower_bound": edges[i], "upper_bound": edges[i + 1], "count": float(c)}
                        for i, c in enumerate(counts)
                    ],
                    # n <= k, so the sketch's one level holds every value: it is exact.
                    "sketch": {
                        "parameters": {"c": 0.64, "k": float(KLL_K)},
                        "data": [sorted(round(float(v), 6) for v in arr)],
                    },
                }
            },
        },
    }


def model_monitor_statistics(summary: dict, values: dict[str, list[float]]) -> dict:
    """SageMaker Model Monitor statistics.json (schema "version": 0) for the baseline."""
    predictions = summary["predictions"]
    n = len(values["brightness"])
    return {
        "version": 0.0,
        "dataset": {"item_count": n},
        "features": [
            _numerical("input_brightness", values["brightness"], summary["brightness"]),
            _numerical("input_contrast", values["contrast"], summary["contrast"]),
            _numerical("prediction_confidence", values["confidence"], summary["confidence"]),
            {
                "name": "predicted_label",
                "inferred_type": "String",
                "string_statistics": {
                    "common": {"num_present": sum(predictions.values()), "num_missing": n - sum(predictions.values())},
                    "distinct_count": float(len(predictions)),
                    "distribution": {
                        "categorical": {
                            "buckets": [{"value": k, "count": float(v)} for k, v in sorted(predictions.items())]
                        }
                    },
                },
            },
        ],
    }


def model_monitor_constraints(labels: list[str], predictions: dict[str, int], threshold: float) -> dict:
    """Model Monitor constraints.json: complete, non-negative inputs and the known label domain."""
    numeric = [
        {"name": n, "inferred_type": "Fractional", "completeness": 1.0, "num_constraints": {"is_non_negative": True}}
        for n in ("input_brightness", "input_contrast", "prediction_confidence")
    ]
    return {
        "version": 0.0,
        "features": numeric
        + [
            {
                "name": "predicted_label",
                "inferred_type": "String",
                "completeness": 1.0,
                "string_constraints": {"domains": labels or sorted(predictions)},
            }
        ],
        "monitoring_config": {
            "evaluate_constraints": "Enabled",
            "emit_metrics": "Enabled",
            "datatype_check_threshold": 1.0,
            "domain_content_threshold": 1.0,
            "distribution_constraints": {
                "perform_comparison": "Enabled",
                "comparison_threshold": threshold,
                "comparison_method": "Robust",
            },
        },
    }


def build_baseline(
    source: str,
    workdir: Path,
    *,
    run: Callable[[np.ndarray], list[np.ndarray]],
    computed_with: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    preprocessing: Preprocessing,
    labels: list[str],
    task: str,
    name: str,
    version: str,
    max_images: int = MAX_IMAGES,
    js_threshold: float = 0.1,
    detection: DetectionInfo | None = None,
) -> BaselineResult:
    """Compute the baseline of the images at `source` and write the three package files into `workdir`."""
    if task == "other":
        raise UsageError(
            "--baseline-images needs --task classification or detection", "drop --baseline-images for task 'other'"
        )
    images = collect_images(source, workdir, max_images)
    raw, values, skipped = summarise(images, run, inputs, outputs, preprocessing, labels, task, detection)
    used = len(values["brightness"])
    if used < MIN_IMAGES:
        why = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3])
        raise UsageError(
            f"only {used} of {len(images)} baseline images under {source} could be used (at least {MIN_IMAGES} are needed){': ' + why if why else ''}",
            "add more decodable images like the ones the cameras will see",
        )
    baseline = Baseline(
        model=name,
        version=version,
        images=used,
        source=source,
        computed_with=computed_with,
        created_at=now_utc(),
        summary=parse_summary(raw),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    documents = {
        BASELINE_FILE: baseline.model_dump(mode="json"),
        STATISTICS_FILE: model_monitor_statistics(raw, values),
        CONSTRAINTS_FILE: model_monitor_constraints(labels, raw["predictions"], js_threshold),
    }
    files = {}
    for file_name, doc in documents.items():
        path = workdir / file_name
        path.write_text(json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")
        files[file_name] = path
    return BaselineResult(baseline, files, skipped)


def runner_for(
    library: Path | None, frontend, model_path: Path, inputs: list[TensorSpec], target_name: str
) -> tuple[Callable[[np.ndarray], list[np.ndarray]], str]:
    """Run the compiled library when it executes here, else the source model's reference runtime."""
    if library is not None:
        from edgefleet.agent.runtime_worker import open_tvm_model

        model = open_tvm_model(library)
        return (lambda batch: model.run([batch])), f"compiled model ({target_name}, tvm)"
    name = inputs[0].name
    return (
        lambda batch: frontend.reference_run(model_path, {name: batch})
    ), f"{frontend.reference_name()} on the source model ({target_name} does not run here)"


def package_baseline(
    source: str,
    work: Path,
    stages,
    *,
    library: Path,
    runs_here: bool,
    target_name: str,
    frontend,
    model_path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    preprocessing: Preprocessing,
    labels: list[str],
    task: str,
    name: str,
    version: str,
    detection: DetectionInfo | None = None,
) -> dict[str, Path]:
    """What compile_model calls for --baseline-images: the package files, in a timed "baseline" stage."""
    with stages.stage("baseline", source):
        run, computed_with = runner_for(library if runs_here else None, frontend, model_path, inputs, target_name)
        result = build_baseline(
            source,
            work / "baseline",
            run=run,
            computed_with=computed_with,
            inputs=inputs,
            outputs=outputs,
            preprocessing=preprocessing,
            labels=labels,
            task=task,
            name=name,
            version=version,
            detection=detection,
        )
    return result.files
