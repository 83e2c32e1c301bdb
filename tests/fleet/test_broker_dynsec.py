"""Broker authorisation by mosquitto's dynamic security plugin (fleet/broker_auth/dynsec.py),
against a real mosquitto whose clients authenticate by certificate only: the fleet grants
rights over its own MQTT connection, no file is written and no signal sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_world import AckedCamera as Camera
from sqlalchemy import delete
from support.broker import Broker

from edgefleet.fleet.bridge import Bridge
from edgefleet.fleet.broker_auth.dynsec import Dynsec
from edgefleet.fleet.config import FleetConfig
from edgefleet.fleet.core import open_fleet
from edgefleet.fleet.db import Device
from edgefleet.fleet.devices import register_device, register_replica
from edgefleet.fleet.ingest import Ingest


@pytest.fixture
def dynsec_fleet(tmp_path: Path):
    broker = Broker(tmp_path / "broker", dynsec=True)
    broker.start()
    config = FleetConfig.model_validate(
        {
            "data_dir": tmp_path / "fleet",
            "broker": {
                "host": broker.host,
                "port": broker.port,
                "ca_file": broker.pki.ca_file,
                "cert_file": broker.fleet_cert,
                "key_file": broker.fleet_key,
                "authorization": "dynsec",
            },
        }
    )
    fleet = open_fleet(config)
    bridge = Bridge(config.broker, Ingest(fleet))
    bridge.start()
    fleet.broker_auth = Dynsec(fleet, bridge, "fleet")  # as fleet/service.py does
    yield broker, fleet
    bridge.stop()
    broker.close()


def test_devices_get_only_their_topics_and_a_removed_one_is_refused_at_once(dynsec_fleet):
    broker, fleet = dynsec_fleet
    register_replica(fleet, "fleet-b")
    for cam in ("cam-1", "cam-2"):
        register_device(fleet, cam, "x86_64")
    fleet.broker_auth.sync()
    fleet.broker_auth.sync()  # idempotent: everything exists already
    # The second replica reads the device topics through a shared subscription, as bridges do.
    replica = broker.subscriber("$share/g1/edgefleet/v1/+/status", identity="fleet-b")
    assert replica.granted == [1]
    cam1 = Camera(broker, "cam-1")
    assert cam1.publish("edgefleet/v1/cam-1/status") == 0
    assert cam1.publish("edgefleet/v1/cam-1/telemetry") == 0
    assert cam1.publish("edgefleet/v1/cam-2/status") == 135  # another device's topic
    assert cam1.publish("edgefleet/v1/cam-1/jobs/notify") == 135  # only the fleet sends jobs
    assert [m.topic for m in replica.wait_for(1)] == ["edgefleet/v1/cam-1/status"]
    # dynsec checks subscriptions when they are made: a camera cannot join the replicas' group.
    intruder = broker.subscriber("$share/g1/edgefleet/v1/+/status", identity="cam-2", client_id="cam-2")
    assert intruder.granted == [128]

    fleet.broker_auth.remove_device("cam-1")
    assert cam1.disconnected.wait(5), "the broker kept a removed device connected"
    fleet.broker_auth.remove_device("cam-1")  # idempotent: already gone
    cam1.close()
    again = Camera(broker, "cam-1")  # its certificate still verifies; it has no rights left
    assert again.publish("edgefleet/v1/cam-1/status") == 135
    again.close()
    assert not broker.root.joinpath("acl").exists()


def test_sync_adds_enrolled_and_drops_removed_devices(dynsec_fleet):
    broker, fleet = dynsec_fleet
    register_device(fleet, "cam-3", "x86_64")
    fleet.broker_auth.sync()
    cam3 = Camera(broker, "cam-3")
    assert cam3.publish("edgefleet/v1/cam-3/alerts") == 0
    register_device(fleet, "cam-4", "x86_64")
    fleet.broker_auth.add_device("cam-4")
    fleet.broker_auth.add_device("cam-4")  # idempotent
    cam4 = Camera(broker, "cam-4")
    assert cam4.publish("edgefleet/v1/cam-4/jobs/j1/update") == 0

    with fleet.writer() as s, s.begin():
        s.execute(delete(Device).where(Device.id == "cam-3"))
    fleet.broker_auth.sync()
    assert cam3.disconnected.wait(5)
    clients = fleet.broker_auth.run([{"command": "listClients", "verbose": False, "count": -1}])[0]["data"]["clients"]
    assert "cam-3" not in clients and {"cam-4", "fleet", "fleet-viewer"} <= set(clients)
    assert cam4.publish("edgefleet/v1/cam-4/status") == 0  # untouched by the sync
    cam3.close()
    cam4.close()


def test_dynsec_config_refuses_an_acl_file(tmp_path):
    with pytest.raises(ValueError, match="acl_file and mosquitto_pid_file are for"):
        FleetConfig.model_validate(
            {"data_dir": tmp_path, "broker": {"authorization": "dynsec", "acl_file": tmp_path / "acl"}}
        )
