"""The SageMaker script-mode entry point: SM_* environment in, model.tar.gz out, and the
compiler accepts that archive (real TVM compile for x86_64 with numeric verification on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import numpy as np

from edgefleet.models.job import ENTRY_POINT
from edgefleet.models.scenes import CLASSES, write_dataset, write_frames


def test_training_job_writes_model_tar_gz_with_files_at_the_root(trained_job):
    with tarfile.open(trained_job.model_artifact) as tar:
        names = sorted(tar.getnames())
    assert names == ["labels.txt", "model.onnx", "preprocessing.json", "training.json"]
    with tarfile.open(trained_job.output_artifact) as tar:
        assert tar.getnames() == ["metrics.json"]
    job = json.loads((trained_job.job_dir / "job.json").read_text())
    assert job["format_version"] == 1 and job["status"] == "Completed" and job["exit_code"] == 0
    assert job["command"][-4:] == ["--epochs", "10", "--seed", "0"]  # SageMaker's sorted --name value form
    hps = json.loads((trained_job.job_dir / "opt/ml/input/config/hyperparameters.json").read_text())
    assert hps == {"epochs": "10", "seed": "0"}


def test_trained_model_is_clearly_better_than_chance(trained_job):
    metrics = trained_job.metrics
    assert metrics["validation_images"] == 3 * 40
    assert metrics["train_images"] == 3 * 150
    # Chance is 1/3; the scenes are learnable, so the tiny net must do far better.
    assert metrics["validation_accuracy"] >= 0.8, metrics
    assert min(metrics["per_class_accuracy"].values()) >= 0.6, metrics


def test_edgefleet_compile_reads_the_training_output_and_serves_it_as_trained(trained_job, signing_key, tmp_path):
    from edgefleet.agent.infer import run_package_on_image
    from edgefleet.package import open_package
    from edgefleet.signing import load_public_key, public_path

    package = tmp_path / "scenes.tar.gz"
    cmd = [
        sys.executable,
        "-m",
        "edgefleet.cli",
        "compile",
        str(trained_job.model_artifact),
        "--target",
        "x86_64",
        "-o",
        str(package),
        "-q",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    trusted = [load_public_key(public_path(signing_key.path))]
    with open_package(package, trusted) as opened:
        m = opened.manifest
    assert m.verification.status == "passed" and m.verification.max_abs_diff < 1e-3
    assert m.labels == sorted(CLASSES)
    assert m.inputs[0].shape == [1, 3, 64, 64] and m.outputs[0].shape == [1, 3]
    assert (
        m.preprocessing.resize == (64, 64)
        and m.preprocessing.mean == [0.5, 0.5, 0.5]
        and m.preprocessing.std == [0.25, 0.25, 0.25]
    )
    assert (
        m.provenance.source_sha256
        == json.loads((trained_job.job_dir / "job.json").read_text())["artifacts"]["model.tar.gz"]["sha256"]
    )
    # Camera-sized JPEG frames (never seen in training) through the agent's preprocessing.
    correct = 0
    for label in CLASSES:
        for frame in write_frames(tmp_path / "frames", label, 3, seed=5):
            result = run_package_on_image(package, frame, trusted, k=1, repeat=1)
            correct += result.predictions[0].label == label
            assert 0.0 <= result.predictions[0].score <= 1.0
    assert correct >= 7, f"{correct}/9 frames classified correctly"


def test_entry_point_reads_sagemaker_env_and_hyperparameter_flags_override_sm_hps(tmp_path):
    # The script alone, as SageMaker starts it: no runner, only the environment and flags.
    data = tmp_path / "data"
    write_dataset(data, per_class=6, validation_per_class=0, seed=3)
    model_dir, output_data = tmp_path / "model", tmp_path / "out-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        SM_CHANNEL_TRAIN=str(data / "train"),
        SM_MODEL_DIR=str(model_dir),
        SM_OUTPUT_DATA_DIR=str(output_data),
        SM_HPS=json.dumps({"epochs": 5, "batch-size": 4, "image_size": 32}),
    )
    proc = subprocess.run(
        [sys.executable, str(ENTRY_POINT), "--epochs", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch=1 train_loss=" in proc.stdout and "epoch=2" not in proc.stdout
    info = json.loads((model_dir / "training.json").read_text())
    assert (
        info["hyperparameters"]["epochs"] == 1
        and info["hyperparameters"]["batch_size"] == 4
        and info["hyperparameters"]["image_size"] == 32
    )
    # No validation channel: a seeded 20% of train is held out.
    assert info["metrics"]["validation_images"] == 3 and info["metrics"]["train_images"] == 15
    spec = json.loads((model_dir / "preprocessing.json").read_text())
    assert spec["format_version"] == 1 and spec["input"]["shape"] == [1, 3, 32, 32]
    assert (model_dir / "labels.txt").read_text().split() == sorted(CLASSES)
    assert json.loads((output_data / "metrics.json").read_text())["history"][0]["epoch"] == 1

    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"))
    probs = session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0]
    assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1.0) < 1e-5


def test_bad_hyperparameter_fails_the_job_with_the_scripts_failure_reason(scene_dataset, tmp_path, cli):
    out = tmp_path / "job"
    result = cli("models", "train", "--data", scene_dataset, "--out", out, "--hp", "epochs=0", "-q")
    assert result.code == 50
    assert "error: training job" in result.err and "epochs must be >= 1" in result.err and "fix:" in result.err
    assert "Traceback" not in result.err
    assert (out / "opt/ml/output/failure").read_text().strip() == "bad hyperparameters: epochs must be >= 1"
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "Failed" and "epochs must be >= 1" in job["failure_reason"]
    assert not (out / "output" / "model.tar.gz").exists()


def test_unknown_hyperparameter_is_refused(scene_dataset, tmp_path, cli):
    result = cli("models", "train", "--data", scene_dataset, "--out", tmp_path / "job", "--hp", "momentum=0.9", "-q")
    assert result.code == 50 and "unrecognized arguments: --momentum 0.9" in result.err


def test_train_channel_with_a_single_class_is_refused(tmp_path, cli):
    from edgefleet.models.scenes import render_scene

    (tmp_path / "data" / "train" / "person").mkdir(parents=True)
    render_scene("person").save(tmp_path / "data" / "train" / "person" / "a.png")
    result = cli("models", "train", "--data", tmp_path / "data", "--out", tmp_path / "job", "-q")
    assert result.code == 50 and "1 class folder(s) (person); a classifier needs at least 2" in result.err


def test_train_refuses_missing_data_and_a_used_output_folder_without_touching_it(scene_dataset, tmp_path, cli):
    result = cli("models", "train", "--data", tmp_path / "nope", "--out", tmp_path / "job")
    assert result.code == 2 and "no data folder at" in result.err and "edgefleet models dataset" in result.err
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("precious")
    result = cli("models", "train", "--data", scene_dataset, "--out", used)
    assert result.code == 2 and "not an empty directory" in result.err
    assert [p.name for p in used.iterdir()] == ["keep.txt"] and (used / "keep.txt").read_text() == "precious"
    result = cli("models", "train", "--data", scene_dataset, "--out", tmp_path / "j2", "--job-name", "bad_name!")
    assert result.code == 2 and "job names" in result.err


def test_malformed_sm_hps_is_reported(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(
        SM_HPS="[1, 2]",
        SM_OUTPUT_DIR=str(tmp_path / "output"),
        SM_MODEL_DIR=str(tmp_path / "m"),
        SM_CHANNEL_TRAIN=str(tmp_path),
    )
    proc = subprocess.run([sys.executable, str(ENTRY_POINT)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "SM_HPS is not a JSON object" in proc.stderr
    assert (tmp_path / "output" / "failure").read_text().strip() == "SM_HPS is not a JSON object"
