"""Each role's install in a fresh venv (`python -m venv` + `pip install '.[role]'`, from the package
indexes pip is configured with; its cache makes reruns quick): one representative command works,
and a command of another role prints the `pip install 'edgefleet[...]'` to run, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgefleet.net import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parent.parent


def make_venv(root: Path, extra: str) -> Path:
    """A venv with edgefleet[extra] installed from this checkout; returns its bin folder."""
    venv = root / f"venv-{extra}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{ROOT}[{extra}]"],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv / "bin"


def installed(bin_dir: Path) -> set[str]:
    out = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout
    return {line.partition("==")[0].lower() for line in out.splitlines()}


def edgefleet(bin_dir: Path, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    # cwd is a temporary folder: this checkout's edgefleet/ must not shadow the installed package.
    return subprocess.run(
        [str(bin_dir / "edgefleet"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=dict(os.environ, **(env or {})),
    )


def assert_pip_hint(proc: subprocess.CompletedProcess, extra: str) -> None:
    assert proc.returncode == 14, proc.stderr
    assert f"pip install 'edgefleet[{extra}]'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory):
    """A fleet service from the dev install (no broker); yields (url, admin token)."""
    root = tmp_path_factory.mktemp("fleet")
    port = free_port()
    config = root / "fleet.toml"
    config.write_text(f'format_version = 1\ndata_dir = "{root / "data"}"\nlisten_port = {port}\n')
    env = dict(os.environ, EDGEFLEET_HOME=str(root / "home"))
    cli = [sys.executable, "-m", "edgefleet.cli", "fleet"]
    token = subprocess.run(
        cli + ["tokens", "create", "--config", str(config), "--name", "admin", "--scope", "admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout.strip()
    server = subprocess.Popen(
        cli + ["serve", "--config", str(config)],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=30)


def wait_healthy(url: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url}/healthz did not answer in {timeout} s")


def test_cli_role_drives_a_remote_fleet(tmp_path, fleet_server):
    url, token = fleet_server
    bin_dir = make_venv(tmp_path, "cli")
    assert not installed(bin_dir) & {"fastapi", "sqlalchemy", "uvicorn", "pillow", "apache-tvm"}
    env = {"EDGEFLEET_FLEET_URL": url, "EDGEFLEET_FLEET_TOKEN": token}
    token = edgefleet(bin_dir, "fleet", "devices", "enroll-token", "cam-1", "--target", "x86_64", cwd=tmp_path, env=env)
    assert token.returncode == 0 and len(token.stdout.strip()) >= 20, token.stderr
    listed = edgefleet(bin_dir, "fleet", "rollouts", "list", "--json", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr
    # A rollout of a model the fleet does not have: the server's error, printed by the client.
    missing = edgefleet(bin_dir, "fleet", "rollouts", "create", "nosuch", "1", cwd=tmp_path, env=env)
    assert missing.returncode == 40 and "Traceback" not in missing.stderr, missing.stderr
    assert_pip_hint(edgefleet(bin_dir, "fleet", "serve", cwd=tmp_path), "fleet")


def test_fleet_role_serves_without_agent_or_tvm(tmp_path):
    bin_dir = make_venv(tmp_path, "fleet")
    assert not installed(bin_dir) & {"pillow", "psutil", "apache-tvm", "onnx", "python-multipart"}
    port = free_port()
    config = tmp_path / "fleet.toml"
    config.write_text(f'format_version = 1\ndata_dir = "{tmp_path / "data"}"\nlisten_port = {port}\n')
    server = subprocess.Popen(
        [str(bin_dir / "edgefleet"), "fleet", "serve", "--config", str(config)],
        cwd=tmp_path,
        env=dict(os.environ, EDGEFLEET_HOME=str(tmp_path / "home")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    # Parsing an agent config needs only the core; running the agent needs its extra.
    assert_pip_hint(edgefleet(bin_dir, "agent", "run", "--config", str(tmp_path / "agent.toml"), cwd=tmp_path), "agent")


def test_agent_role_checks_its_config(tmp_path):
    bin_dir = make_venv(tmp_path, "agent")
    assert not installed(bin_dir) & {"rich", "httpx", "fastapi", "apache-tvm"}
    config = tmp_path / "agent.toml"
    tls = "".join(f'{k}_file = "{tmp_path / k}.pem"\n' for k in ("ca", "cert", "key"))
    config.write_text(
        f'version = 1\nstate_dir = "{tmp_path}"\n[mqtt]\nhost = "broker.example"\ndevice_id = "cam-1"\n[mqtt.tls]\n{tls}'
        f'[[sources]]\ntype = "folder"\npath = "{tmp_path}"\n[rules]\nlabels = ["person"]\n'
    )
    checked = edgefleet(bin_dir, "agent", "check-config", str(config), cwd=tmp_path)
    assert checked.returncode == 0 and '"device_id": "cam-1"' in checked.stdout, checked.stderr
    assert_pip_hint(edgefleet(bin_dir, "fleet", "devices", "list", cwd=tmp_path), "cli")


def test_compiler_role_lists_targets(tmp_path):
    bin_dir = make_venv(tmp_path, "compiler")
    assert {"apache-tvm", "onnx"} <= installed(bin_dir) and not installed(bin_dir) & {"fastapi", "sqlalchemy"}
    targets = edgefleet(bin_dir, "targets", cwd=tmp_path)
    assert targets.returncode == 0 and "x86_64" in targets.stdout, targets.stderr
    assert_pip_hint(edgefleet(bin_dir, "fleet", "serve", cwd=tmp_path), "fleet")
