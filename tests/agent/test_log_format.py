"""`agent run` writes its log as JSON lines when the config's [log] or --log-format says so
(a real agent process against a real mosquitto)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from agent_support import agent_config, write_config


@pytest.mark.mqtt
@pytest.mark.parametrize("how", ["config", "flag"])
def test_agent_run_logs_json_lines(tmp_path, mqtt_broker, how):
    config = agent_config(tmp_path, mqtt_broker, (Path("unused"), Path("unused")))
    config.pop("model")  # no model: the agent logs that it waits for one, then idles out
    if how == "config":
        config["log"] = {"format": "json"}
    path = write_config(tmp_path / "agent.toml", config)
    flag = ["--log-format", "json"] if how == "flag" else []
    done = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(path), "--idle-exit", "1", *flag],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]  # every line is JSON
    waiting = next(line for line in lines if "no model installed yet" in line["message"])
    assert waiting["level"] == "INFO" and waiting["logger"].startswith("edgefleet.agent") and "time" in waiting
