"""The camera agent itself, running on emulated aarch64 and armv7, alerts through a real broker on the host."""

from __future__ import annotations

import pytest

from edgefleet.cross.emulate import run_emulated
from emulated_agent import check_agent_alerts
from support.broker import mqtt_broker  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.qemu, pytest.mark.mqtt]


@pytest.mark.parametrize(("target", "sysroot_fixture"), [("rasp4b", "arm64_sysroot"), ("rasp3b", "armhf_sysroot")])
def test_emulated_agent_takes_frames_and_its_alert_reaches_the_host_broker(target, sysroot_fixture, request, mqtt_broker, cross_key, tmp_path):
    sysroot = request.getfixturevalue(sysroot_fixture)
    check_agent_alerts(target, lambda args: run_emulated(sysroot, ["python3", *args], capture=True, timeout=600), mqtt_broker, cross_key, tmp_path)
