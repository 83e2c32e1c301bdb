"""The agent updates itself through the fleet's rollouts, end to end with real processes: `edgefleet
fleet serve`, mosquitto, and agents started by `edgefleet agent launch` under a supervisor that
restarts them as systemd does. One of the cameras runs the agent one version older (agent 0.1.0's
code, kept in tests/fleet/data), which talks to the new fleet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.broker import mqtt_broker  # noqa: F401
from support.old_agent import old_agent_site
from test_fleet_e2e import CLI, World

sys.path.insert(0, str(Path(__file__).parents[1] / "agent_ota"))
from ota_support import NAN_MODEL, Supervisor, release_code  # noqa: E402

from edgefleet import __version__  # noqa: E402
from edgefleet.agent_release import build_release  # noqa: E402
from edgefleet.cross.runtime_build import build_runtime  # noqa: E402
from edgefleet.signing import load_signing_key  # noqa: E402

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
NEW, OLD = ["cam-a", "cam-b"], "cam-c"  # the names test_fleet_e2e's frame feeder feeds


class OtaWorld(World):
    """World with agents under the launcher; OLD runs the older agent's code (installed by that code too)."""

    def __init__(self, root, broker, packages, home) -> None:
        super().__init__(root, broker, packages, home)
        site = old_agent_site(root)
        # Its runtime speaks its own C ABI (1), built from its own agent/native as for a camera still on it.
        runtime = build_runtime("x86_64", quiet=True, abi_source=site / "edgefleet" / "agent" / "native")
        assert runtime.info.abi == 1, runtime.info
        self.old_env = dict(self.env, PYTHONPATH=str(site), PYTHONSAFEPATH="1", EDGEFLEET_RUNTIME=str(runtime.path))
        self.supervisors: dict[str, Supervisor] = {}

    def install_agent(self, device: str) -> Path:
        """The older agent installs and enrolls itself with a one-time token, with its own code."""
        if device != OLD:
            return super().install_agent(device)
        cfg, token = self.root / f"{device}.toml", self.root / f"{device}.token"
        token.write_text(
            self.http.post(
                "/enrollment-tokens", json={"device_id": device, "target": "x86_64", "group": "lobby"}
            ).json()["token"]
        )
        subprocess.run(
            CLI
            + [
                "agent",
                "install",
                "--config",
                str(cfg),
                "--state-dir",
                str(self.root / device),
                "--device-id",
                device,
                "--enroll-token-file",
                str(token),
                "--fleet-url",
                self.url,
                "--package",
                str(self.packages["v1"]),
                "--label",
                "person",
                "--user",
                "nobody",
                "--unit-path",
                str(self.root / f"{device}.service"),
            ],
            env=self.old_env,
            cwd=self.root,
            capture_output=True,
            text=True,
            check=True,
        )
        cfg.write_text(cfg.read_text() + "\n[telemetry]\ninterval_s = 1.0\n\n[health]\nenabled = false\n")
        return cfg

    def start_agent(self, device: str, fault: str | None = None) -> None:
        cfg, log = self.root / f"{device}.toml", self.root / f"{device}.log"
        if device == OLD:  # an agent before 0.2 has no launcher: its unit runs `agent run`
            self.agents[device] = subprocess.Popen(
                CLI + ["agent", "run", "--config", str(cfg), "--drain", "1"],
                env=self.old_env,
                cwd=self.root,
                stdout=open(log, "ab"),
                stderr=subprocess.STDOUT,
            )
        else:
            self.supervisors[device] = Supervisor(cfg, log).start()

    def close(self) -> None:
        for supervisor in self.supervisors.values():
            supervisor.stop()
        super().close()

    def devices(self) -> dict[str, dict]:
        return {d["id"]: d for d in self.http.get("/devices").json()["items"]}

    def agent_rollout(self, version: str, devices: list[str], plan: dict):
        return self.http.post(
            "/rollouts",
            json={"group": "edgefleet-agent", "version": version, "selection": {"devices": devices}, "plan": plan},
        )

    def finished(self, rollout_id: int, timeout: float = 180) -> dict:
        return self.wait(
            lambda: self.state(rollout_id)["state"] in ("succeeded", "aborted") and self.state(rollout_id),
            timeout,
            f"rollout {rollout_id} to finish",
        )


@pytest.fixture
def world(tmp_path, mqtt_broker, tiny_packages, edgefleet_home):

    w = OtaWorld(tmp_path, mqtt_broker, tiny_packages, edgefleet_home)
    try:
        key = load_signing_key(tiny_packages["key"])  # the fleet's key, which the cameras trust
        for name, patch in (("9.1", None), ("9.2", None), ("9.3", NAN_MODEL)):
            build_release(
                tmp_path / f"agent-{name}.tar.gz", name, key, code=release_code(tmp_path / f"code-{name}", patch)
            )
            up = w.http.post("/packages", content=(tmp_path / f"agent-{name}.tar.gz").read_bytes())
            assert up.status_code == 201, up.text
            assert (
                w.http.post(f"/models/edgefleet-agent/versions/{name}/approval", json={"state": "Approved"}).status_code
                == 200
            )
        for version in ("v1", "v2"):
            assert w.http.post("/packages", content=tiny_packages[version].read_bytes()).status_code == 201
        w.http.post("/models/tiny/versions/2/approval", json={"state": "Approved"})
        for device in [*NEW, OLD]:
            w.install_agent(device)
            w.start_agent(device)
        w.feeder.start()
        w.wait(
            lambda: len(w.devices()) == 3 and all(d["status"] == "online" and d["agent"] for d in w.devices().values()),
            90,
            "three agents online",
        )
        yield w
    finally:
        w.close()


def test_agent_rollouts_roll_back_a_bad_release_then_update_in_waves_and_the_older_agent_keeps_working(world):
    devices = world.devices()
    assert {d: devices[d]["agent"] for d in devices} == {
        "cam-a": {"version": __version__, "arch": "x86_64"},
        "cam-b": {"version": __version__, "arch": "x86_64"},
        OLD: {"version": "0.1.0", "arch": None},
    }
    # The older agent cannot take an agent release: the fleet says so instead of sending a job it would ignore.
    refused = world.agent_rollout("9.1", [*NEW, OLD], {})
    assert (
        refused.status_code == 409 and "cam-c runs agent 0.1.0, which cannot update itself over the air" in refused.text
    ), refused.text
    # 1. A release whose model runtime answers NaN: the canary rolls itself back, the rollout aborts.
    rid = world.agent_rollout(
        "9.3", NEW, {"canary": 1, "waves": [100], "bake_time_s": 1, "probation": {"health_deadline_s": 10}}
    ).json()["id"]
    final = world.finished(rid)
    assert final["state"] == "aborted" and "1 of 1 devices failed" in final["reason"], final
    jobs = world.jobs(rid)
    assert [(d["device"], d["state"]) for d in jobs] == [("cam-a", "rolled_back")]
    assert "health check failed" in jobs[0]["detail"]
    world.wait(
        lambda: world.devices()["cam-a"]["agent"]["version"] == __version__, 60, "cam-a back on the installed agent"
    )
    # 2. A good release in waves, gated on the new agents' health: both cameras commit it.
    rid = world.agent_rollout(
        "9.1", NEW, {"canary": 1, "waves": [100], "bake_time_s": 2, "health": {"min_samples": 2}}
    ).json()["id"]
    final = world.finished(rid)
    assert final["state"] == "succeeded", final
    assert final["installs"] == {"committed": 2} and final["kind"] == "agent"
    events = world.http.get(f"/rollouts/{rid}/events").json()["items"]
    assert [e["detail"] for e in events if e["event"] == "wave_sent"] == [
        "wave 0: devices 1-1 of 2",
        "wave 1: devices 2-2 of 2",
    ]
    assert any(e["event"] == "next_wave" and "agent 9.1 online with telemetry" in e["detail"] for e in events), events
    world.wait(
        lambda: all(world.devices()[d]["agent"]["version"] == "9.1" for d in NEW), 60, "the new agents to report 9.1"
    )
    # 3. An operator aborts the next release after its canary committed: the fleet rolls it back to 9.1.
    rid = world.agent_rollout("9.2", NEW, {"canary": 1, "waves": [100], "bake_time_s": 600}).json()["id"]
    world.wait(lambda: world.state(rid)["state"] == "baking", 120, "the 9.2 canary to commit")
    world.http.post(f"/rollouts/{rid}/abort", json={"reason": "test"})
    final = world.finished(rid)
    assert [(d["kind"], d["state"]) for d in world.jobs(rid)] == [
        ("install", "committed"),
        ("rollback", "committed"),
    ], final
    world.wait(
        lambda: all(world.devices()[d]["agent"]["version"] == "9.1" for d in NEW), 60, "both agents on 9.1 again"
    )
    # 4. The new fleet still deploys models to all three, the older agent included, which runs the model it sent.
    rid = world.rollout("2", {"canary": 1, "waves": [100], "bake_time_s": 1, "health": {"enabled": False}})
    final = world.finished(rid)
    assert final["state"] == "succeeded" and final["installs"] == {"committed": 3}, final
    world.wait(lambda: world.devices()[OLD]["model"]["version"] == "2", 30, "the older agent to report model 2")
    alerts = world.broker.subscriber(f"edgefleet/v1/{OLD}/alerts")
    alert = alerts.wait_for(1, timeout=60)[-1].json()
    assert alert["label"] == "person" and alert["model"] == {"name": "tiny", "version": "2"}
    seen = world.devices()[OLD]["last_seen"]
    world.wait(lambda: world.devices()[OLD]["last_seen"] > seen + 2, 30, "the older agent's telemetry to keep coming")
    assert world.agents[OLD].poll() is None
