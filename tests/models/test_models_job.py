"""The local SageMaker-style job runner, with small stand-in entry points (no torch needed):
the environment and flags a script receives, the archives, timeouts and crashes."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from edgefleet.errors import TrainingJobError
from edgefleet.models.job import TrainingJobConfig, cli_args, run_training_job

ECHO_SCRIPT = """
import json, os, sys
from pathlib import Path
model = Path(os.environ["SM_MODEL_DIR"])
(model / "sub").mkdir()
(model / "env.json").write_text(json.dumps({k: v for k, v in os.environ.items() if k.startswith("SM_")}))
(model / "sub" / "argv.json").write_text(json.dumps(sys.argv[1:]))
(Path(os.environ["SM_OUTPUT_DATA_DIR"]) / "metrics.json").write_text(json.dumps({"validation_accuracy": 0.5}))
(model / "cwd.txt").write_text(os.getcwd())
"""


def _data(tmp_path: Path, validation: bool = True) -> Path:
    for split in ("train", "validation") if validation else ("train",):
        (tmp_path / "data" / split / "a").mkdir(parents=True)
    return tmp_path / "data"


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "code" / "entry.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(body)
    return path


def test_script_gets_sagemakers_environment_flags_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SM_STALE_FROM_OUTSIDE", "1")
    entry = _script(tmp_path, ECHO_SCRIPT)
    hps = {"lr": 0.01, "epochs": 3, "optimizer": "adamw", "batch-size": 8}
    result = run_training_job(
        TrainingJobConfig(
            data=_data(tmp_path), out=tmp_path / "job", hyperparameters=hps, job_name="echo-1", entry_point=entry
        ),
        stream=None,
    )
    model = result.job_dir / "opt" / "ml" / "model"
    env = json.loads((model / "env.json").read_text())
    assert "SM_STALE_FROM_OUTSIDE" not in env
    assert env["SM_CHANNEL_TRAIN"] == str((tmp_path / "data" / "train").resolve())
    assert env["SM_CHANNEL_VALIDATION"] == str((tmp_path / "data" / "validation").resolve())
    assert json.loads(env["SM_CHANNELS"]) == ["train", "validation"]
    assert json.loads(env["SM_HPS"]) == hps
    assert env["SM_HP_LR"] == "0.01" and env["SM_HP_BATCH_SIZE"] == "8" and env["SM_HP_OPTIMIZER"] == "adamw"
    assert env["SM_NUM_GPUS"] == "0" and json.loads(env["SM_HOSTS"]) == ["algo-1"]
    assert json.loads(env["SM_TRAINING_ENV"])["job_name"] == "echo-1"
    assert json.loads((model / "sub" / "argv.json").read_text()) == [
        "--batch-size",
        "8",
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--optimizer",
        "adamw",
    ]
    assert (model / "cwd.txt").read_text() == str(entry.parent.resolve())  # SageMaker runs from the code folder
    with tarfile.open(result.model_artifact) as tar:
        assert sorted(tar.getnames()) == ["cwd.txt", "env.json", "sub", "sub/argv.json"]
    assert result.metrics == {"validation_accuracy": 0.5}
    assert (
        json.loads((result.job_dir / "opt/ml/input/config/hyperparameters.json").read_text())["optimizer"] == '"adamw"'
    )


def test_a_folder_of_class_folders_is_the_train_channel(tmp_path):
    (tmp_path / "flat" / "a").mkdir(parents=True)
    result = run_training_job(
        TrainingJobConfig(data=tmp_path / "flat", out=tmp_path / "job", entry_point=_script(tmp_path, ECHO_SCRIPT)),
        stream=None,
    )
    env = json.loads((result.job_dir / "opt/ml/model/env.json").read_text())
    assert env["SM_CHANNEL_TRAIN"] == str((tmp_path / "flat").resolve()) and "SM_CHANNEL_VALIDATION" not in env


def test_a_crash_without_a_failure_file_reports_the_last_output_line(tmp_path):
    entry = _script(tmp_path, "print('loading'); raise SystemExit('disk on fire')\n")
    with pytest.raises(TrainingJobError, match="failed: disk on fire") as info:
        run_training_job(TrainingJobConfig(data=_data(tmp_path), out=tmp_path / "job", entry_point=entry), stream=None)
    assert "training.log" in info.value.fix
    assert (tmp_path / "job" / "training.log").read_text() == "loading\ndisk on fire\n"
    assert json.loads((tmp_path / "job" / "job.json").read_text())["status"] == "Failed"


def test_a_script_that_writes_no_model_fails_the_job(tmp_path):
    with pytest.raises(TrainingJobError, match="wrote nothing into SM_MODEL_DIR"):
        run_training_job(
            TrainingJobConfig(data=_data(tmp_path), out=tmp_path / "job", entry_point=_script(tmp_path, "pass\n")),
            stream=None,
        )
    assert not (tmp_path / "job" / "output" / "model.tar.gz").exists()


def test_a_job_past_its_time_limit_is_stopped(tmp_path):
    entry = _script(tmp_path, "import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(TrainingJobError, match="ran past its 1 s limit"):
        run_training_job(
            TrainingJobConfig(data=_data(tmp_path), out=tmp_path / "job", entry_point=entry, timeout_s=1), stream=None
        )
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    assert job["seconds"] < 30 and job["exit_code"] != 0


def test_cli_args_are_sorted_and_json_for_non_strings():
    assert cli_args({"b": True, "a": "x y", "c": 1.5}) == ["--a", "x y", "--b", "true", "--c", "1.5"]


def test_default_entry_point_without_torch_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    from edgefleet.errors import MissingToolError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(MissingToolError, match="needs torch") as info:
        run_training_job(TrainingJobConfig(data=_data(tmp_path), out=tmp_path / "job"), stream=None)
    assert "edgefleet[train]" in info.value.fix and not (tmp_path / "job").exists()
