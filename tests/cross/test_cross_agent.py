"""The camera agent itself, running on emulated aarch64 and armv7, alerts through a real broker on the host."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgefleet.compiler.compile import compile_model
from edgefleet.cross.emulate import run_emulated
from edgefleet.package import Preprocessing
from edgefleet.signing import public_path
from support.broker import mqtt_broker  # noqa: F401  (the fixture)

# The agent tests' helpers write the brightness model and the agent config in the agent's own format.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))
from agent_support import LABELS, agent_config, brightness_onnx, drop_frame, jpeg, write_config  # noqa: E402

pytestmark = [pytest.mark.qemu, pytest.mark.mqtt]


@pytest.mark.parametrize(("target", "sysroot_fixture"), [("rasp4b", "arm64_sysroot"), ("rasp3b", "armhf_sysroot")])
def test_emulated_agent_takes_frames_and_its_alert_reaches_the_host_broker(target, sysroot_fixture, request, mqtt_broker, cross_key, tmp_path):
    sysroot = request.getfixturevalue(sysroot_fixture)
    brightness_onnx(tmp_path / "brightness.onnx")
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    pkg = compile_model(str(tmp_path / "brightness.onnx"), target, output=tmp_path / f"brightness-{target}.tar.gz", name="brightness", version="1",
                        labels=tmp_path / "labels.txt", preprocessing=Preprocessing(resize=(16, 16)), key=cross_key.path, verify=False, quiet=True).package
    config = agent_config(tmp_path, mqtt_broker, (pkg, public_path(cross_key.path)))
    cfg = write_config(tmp_path / "agent.toml", config)
    for i, value in enumerate([20, 240]):  # dark, then bright
        drop_frame(tmp_path / "incoming", f"f{i:03d}.jpg", jpeg(value))
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    status = mqtt_broker.subscriber("edgefleet/v1/cam-1/status")

    proc = run_emulated(sysroot, ["python3", "-m", "edgefleet.cli", "agent", "run", "--config", str(cfg), "--max-frames", "2", "--json", "--log-level", "warning"],
                        capture=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["alerts"] == 1
    got = alerts.wait_for(1, timeout=30)
    alert = got[0].json()
    assert alert["device"] == "cam-1" and alert["label"] == "bright" and alert["score"] > 0.99
    assert alert["frame"].startswith("f001.jpg")
    assert alert["model"] == {"name": "brightness", "version": "1"}
    assert [m.json()["state"] for m in status.messages][:1] == ["online"]
