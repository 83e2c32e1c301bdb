"""The brightness agent run the cross tests share: compile for a target, run `agent run` somehow, check the alert."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edgefleet.compiler.compile import compile_model
from edgefleet.package import Preprocessing
from edgefleet.signing import public_path

# The agent tests' helpers write the brightness model and the agent config in the agent's own format.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from agent_support import LABELS, agent_config, brightness_onnx, drop_frame, jpeg, write_config  # noqa: E402

AGENT_ARGS = ["-m", "edgefleet.cli", "agent", "run", "--max-frames", "2", "--json", "--log-level", "warning"]


def check_agent_alerts(
    target: str, run: Callable[[list[str]], subprocess.CompletedProcess], broker, key, tmp_path: Path
) -> None:
    """`run(args)` runs the guest's Python with AGENT_ARGS + --config; a dark then a bright frame make one alert."""
    brightness_onnx(tmp_path / "brightness.onnx")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    pkg = compile_model(
        str(tmp_path / "brightness.onnx"),
        target,
        output=tmp_path / f"brightness-{target}.tar.gz",
        name="brightness",
        version="1",
        labels=tmp_path / "labels.txt",
        preprocessing=Preprocessing(resize=(16, 16)),
        key=key.path,
        verify=False,
        quiet=True,
    ).package
    cfg = write_config(tmp_path / "agent.toml", agent_config(tmp_path, broker, (pkg, public_path(key.path))))
    for i, value in enumerate([20, 240]):  # dark, then bright
        drop_frame(tmp_path / "incoming", f"f{i:03d}.jpg", jpeg(value))
    alerts = broker.subscriber("edgefleet/v1/cam-1/alerts")
    status = broker.subscriber("edgefleet/v1/cam-1/status")

    proc = run([*AGENT_ARGS, "--config", str(cfg)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["alerts"] == 1
    alert = alerts.wait_for(1, timeout=30)[0].json()
    assert alert["device"] == "cam-1" and alert["label"] == "bright" and alert["score"] > 0.99
    assert alert["frame"].startswith("f001.jpg")
    assert alert["model"] == {"name": "brightness", "version": "1"}
    assert [m.json()["state"] for m in status.messages][:1] == ["online"]
