"""Two `fleet serve` replicas on one PostgreSQL manage one mosquitto's dynamic-security plugin
(fleet/broker_auth/dynsec.py) without undoing each other's changes: a device enrolled on one is
granted at once, revoked on the other it is refused at once, and a replica's start-up sync that
runs while the other enrolls or revokes leaves the broker as the database says
(fleet/broker_auth one_writer). The broker's state is read from its own dynamic-security.json,
which mosquitto rewrites after every change."""

from __future__ import annotations

import json
import subprocess
import threading

import httpx
import pytest
from fleet_world import CAMERAS, AckedCamera, World, csr

from edgefleet.fleet import auth, devices

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres]
BULK = 400  # devices besides the test's own: each replica's sync then takes a few seconds


def make_admin(world: World, replica: str) -> None:
    """What the operator does once per further replica (docs/fleet.md "Broker authorization")."""
    b = world.broker
    ctrl = ["mosquitto_ctrl", "--cafile", str(b.pki.ca_file), "--cert", str(b.fleet_cert), "--key", str(b.fleet_key)]
    ctrl += ["-h", b.host, "-p", str(b.port), "dynsec"]
    cert, key = b.pki.issue(replica)
    for command in (["createClient", replica], ["addClientRole", replica, "admin"]):
        subprocess.run(ctrl + command, stdin=subprocess.DEVNULL, check=True, timeout=30, capture_output=True)


def on_broker(world: World) -> dict[str, set[str]]:
    """Each dynsec client the broker has now and its roles."""
    state = json.loads(world.broker.dynsec_file.read_text())
    return {c["username"]: {r["rolename"] for r in c.get("roles", [])} for c in state.get("clients", [])}


def granted(world: World) -> set[str]:
    """The identities holding the role the fleet gives them."""
    return {user for user, roles in on_broker(world).items() if f"edgefleet-{user}" in roles}


class Admin:
    def __init__(self, world: World) -> None:
        self.world, self.token = world, auth.create_token(world.library, "admin", "admin")

    def call(self, replica: str, path: str, body: dict | None = None) -> dict:
        _, url = self.world.replicas[replica]
        answer = httpx.post(
            f"{url}/api/v1{path}", json=body or {}, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )
        assert answer.status_code in (200, 201), answer.text
        return answer.json()

    def enroll(self, replica: str, device: str) -> None:
        token = self.call(replica, "/enrollment-tokens", {"device_id": device, "target": "x86_64"})["token"]
        self.call(replica, "/enroll", {"token": token, "device_id": device, "csr": csr(device)})

    def revoke(self, replica: str, device: str) -> None:
        assert self.call(replica, f"/devices/{device}/revoke")["status"] == "revoked"


def test_two_replicas_enroll_and_revoke_on_one_dynsec_broker_without_undoing_each_other(
    tmp_path, edgefleet_home, postgres_database
):
    world = World(tmp_path, postgres_database, edgefleet_home, dynsec=True)
    for i in range(BULK):
        devices.register_device(world.library, f"bulk-{i}", "x86_64")
    admin = Admin(world)
    try:
        world.start("fleet")
        make_admin(world, "fleet-b")
        world.start("fleet-b")
        assert granted(world) >= {"fleet", "fleet-b", *CAMERAS}

        admin.enroll("fleet", "cam-new")  # on replica A: granted when the answer comes
        assert on_broker(world)["cam-new"] == {"edgefleet-cam-new"}
        cam = AckedCamera(world.broker, "cam-new")
        try:
            assert cam.publish("edgefleet/v1/cam-new/telemetry") == 0
            admin.revoke("fleet-b", "cam-new")  # on replica B: gone from the broker when the answer comes
            assert "cam-new" not in on_broker(world)
            assert cam.disconnected.wait(10)
        finally:
            cam.close()

        # Replica B restarts (its start-up sync) while A enrolls one device after another, then A
        # restarts while B revokes: with BULK devices a sync takes seconds, and it must neither take
        # the rights of a device enrolled meanwhile nor give back those of one revoked meanwhile.
        enrolled = []
        restart = threading.Thread(target=lambda: (world.stop("fleet-b"), world.start("fleet-b")))
        restart.start()
        while restart.is_alive():
            enrolled.append(f"cam-e{len(enrolled)}")
            admin.enroll("fleet", enrolled[-1])
        restart.join()
        assert granted(world) >= set(enrolled)
        revoked = []
        restart = threading.Thread(target=lambda: (world.stop("fleet"), world.start("fleet")))
        restart.start()
        while restart.is_alive():
            revoked.append(f"bulk-{len(revoked)}")
            admin.revoke("fleet-b", revoked[-1])
        restart.join()
        kept = granted(world)
        everyone = {
            "fleet",
            "fleet-b",
            devices.FLEET_VIEWER_USER,
            *CAMERAS,
            *enrolled,
            *(f"bulk-{i}" for i in range(BULK)),
        }
        assert kept == everyone - {"cam-new", *revoked}, (len(enrolled), len(revoked))
    finally:
        world.close()
