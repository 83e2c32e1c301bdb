"""Compile-time drift baseline: `edgefleet compile --baseline-images`, real TVM compiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from drift_support import LABELS, brightness_classifier, darken, scene, write_images

from edgefleet.agent.metrics import BRIGHTNESS_EDGES, CONFIDENCE_EDGES, CONTRAST_EDGES, luma_stats
from edgefleet.compiler.baseline import collect_images
from edgefleet.contracts.drift import parse_summary
from edgefleet.errors import UsageError
from edgefleet.fleet.drift import DriftConfig, judge, parse_baseline
from edgefleet.package import open_package
from edgefleet.signing import load_public_key


def _trusted(pub: Path):
    return [load_public_key(pub)]


def test_package_carries_baseline_and_model_monitor_files(baseline_package) -> None:
    package, pub, images = baseline_package
    with open_package(package, _trusted(pub)) as opened:
        assert opened.manifest.baseline == "baseline.json"
        assert {"baseline.json", "statistics.json", "constraints.json"} <= set(opened.manifest.files)
        baseline = parse_baseline(json.loads(opened.path("baseline.json").read_text()))
        stats = json.loads(opened.path("statistics.json").read_text())
        constraints = json.loads(opened.path("constraints.json").read_text())
    assert baseline.images == 300 and baseline.computed_with.startswith("compiled model (x86_64")
    s = baseline.summary
    assert s.brightness.edges == [round(float(e), 4) for e in BRIGHTNESS_EDGES]
    assert s.contrast.edges == [round(float(e), 4) for e in CONTRAST_EDGES] and s.confidence.edges == [
        round(float(e), 4) for e in CONFIDENCE_EDGES
    ]
    assert sum(s.brightness.counts) == sum(s.confidence.counts) == sum(s.predictions.values()) == 300
    # The model's verdicts agree with the brightness the agent measures on the same frames.
    from PIL import Image

    lumas = [luma_stats(Image.open(p))[0] for p in sorted(images.iterdir())]
    assert s.predictions.get("bright", 0) == pytest.approx(sum(v > 0.5 for v in lumas), abs=3)
    # SageMaker Model Monitor shapes: statistics "version" 0 with KLL buckets, constraints with the label domain.
    assert stats["version"] == 0 and stats["dataset"]["item_count"] == 300
    feats = {f["name"]: f for f in stats["features"]}
    bright = feats["input_brightness"]["numerical_statistics"]
    assert bright["mean"] == pytest.approx(float(np.mean(lumas)), abs=1e-6)
    assert [b["count"] for b in bright["distribution"]["kll"]["buckets"]] == s.brightness.counts
    assert len(bright["distribution"]["kll"]["sketch"]["data"][0]) == 300
    assert {
        b["value"]: b["count"]
        for b in feats["predicted_label"]["string_statistics"]["distribution"]["categorical"]["buckets"]
    } == s.predictions
    assert constraints["features"][-1]["string_constraints"]["domains"] == LABELS
    assert constraints["monitoring_config"]["distribution_constraints"]["perform_comparison"] == "Enabled"


def test_baseline_judges_its_own_kind_of_frames_normal_and_dark_ones_drifted(baseline_package, tmp_path: Path) -> None:
    package, pub, _ = baseline_package
    with open_package(package, _trusted(pub)) as opened:
        baseline = parse_baseline(json.loads(opened.path("baseline.json").read_text()))
    from edgefleet.compiler.baseline import runner_for, summarise
    from edgefleet.package import Preprocessing

    with open_package(package, _trusted(pub)) as opened:
        m = opened.manifest
        run, _ = runner_for(opened.library, None, Path(), m.inputs, m.target.name)
        rng = np.random.default_rng(7)
        fresh = [scene(rng) for _ in range(150)]
        normal = write_images(tmp_path / "normal", fresh)
        dark = write_images(tmp_path / "dark", [darken(f) for f in fresh])
        summaries = {
            name: parse_summary(
                summarise(
                    collect_images(str(folder), tmp_path),
                    run,
                    m.inputs,
                    m.outputs,
                    Preprocessing(resize=(16, 16)),
                    m.labels,
                    m.task,
                )[0]
            )
            for name, folder in (("normal", normal), ("dark", dark))
        }
    cfg = DriftConfig()
    assert not judge(baseline.summary, summaries["normal"], cfg).over
    verdict = judge(baseline.summary, summaries["dark"], cfg)
    assert verdict.over and verdict.distances["brightness"].psi > 1 and verdict.distances["predictions"].psi > 1


def test_cli_cross_target_uses_the_reference_runtime_and_refuses_empty_folders(
    edgefleet_home: Path, signing_key, tmp_path: Path
) -> None:
    brightness_classifier(tmp_path / "m.onnx")
    images = write_images(tmp_path / "imgs", [scene(np.random.default_rng(i)) for i in range(12)])
    (tmp_path / "empty").mkdir()
    edgefleet = str(Path(sys.executable).parent / "edgefleet")
    bad = subprocess.run(
        [
            edgefleet,
            "compile",
            str(tmp_path / "m.onnx"),
            "--target",
            "x86_64",
            "--resize",
            "16x16",
            "-o",
            str(tmp_path / "x.tar.gz"),
            "-q",
            "--baseline-images",
            str(tmp_path / "empty"),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        bad.returncode == UsageError.exit_code
        and "no images" in bad.stderr + bad.stdout
        and not (tmp_path / "x.tar.gz").exists()
    )
    ok = subprocess.run(
        [
            edgefleet,
            "compile",
            str(tmp_path / "m.onnx"),
            "--target",
            "rasp4b",
            "--resize",
            "16x16",
            "-o",
            str(tmp_path / "arm.tar.gz"),
            "-q",
            "--no-verify",
            "--baseline-images",
            str(images),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    with open_package(tmp_path / "arm.tar.gz", None) as opened:
        baseline = parse_baseline(json.loads(opened.path("baseline.json").read_text()))
    assert (
        baseline.images == 12
        and baseline.computed_with.startswith("onnxruntime")
        and "rasp4b does not run here" in baseline.computed_with
    )


def test_too_few_decodable_images_is_a_usage_error(tmp_path: Path) -> None:
    from edgefleet.compiler.baseline import build_baseline
    from edgefleet.package import Preprocessing, TensorSpec

    folder = tmp_path / "imgs"
    write_images(folder, [scene(np.random.default_rng(0)) for _ in range(3)])
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UsageError, match=r"only 3 of 4 .*broken.jpg: undecodable"):
        build_baseline(
            str(folder),
            tmp_path / "out",
            run=lambda b: [np.zeros((1, 2), np.float32)],
            computed_with="test",
            inputs=[TensorSpec(name="image", shape=[1, 3, 16, 16], dtype="float32")],
            outputs=[TensorSpec(name="o", shape=[1, 2], dtype="float32")],
            preprocessing=Preprocessing(),
            labels=LABELS,
            task="classification",
            name="m",
            version="1",
        )


def test_baseline_images_from_an_s3_prefix_fake_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AWS itself cannot be reached here: moto stands in for S3 (the training channel)."""
    boto3 = pytest.importorskip("boto3")
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="training")
        src = write_images(tmp_path / "src", [scene(np.random.default_rng(i)) for i in range(5)])
        for p in sorted(src.iterdir()):
            s3.upload_file(str(p), "training", f"job/data/train/{p.name}")
        s3.put_object(Bucket="training", Key="job/data/train/labels.csv", Body=b"x")
        paths = collect_images("s3://training/job/data/train/", tmp_path / "work", max_images=4)
    assert len(paths) == 4 and all(p.read_bytes()[:2] == b"\xff\xd8" for p in paths)
