"""The agent updates itself over the air: real agent processes under a restarting supervisor, real mosquitto.

The fleet's side (jobs in waves, gates, abort) is tests/fleet/test_agent_rollouts.py; here the
fleet is a test client publishing the jobs it would send.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from agent_support import jpeg
from ota_support import Camera, journal

from edgefleet import __version__
from edgefleet.agent.launcher import launch, prepare_boot
from edgefleet.agent.self_update import RESTART_EXIT_CODE, RESUME, AgentJournal
from edgefleet.agent.update import AGENT_STATES, TRANSITIONS
from edgefleet.agent_release import build_release, compatibility_problems, unpack_release
from edgefleet.contracts.journal import AgentUpdateJournal
from edgefleet.errors import PackageIntegrityError, UnsafeArchiveError, UsageError
from edgefleet.runtime_bundle import find_bundle, read_bundle
from edgefleet.signing import create_signing_key, load_public_key

pytestmark = pytest.mark.mqtt


@pytest.fixture
def camera(tmp_path, mqtt_broker, agent_package, releases, static_server):
    cam = Camera(tmp_path, mqtt_broker, agent_package, releases, static_server)
    yield cam
    cam.stop()


def test_agent_update_commits_runs_the_new_code_and_runtime_and_keeps_the_model_working(camera):
    camera.start().wait_online(__version__)
    camera.send("a1", "9.1", "9.1")
    assert camera.final("a1") == ("committed", "agent 9.1 healthy after 1 start(s)")
    camera.wait_online("9.1")
    assert camera.states("a1") == [
        "idle",
        "downloading",
        "verifying",
        "staged",
        "switching",
        "probation",
        "probation",
        "committed",
    ]
    assert camera.current() == "releases/9.1"
    assert RESTART_EXIT_CODE in camera.supervisor.exits
    # The new agent runs the release's runtime bundle, and its model still answers frames.
    maps = Path(f"/proc/{camera.supervisor.process.pid}/maps").read_text()
    assert str(camera.state / "agent" / "releases" / "9.1" / "runtime" / "lib" / "libtvm_runtime.so") in maps
    alerts = camera.broker.subscriber("edgefleet/v1/cam-1/alerts")
    (camera.incoming / "bright.jpg").write_bytes(jpeg(250))
    assert alerts.wait_for(1, timeout=30)[0].json()["label"] == "bright"
    # A second update keeps the release before it (for a fleet rollback) and drops older ones.
    camera.send("a2", "9.2", "9.2")
    assert camera.final("a2")[0] == "committed"
    camera.wait_online("9.2")
    assert sorted(p.name for p in (camera.state / "agent" / "releases").iterdir()) == ["9.1", "9.2"]


@pytest.mark.parametrize(
    "release, why",
    [
        ("9.3-crash", "agent 9.3 started 2 times without passing its health check"),
        ("9.3-nan", "health check failed: the smoke test produced no output or non-finite values"),
    ],
)
def test_a_failed_agent_update_rolls_back_to_the_agent_before(camera, release, why):
    camera.start().wait_online(__version__)
    camera.send("bad", release, "9.3")
    assert camera.final("bad") == ("rolled_back", f"back on the installed agent: {why}")
    camera.wait_online(__version__)
    assert camera.current() is None
    assert not (camera.state / "agent" / "releases" / "9.3").exists(), "the failed release is removed"
    if release == "9.3-crash":
        assert camera.supervisor.exits.count(1) == 2, camera.supervisor.exits


# (state the agent is SIGKILLed in right after journaling it, release, how the job ends)
POWER_LOSS = [
    ("downloading", "9.2", "committed"),
    ("verifying", "9.2", "committed"),
    ("staged", "9.2", "committed"),
    ("switching", "9.2", "rolled_back"),
    ("probation", "9.2", "committed"),
    ("committed", "9.2", "committed"),
    ("rolling_back", "9.3-nan", "rolled_back"),  # the new agent rolling itself back
    ("rolling_back", "9.3-crash", "rolled_back"),  # the launcher rolling back a release that cannot start
]


@pytest.mark.parametrize("state, release, final", POWER_LOSS)
def test_power_loss_in_each_state_resumes_or_rolls_back(camera, state, release, final):
    camera.start({"EDGEFLEET_UPDATE_FAULT": state}).wait_online(__version__)
    camera.send("p1", release, "9.3" if release.startswith("9.3") else "9.2")
    assert camera.final("p1")[0] == final
    expected = "9.2" if final == "committed" else __version__
    camera.wait_online(expected)
    assert journal(camera.state)["state"] == final
    assert camera.current() == ("releases/9.2" if final == "committed" else None)
    assert -9 in camera.supervisor.exits


def test_a_release_changed_on_disk_after_its_commit_is_not_started(camera):
    camera.start().wait_online(__version__)
    camera.send("c1", "9.2", "9.2")
    assert camera.final("c1")[0] == "committed"
    camera.wait_online("9.2")
    run_py = camera.state / "agent" / "releases" / "9.2" / "site" / "edgefleet" / "agent" / "run.py"
    run_py.write_text(run_py.read_text() + "\n# changed on the camera's disk\n")
    camera.status.messages.clear()
    camera.supervisor.process.kill()  # the next start goes through the launcher's check
    camera.wait_online(__version__)
    assert camera.current() is None
    assert "agent release 9.2 failed its check at start" in camera.log.read_text()


def test_untrusted_or_foreign_releases_are_refused_reported_and_the_agent_keeps_running(camera, tmp_path):
    other = create_signing_key(tmp_path / "other.key")
    camera.releases["9.4-untrusted"] = tmp_path / "untrusted.tar.gz"
    build_release(camera.releases["9.4-untrusted"], "9.4", other, code=[])
    camera.releases["9.5-arm"] = tmp_path / "arm.tar.gz"
    build_release(camera.releases["9.5-arm"], "9.5", camera.releases["key"], arch="aarch64", code=[])
    # A runtime of another TVM minor cannot run the camera's model: refused before the switch.
    bundle = tmp_path / "tvm-0.26-runtime"
    shutil.copytree(find_bundle().path, bundle)
    info = read_bundle(bundle).info
    (bundle / "runtime.json").write_text(info.model_copy(update={"tvm_version": "0.26.0"}).model_dump_json())
    camera.releases["9.6-tvm026"] = tmp_path / "tvm026.tar.gz"
    build_release(camera.releases["9.6-tvm026"], "9.6", camera.releases["key"], bundle=read_bundle(bundle), code=[])
    camera.start().wait_online(__version__)
    camera.send("u1", "9.4-untrusted", "9.4")
    state, detail = camera.final("u1")
    assert state == "failed" and "does not verify against any trusted key" in detail
    camera.send("u2", "9.5-arm", "9.5")
    assert camera.final("u2") == ("failed", "agent release refused: the release is for aarch64, this camera is x86_64")
    camera.send("u3", "9.6-tvm026", "9.6")
    state, detail = camera.final("u3")
    assert state == "failed" and "cannot run the active model brightness 1: TVM 0.27 vs 0.26" in detail, detail
    assert camera.current() is None and camera.online_version() == __version__
    assert sorted(p.name for p in (camera.state / "agent" / "releases").iterdir()) == []


def test_the_launcher_refuses_a_relative_state_dir(tmp_path):
    with pytest.raises(UsageError, match="state_dir state is relative"):
        launch(tmp_path / "agent.toml", Path("state"), [])


def test_the_release_archive_refuses_tampering_missing_signatures_and_foreign_cameras(tmp_path, releases):
    trusted = [load_public_key(releases["trust"])]
    good = releases["9.2"]
    manifest, _ = unpack_release(good, tmp_path / "ok", trusted)
    assert manifest.version == "9.2" and compatibility_problems(manifest) == []
    # One changed byte in the code: the manifest's hash no longer matches.
    with tarfile.open(good) as src, tarfile.open(tmp_path / "tampered.tar.gz", "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "site/edgefleet/agent/run.py":
                data = data.replace(b"def run_agent", b"def run_agenT")
            member.size = len(data)
            dst.addfile(member, __import__("io").BytesIO(data))
    with pytest.raises(PackageIntegrityError, match="does not match its sha256"):
        unpack_release(tmp_path / "tampered.tar.gz", tmp_path / "t", trusted)
    assert not (tmp_path / "t").exists()
    with tarfile.open(good) as src, tarfile.open(tmp_path / "unsigned.tar.gz", "w:gz") as dst:
        for member in src.getmembers():
            if member.name != "manifest.sig":
                dst.addfile(member, src.extractfile(member))
    with pytest.raises(PackageIntegrityError, match="no manifest.sig"):
        unpack_release(tmp_path / "unsigned.tar.gz", tmp_path / "u", trusted)
    foreign = manifest.model_copy(
        update={
            "arch": "armv7",
            "python": manifest.python.model_copy(update={"min": "3.99"}),
            "requires": [*manifest.requires, manifest.requires[0].model_copy(update={"name": "no-such-dist"})],
        }
    )
    problems = compatibility_problems(foreign)
    assert (
        any("for armv7" in p for p in problems)
        and any("Python >=3.99" in p for p in problems)
        and any("no-such-dist" in p for p in problems)
    )
    (tmp_path / "truncated.tar.gz").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(UnsafeArchiveError):
        unpack_release(tmp_path / "truncated.tar.gz", tmp_path / "m", trusted)


def test_the_tables_are_closed_and_the_launcher_rolls_back_what_did_not_prove_itself(tmp_path):
    assert set(RESUME) == set(AGENT_STATES)
    assert {s for s, _ in TRANSITIONS} | set(TRANSITIONS.values()) <= set(AGENT_STATES)
    j = AgentJournal(tmp_path)
    (j.releases / "9.1").mkdir()
    (j.releases / "9.2").mkdir()
    j.point_current("9.2")

    def journaled(state: str, **extra) -> None:
        job = {
            "format": 1,
            "job": "j",
            "kind": "agent_install",
            "package": {"name": "edgefleet-agent", "version": "9.2"},
            "probation": {"max_boots": 2},
            "previous": "9.1",
            "boots": 0,
        } | extra
        j.enter(AgentUpdateJournal.model_validate(job), state)

    journaled("probation")
    assert [prepare_boot(j), prepare_boot(j), prepare_boot(j)] == ["start", "start", "rolled_back"]
    assert j.current_version() == "9.1" and j.load().state == "rolled_back" and j.load().unreported
    for state in ("switching", "rolling_back", "a-state-from-the-future"):
        j.point_current("9.2")
        journaled(state)
        assert prepare_boot(j) == "rolled_back" and j.current_version() == "9.1", state
    for state in ("staged", "committed", "failed"):
        j.point_current("9.2")
        journaled(state)
        assert prepare_boot(j) == "start" and j.current_version() == "9.2", state
    (
        j.releases / "9.1"
    ).rmdir()  # a previous release that is gone: back to the installed agent, never stay on the failed one
    journaled("rolling_back")
    assert prepare_boot(j) == "rolled_back" and j.current_version() is None
    assert j.load().detail.endswith("the previous release 9.1 is gone from the camera")
    (j.releases / "9.1").mkdir()
    j.point_current("9.2")
    j.path.write_text(json.dumps({"previous": "9.1", "state": 3})[:-5])  # torn by a power loss
    assert prepare_boot(j) == "rolled_back" and j.current_version() == "9.2"  # unreadable: keep what runs
    assert (j.root / "journal.unreadable.json").exists() and j.load() is None


def test_release_build_command_signs_an_arm_release_with_its_runtime_and_refuses_a_bad_version(
    cli, signing_key, tmp_path
):
    from edgefleet.cross.runtime_build import build_runtime
    from edgefleet.runtime_bundle import find_bundle
    from edgefleet.signing import public_path

    # The release carries the aarch64 runtime: built here where no earlier test left it in the cache
    # (a fresh machine runs this file before the cross tests that build it; cached, this returns at once).
    build_runtime("aarch64", quiet=True)
    out = tmp_path / "agent-arm64.tar.gz"
    result = cli("agent", "release", "build", "--version", "0.3.0", "--arch", "arm64", "-o", out)
    assert result.code == 0, result.text
    assert "agent 0.3.0 for aarch64" in result.text
    manifest, signer = unpack_release(out, tmp_path / "x", [load_public_key(public_path(signing_key.path))])
    bundle = find_bundle("aarch64")
    assert signer == signing_key.key_id and manifest.runtime.key == bundle.info.key
    assert {f"runtime/lib/{name}" for name in bundle.info.libraries} <= set(manifest.files)
    assert compatibility_problems(manifest) == ["the release is for aarch64, this camera is x86_64"]
    bad = cli("agent", "release", "build", "--version", "next", "--no-runtime", "-o", tmp_path / "bad.tar.gz")
    assert bad.code == 2 and "agent release version: version 'next' is not dotted integers" in bad.text, bad.text
