"""A device's state comes from its latest message, whatever order messages arrive in
(fleet/order.py): real `fleet serve` processes, mosquitto and camera clients.

Each case publishes one camera's messages in the order a redelivery, a late replica or a
reconnect would bring them; the fleet must end with the state of the message latest by
(run, seq), not of the one that arrived last. Messages of agents that do not number them
are applied in arrival order, as before.
"""

from __future__ import annotations

import uuid

import pytest
from fleet_world import Camera, World

from edgefleet.contracts.mqtt import LAST_SEQ
from edgefleet.fleet import devices

pytestmark = pytest.mark.mqtt


def status(state: str, version: str | None, run: int | None, seq: int | None, msg_id: str | None = None) -> tuple:
    body = {"schema": 1, "id": msg_id or uuid.uuid4().hex, "state": state}
    if version is not None:
        body["model"] = {"name": "tiny", "version": version}
    if run is not None:
        body |= {"run": run, "seq": seq}
    return "status", body


def will(run: int) -> tuple:
    """The offline last will: made when the run started, sent by the broker when it ends."""
    return status("offline", None, run, LAST_SEQ)


def telemetry(run: int, seq: int) -> tuple:
    return "telemetry", {"schema": 1, "id": uuid.uuid4().hex, "run": run, "seq": seq, "frames": {"ok": 1}}


SAME = uuid.uuid4().hex  # one message delivered twice
# (case, the messages in arrival order, the device's status and model version after them)
CASES = [
    ("an old status after a new one", [status("online", "2", 1, 5), status("online", "1", 1, 2)], ("online", "2")),
    (
        "the same status delivered again after a newer one",
        [status("online", "1", 1, 2, SAME), status("online", "2", 1, 3), status("online", "1", 1, 2, SAME)],
        ("online", "2"),
    ),
    ("the last will ends its run", [status("online", "2", 3, 1), telemetry(3, 2), will(3)], ("offline", "2")),
    ("a status of the run before the will", [will(3), status("online", "1", 3, 4)], ("offline", "1")),
    ("a late will of the previous run", [status("online", "2", 4, 1), will(3)], ("online", "2")),
    ("late telemetry after the will", [will(3), telemetry(3, 9)], ("offline", None)),
    ("telemetry of a new run after the will", [will(3), telemetry(4, 2)], ("online", None)),
    (
        "an older agent's messages, in arrival order",
        [status("online", "2", None, None), status("online", "1", None, None)],
        ("online", "1"),
    ),
]


def state(world: World, device: str) -> tuple[str, str | None]:
    d = devices.get_device(world.library, device)
    return d.status, d.model.version if d.model else None


@pytest.fixture
def world(tmp_path, edgefleet_home):
    w = World(tmp_path, None, edgefleet_home)
    yield w
    w.close()


def test_the_latest_message_by_run_and_seq_decides_a_devices_state(world):
    for i in range(len(CASES)):
        devices.register_device(world.library, f"order-{i}", "x86_64")
    world.start("fleet")  # its broker rights now cover the cameras registered above
    cams, sent = [], 0
    try:
        for i, (_, messages, _) in enumerate(CASES):
            cams.append(Camera(world.broker, f"order-{i}"))
            for suffix, body in messages:
                cams[-1].publish(suffix, body)
                sent += 1
        world.wait_received(sent)
        got = {case: state(world, f"order-{i}") for i, (case, _, _) in enumerate(CASES)}
    finally:
        for c in cams:
            c.close()
    assert got == {case: expected for case, _, expected in CASES}


@pytest.mark.postgres
def test_two_replicas_storing_one_devices_statuses_in_parallel_keep_the_latest(
    tmp_path, edgefleet_home, postgres_database
):
    """The camera's 300 statuses go out newest first, dealt to two replicas that commit them in
    whatever order their batches end: the device must end on the newest (seq 300), then offline
    by its last will, which later telemetry of the same run does not undo."""
    world = World(tmp_path, postgres_database, edgefleet_home)
    cam = Camera(world.broker, "cam-1")
    try:
        world.start("fleet-a")
        world.start("fleet-b")
        for seq in range(300, 0, -1):
            cam.publish(*status("online", str(seq), 7, seq))
        world.wait_received(300)
        shares = [world.metrics(r).get("status", 0) for r in ("fleet-a", "fleet-b")]
        assert min(shares) > 0, shares  # both replicas stored some of them
        assert state(world, "cam-1") == ("online", "300")
        for suffix, body in [will(7)] + [telemetry(7, seq) for seq in range(301, 341)]:
            cam.publish(suffix, body)
        world.wait_received(341)
        assert state(world, "cam-1") == ("offline", "300")
    finally:
        cam.close()
        world.close()
