"""Run a SageMaker script-mode entry point locally, the way a SageMaker training job runs it.

The entry point (default: models/train.py, the classifier; models/train_detector.py trains the
detector) runs as a subprocess with SageMaker's environment
(SM_MODEL_DIR, SM_CHANNEL_<NAME>, SM_HPS, SM_HP_<NAME>, SM_OUTPUT_DATA_DIR, ...) and the
hyperparameters as `--name value` flags in sorted order. Afterwards the runner tars SM_MODEL_DIR's
contents into model.tar.gz (files at the archive root) and SM_OUTPUT_DATA_DIR's into
output.tar.gz, as SageMaker does before uploading them to s3://BUCKET/PREFIX/<job>/output/.

Job folder layout (job.json format version 1):

    OUT/opt/ml/input/config/hyperparameters.json   the hyperparameters, values JSON-encoded as strings
    OUT/opt/ml/model/                              SM_MODEL_DIR
    OUT/opt/ml/output/failure                      the script's failure reason, when it failed
    OUT/opt/ml/output/data/                        SM_OUTPUT_DATA_DIR
    OUT/output/model.tar.gz                        what `edgefleet compile` takes
    OUT/output/output.tar.gz
    OUT/training.log                               the script's stdout and stderr
    OUT/job.json                                   name, status, hyperparameters, channels, metrics, artifacts
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from edgefleet.errors import MissingToolError, TrainingJobError, UsageError
from edgefleet.package import sha256_file
from edgefleet.strict import Strict

JOB_FORMAT_VERSION = 1
ENTRY_POINT = Path(__file__).with_name("train.py")
# The scene detector's entry point: same contract, imports train.py from beside it.
DETECTOR_ENTRY_POINT = Path(__file__).with_name("train_detector.py")
HOST = "algo-1"

HyperparameterValue = StrictBool | StrictInt | StrictFloat | StrictStr


class TrainingJobConfig(Strict):
    """One local training job. `data` holds train/ (and optionally validation/) class folders,
    or is itself the train channel."""

    data: Path
    out: Path
    hyperparameters: dict[str, HyperparameterValue] = Field(default_factory=dict)
    # SageMaker's rule for training job names.
    job_name: str = Field(
        default_factory=lambda: "edgefleet-scenes-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"),
        pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$",
    )
    entry_point: Path = ENTRY_POINT
    timeout_s: int = Field(default=3600, ge=1)
    num_cpus: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)


@dataclass
class TrainingJobResult:
    job_dir: Path
    model_artifact: Path
    output_artifact: Path
    metrics: dict
    seconds: float


def channels_for(data: Path) -> dict[str, Path]:
    """DIR/train (+ DIR/validation) become those channels; a DIR of class folders is the train channel."""
    data = Path(data)
    if not data.is_dir():
        raise UsageError(f"no data folder at {data}", "generate one with `edgefleet models dataset --out DIR`")
    if (data / "train").is_dir():
        channels = {"train": data / "train"}
        if (data / "validation").is_dir():
            channels["validation"] = data / "validation"
        return channels
    if any(p.is_dir() for p in data.iterdir()):
        return {"train": data}
    raise UsageError(
        f"{data} has no train/ folder and no class folders",
        "lay the data out as DIR/train/<class>/*.png (optionally DIR/validation/<class>/)",
    )


def cli_args(hyperparameters: dict[str, HyperparameterValue]) -> list[str]:
    """SageMaker passes hyperparameters as `--name value`, sorted by name; strings as they are."""
    args: list[str] = []
    for name in sorted(hyperparameters):
        value = hyperparameters[name]
        args += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    return args


def sagemaker_env(config: TrainingJobConfig, channels: dict[str, Path], ml: Path) -> dict[str, str]:
    hps = config.hyperparameters
    env = {
        "SM_MODEL_DIR": str(ml / "model"),
        "SM_OUTPUT_DIR": str(ml / "output"),
        "SM_OUTPUT_DATA_DIR": str(ml / "output" / "data"),
        "SM_INPUT_DIR": str(ml / "input"),
        "SM_INPUT_CONFIG_DIR": str(ml / "input" / "config"),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_HPS": json.dumps(hps, sort_keys=True),
        "SM_USER_ARGS": json.dumps(cli_args(hps)),
        "SM_USER_ENTRY_POINT": config.entry_point.name,
        "SM_CURRENT_HOST": HOST,
        "SM_HOSTS": json.dumps([HOST]),
        "SM_NUM_CPUS": str(config.num_cpus),
        "SM_NUM_GPUS": "0",
    }
    for name, path in channels.items():
        env[f"SM_CHANNEL_{name.upper()}"] = str(Path(path).resolve())
    for name, value in hps.items():
        env["SM_HP_" + name.upper().replace("-", "_")] = value if isinstance(value, str) else json.dumps(value)
    env["SM_TRAINING_ENV"] = json.dumps(
        {
            "job_name": config.job_name,
            "hyperparameters": hps,
            "channel_input_dirs": {k: env[f"SM_CHANNEL_{k.upper()}"] for k in channels},
            "model_dir": env["SM_MODEL_DIR"],
            "output_data_dir": env["SM_OUTPUT_DATA_DIR"],
            "output_dir": env["SM_OUTPUT_DIR"],
            "current_host": HOST,
            "hosts": [HOST],
            "num_cpus": config.num_cpus,
            "num_gpus": 0,
            "user_entry_point": config.entry_point.name,
        },
        sort_keys=True,
    )
    return env


def tar_dir(folder: Path, out: Path) -> Path:
    """Tar `folder`'s contents with paths relative to it (files at the archive root), gzip'd."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(Path(folder).rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return out


def _run(
    cmd: list[str], env: dict[str, str], cwd: Path, log: Path, timeout_s: int, stream: TextIO | None
) -> tuple[int, list[str], bool]:
    tail: deque[str] = deque(maxlen=20)
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    try:
        with open(log, "w") as fh:
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                tail.append(line.rstrip())
                if stream is not None:
                    stream.write(line)
                    stream.flush()
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:  # interrupted while reading: leave no orphan behind
            proc.kill()
            proc.wait()
    return rc, list(tail), killed.is_set()


def run_training_job(config: TrainingJobConfig, *, stream: TextIO | None = sys.stderr) -> TrainingJobResult:
    """Run `config.entry_point` as a SageMaker training job would, then package its model dir.

    Refuses an `out` that exists and is not empty (nothing is overwritten). Raises
    TrainingJobError when the script fails, with the reason it wrote to the failure file.
    """
    if not Path(config.entry_point).is_file():
        raise UsageError(f"no entry point at {config.entry_point}", "pass the training script's path")
    ours = {ENTRY_POINT.resolve(), DETECTOR_ENTRY_POINT.resolve()}
    if Path(config.entry_point).resolve() in ours and importlib.util.find_spec("torch") is None:
        raise MissingToolError(
            "training the scene models needs torch, which is not installed",
            "pip install 'edgefleet[train]' (the CPU build of torch 2.13.0)",
        )
    channels = channels_for(config.data)
    out = Path(config.out).resolve()  # the script runs in its own folder, so every path is absolute
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"{out} already exists and is not an empty directory", "pass a new or empty directory for the training job"
        )
    ml = out / "opt" / "ml"
    for sub in ("model", "output/data", "input/config"):
        (ml / sub).mkdir(parents=True)
    # hyperparameters.json as SageMaker writes it: every value JSON-encoded into a string.
    (ml / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({k: json.dumps(v) for k, v in config.hyperparameters.items()}, indent=2, sort_keys=True) + "\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update(sagemaker_env(config, channels, ml))
    env["PYTHONUNBUFFERED"] = "1"
    entry = Path(config.entry_point).resolve()
    cmd = [sys.executable, entry.name, *cli_args(config.hyperparameters)]
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    rc, tail, timed_out = _run(cmd, env, entry.parent, out / "training.log", config.timeout_s, stream)
    seconds = round(time.perf_counter() - started, 2)
    record = {
        "format_version": JOB_FORMAT_VERSION,
        "job_name": config.job_name,
        "entry_point": str(entry),
        "command": cmd,
        "hyperparameters": config.hyperparameters,
        "channels": {k: str(v) for k, v in channels.items()},
        "started_at": started_at,
        "seconds": seconds,
        "exit_code": rc,
    }
    failure_file = ml / "output" / "failure"
    model_dir = ml / "model"
    reason = None
    if timed_out:
        reason = f"ran past its {config.timeout_s} s limit"
    elif rc != 0:
        reason = (
            failure_file.read_text().strip() if failure_file.is_file() else (tail[-1] if tail else f"exit code {rc}")
        )
    elif not any(model_dir.iterdir()):
        reason = "the script wrote nothing into SM_MODEL_DIR"
    if reason is not None:
        (out / "job.json").write_text(
            json.dumps({**record, "status": "Failed", "failure_reason": reason}, indent=2) + "\n"
        )
        raise TrainingJobError(
            f"training job {config.job_name} failed: {reason}",
            f"see {out / 'training.log'}; fix the data or hyperparameters and run again into a new folder",
        )
    model_artifact = tar_dir(model_dir, out / "output" / "model.tar.gz")
    output_artifact = tar_dir(ml / "output" / "data", out / "output" / "output.tar.gz")
    metrics_file = ml / "output" / "data" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    record.update(
        status="Completed",
        metrics=metrics,
        artifacts={
            p.name: {"path": str(p), "sha256": sha256_file(p), "size": p.stat().st_size}
            for p in (model_artifact, output_artifact)
        },
    )
    (out / "job.json").write_text(json.dumps(record, indent=2) + "\n")
    return TrainingJobResult(out, model_artifact, output_artifact, metrics, seconds)
