"""The fleet's systemd unit, written by `edgefleet fleet unit` (the agent's is agent/install.py's).

The service runs as an unprivileged system user with the filesystem read-only but for its state
folder (/var/lib/edgefleet-fleet, systemd's StateDirectory, which is also EDGEFLEET_HOME so the
config's defaults land there) and the folders the config names for writing: data_dir, a local
package store and the broker ACL file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from edgefleet.fleet.config import FleetConfig, load_config

STATE = Path("/var/lib/edgefleet-fleet")
DEFAULT_UNIT = Path("/etc/systemd/system/edgefleet-fleet.service")


def load_as_service(config_path: Path) -> FleetConfig:
    """The config as the service reads it: its defaults under the unit's EDGEFLEET_HOME, not the caller's."""
    saved = os.environ.get("EDGEFLEET_HOME")
    os.environ["EDGEFLEET_HOME"] = str(STATE)
    try:
        return load_config(config_path)
    finally:
        if saved is None:
            del os.environ["EDGEFLEET_HOME"]
        else:
            os.environ["EDGEFLEET_HOME"] = saved


def writable_paths(config: FleetConfig) -> list[Path]:
    """What the config makes the fleet write outside its state folder."""
    paths = [config.data_dir]
    if "://" not in config.resolved_store():
        paths.append(Path(config.resolved_store()))
    if config.broker is not None and config.broker.acl_file is not None:
        paths.append(config.broker.acl_file.parent)  # rewritten beside itself, then renamed
    return sorted({p for p in paths if not p.is_relative_to(STATE)})


def unit_text(config_path: Path, config: FleetConfig, user: str, python: str = sys.executable) -> str:
    """The unit for `fleet serve --config config_path`; `python` is the interpreter that has edgefleet[fleet]."""
    extra = "".join(f"ReadWritePaths={p}\n" for p in writable_paths(config))
    if config.broker is not None and config.broker.mosquitto_pid_file is not None:
        # The fleet sends mosquitto SIGHUP after rewriting the ACL; mosquitto runs as another user.
        extra += "AmbientCapabilities=CAP_KILL\nCapabilityBoundingSet=CAP_KILL\n"
    return f"""[Unit]
Description=edgefleet fleet service (model registry, rollouts, MQTT bridge, dashboard)
After=network-online.target postgresql.service mosquitto.service
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
Environment=EDGEFLEET_HOME={STATE}
ExecStart={python} -m edgefleet.cli fleet serve --config {config_path}
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=30
StateDirectory={STATE.name}
StateDirectoryMode=0700
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
{extra}
[Install]
WantedBy=multi-user.target
"""
