"""`edgefleet fleet unit`: the fleet's systemd unit, checked by `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from edgefleet.cli import main


def unit_for(tmp_path, config_text: str, capsys) -> str:
    cfg = tmp_path / "fleet.toml"
    cfg.write_text("format_version = 1\n" + config_text)
    out = tmp_path / "edgefleet-fleet.service"
    main(["fleet", "unit", "--config", str(cfg), "--output", str(out)])
    assert "systemctl daemon-reload" in capsys.readouterr().out
    text = out.read_text()
    assert f"ExecStart={sys.executable} -m edgefleet.cli fleet serve --config {cfg}" in text
    return text


def verify(tmp_path, text: str) -> str:
    """systemd-analyze's complaints about the unit (it reports unknown keys and bad values, exit 0 or not)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    path = tmp_path / "check" / "edgefleet-fleet.service"
    path.parent.mkdir()
    path.write_text(text.replace("User=edgefleet-fleet\nGroup=edgefleet-fleet\n", "User=root\nGroup=root\n"))
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    return done.stdout + done.stderr + ("" if done.returncode == 0 else f"exit {done.returncode}")


def test_a_default_config_writes_only_the_state_directory(tmp_path, capsys):
    text = unit_for(tmp_path, "", capsys)
    assert "User=edgefleet-fleet" in text and "StateDirectory=edgefleet-fleet" in text
    assert "Environment=EDGEFLEET_HOME=/var/lib/edgefleet-fleet" in text
    assert "ProtectSystem=strict" in text and "ReadWritePaths" not in text and "CAP_KILL" not in text
    assert verify(tmp_path, text) == ""


def test_the_folders_the_config_writes_are_writable(tmp_path, capsys):
    text = unit_for(
        tmp_path,
        'data_dir = "/srv/fleet"\npackage_store = "/srv/packages"\n'
        '[broker]\nacl_file = "/etc/mosquitto/edgefleet.acl"\nmosquitto_pid_file = "/run/mosquitto.pid"\n',
        capsys,
    )
    writable = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ReadWritePaths=")]
    assert writable == ["/etc/mosquitto", "/srv/fleet", "/srv/packages"]
    assert "AmbientCapabilities=CAP_KILL" in text  # to send mosquitto SIGHUP after rewriting its ACL
    assert verify(tmp_path, text) == ""


def test_an_s3_store_adds_no_path_and_a_bad_config_is_refused(tmp_path, capsys):
    assert "ReadWritePaths" not in unit_for(tmp_path, 'package_store = "s3://bucket/prefix"\n', capsys)
    bad = tmp_path / "bad.toml"
    bad.write_text("format_version = 1\nlisten_prot = 80\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fleet", "unit", "--config", str(bad)])
    assert exit_info.value.code != 0 and "listen_prot" in capsys.readouterr().err
