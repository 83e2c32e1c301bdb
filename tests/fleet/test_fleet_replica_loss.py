"""A replica SIGKILLed and never started again (fleet/adoption.py), with real processes: two
`fleet serve` replicas on one PostgreSQL, mosquitto, three cameras sending telemetry.

mosquitto keeps dealing the dead replica's share of the messages to its session and would drop
them when the session expires. With `peer_identities_dir` the surviving replica finds the dead
one's slot free, drains its session under its id and ends it; the scheduler lease moves too."""

from __future__ import annotations

import time

import pytest
from fleet_world import CAMERAS, Camera, World, accepted, send_in_background
from sqlalchemy import select

from edgefleet.fleet.adoption import ADOPT_EVERY_S, QUIET_S
from edgefleet.fleet.db import Replica

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres]
# Noticing (one round of the watch), connecting, draining and ending the session, with room for
# a loaded 2-core machine.
BOUND_S = ADOPT_EVERY_S + QUIET_S + 20


def test_a_replica_killed_for_good_loses_nothing_and_the_other_takes_its_session_and_lease(
    tmp_path, edgefleet_home, postgres_database
):
    world = World(tmp_path, postgres_database, edgefleet_home, peers=True)
    cams = [Camera(world.broker, c) for c in CAMERAS]
    try:
        world.start("fleet-b")  # first: it holds the scheduler lease
        world.start("fleet-a")
        senders = send_in_background(cams, 300, 0.01)
        world.wait_stored(150)
        world.kill("fleet-b")  # SIGKILL mid-stream, never started again
        killed = time.monotonic()
        for t in senders:
            t.join()
        sent = accepted(cams)
        world.wait_stored(len(sent), timeout=BOUND_S)
        took = time.monotonic() - killed
        time.sleep(QUIET_S)  # a duplicate would land now
        assert sorted(world.stored()) == sorted(sent), "lost or duplicated"
        with world.library.session() as s:
            assert list(s.scalars(select(Replica.id))) == ["fleet-a"]  # the dead id's slot is released
        log = (tmp_path / "fleet-a.log").read_text()
        assert "replica fleet-b is gone" in log and "this replica now schedules rollouts" in log

        # Its session is gone from the broker: nothing is dealt to it any more.
        for t in send_in_background(cams, 50, 0.0):
            t.join()
        world.wait_stored(len(accepted(cams)), timeout=15)
        print(f"all {len(sent)} messages stored {took:.1f} s after the SIGKILL (bound {BOUND_S:.0f} s)")
    finally:
        for c in cams:
            c.close()
        world.close()
