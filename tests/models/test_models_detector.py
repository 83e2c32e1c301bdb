"""The scene detector's SageMaker script-mode entry point: boxes.json channels in, a model.tar.gz
whose ONNX output is the YOLO [1, 4+nc, N] layout, compiled with --head yolo into a package the
agent decodes, and `edgefleet run` printing its boxes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
from support.scenes import box_iou

from edgefleet.models.job import DETECTOR_ENTRY_POINT
from edgefleet.models.scenes import render_scene_boxes, write_dataset


def test_detector_job_writes_a_letterboxed_detection_model(scene_detector):
    job = scene_detector.job
    with tarfile.open(job.model_artifact) as tar:
        assert sorted(tar.getnames()) == ["labels.txt", "model.onnx", "preprocessing.json", "training.json"]
        spec = json.load(tar.extractfile("preprocessing.json"))
        labels = tar.extractfile("labels.txt").read().decode().split()
    assert labels == ["person", "vehicle"]  # the labels of the boxes; "empty" scenes have none
    assert spec["task"] == "detection" and spec["input"]["shape"] == [1, 3, 96, 96]
    assert spec["preprocessing"]["resize_mode"] == "letterbox" and spec["preprocessing"]["pad_value"] == 114
    metrics = job.metrics
    assert metrics["train_images"] == 3 * 150 and metrics["validation_images"] == 3 * 40
    # Validation scenes: each image's best box over 0.5 overlaps its object (IoU >= 0.5, same label).
    assert metrics["validation_box_precision"] >= 0.8 and metrics["validation_box_recall"] >= 0.7, metrics
    print(
        f"\ndetector training: {job.seconds:.1f} s wall; validation box precision {metrics['validation_box_precision']:.3f}, "
        f"recall {metrics['validation_box_recall']:.3f}"
    )


def test_the_compiled_detector_has_the_yolo_head_and_runs_as_trained(scene_detector, tmp_path, cli):
    from edgefleet.package import open_package
    from edgefleet.signing import load_public_key

    with open_package(scene_detector.package, [load_public_key(scene_detector.trusted)]) as opened:
        m = opened.manifest
    assert m.task == "detection" and m.detection.head == "yolo" and m.labels == ["person", "vehicle"]
    assert m.outputs[0].shape == [1, 6, (96 // 8) ** 2] and m.preprocessing.resize_mode == "letterbox"
    assert m.verification.status == "passed" and m.verification.max_abs_diff < 1e-3
    # `edgefleet run` on an unseen camera frame prints the vehicle's box in frame pixels.
    scene = render_scene_boxes("vehicle", seed=5, index=1, stream="frames", size=(320, 240))
    scene.image.save(tmp_path / "frame.jpg", quality=90)
    result = cli(
        "run",
        scene_detector.package,
        "--image",
        tmp_path / "frame.jpg",
        "--trust",
        scene_detector.trusted,
        "--json",
        "--repeat",
        "1",
    )
    assert result.code == 0, result.err
    detections = json.loads(result.out)["detections"]
    assert detections and detections[0]["label"] == "vehicle" and detections[0]["score"] >= 0.5
    assert box_iou(detections[0]["box_px"], scene.boxes[0].box_px) >= 0.5, (detections, scene.boxes)
    table = cli(
        "run",
        scene_detector.package,
        "--image",
        tmp_path / "frame.jpg",
        "--trust",
        scene_detector.trusted,
        "--repeat",
        "1",
    )
    assert table.code == 0 and "detection(s), boxes in image pixels" in table.out and "vehicle" in table.out


def test_detector_entry_point_reads_sagemaker_env_and_flags(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, per_class=4, validation_per_class=0, seed=3)
    model_dir = tmp_path / "model"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        SM_CHANNEL_TRAIN=str(data / "train"),
        SM_MODEL_DIR=str(model_dir),
        SM_OUTPUT_DATA_DIR=str(tmp_path / "out-data"),
        SM_HPS=json.dumps({"epochs": 5, "image-size": 48}),
    )
    proc = subprocess.run(
        [sys.executable, str(DETECTOR_ENTRY_POINT), "--epochs", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "epoch=1 train_loss=" in proc.stdout
        and "validation_box_precision=" in proc.stdout
        and "epoch=2" not in proc.stdout
    )
    info = json.loads((model_dir / "training.json").read_text())
    assert info["hyperparameters"]["epochs"] == 1 and info["hyperparameters"]["image_size"] == 48
    assert info["metrics"]["validation_images"] == 2 and info["metrics"]["train_images"] == 10

    import onnxruntime as ort

    out = ort.InferenceSession(str(model_dir / "model.onnx")).run(
        None, {"input": np.full((1, 3, 48, 48), 0.5, np.float32)}
    )[0]
    assert out.shape == (1, 6, 36)
    assert (out[0, 2:4] > 0).all() and ((out[0, 4:] >= 0) & (out[0, 4:] <= 1)).all()  # sizes positive, scores sigmoid


def test_a_channel_without_boxes_fails_the_job_with_a_clear_reason(tmp_path, cli):
    from edgefleet.models.scenes import render_scene

    (tmp_path / "data" / "train" / "person").mkdir(parents=True)
    render_scene("person").save(tmp_path / "data" / "train" / "person" / "a.png")
    result = cli("models", "train", "--detector", "--data", tmp_path / "data", "--out", tmp_path / "job", "-q")
    assert result.code == 50 and "has no boxes.json; a detector needs the objects' boxes" in result.err
    result = cli(
        "models",
        "train",
        "--detector",
        "--entry-point",
        DETECTOR_ENTRY_POINT,
        "--data",
        tmp_path / "data",
        "--out",
        tmp_path / "j2",
    )
    assert result.code == 2 and "--detector and --entry-point" in result.err
