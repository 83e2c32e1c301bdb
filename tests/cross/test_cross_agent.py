"""The camera agent itself, running on emulated aarch64 and armv7, alerts through a real broker on the host."""

from __future__ import annotations

import pytest
from emulated_agent import check_agent_alerts
from support.broker import mqtt_broker  # noqa: F401  (the fixture)

from edgefleet.cross.emulate import run_emulated

pytestmark = [pytest.mark.qemu, pytest.mark.mqtt]


# bookworm's Python 3.11 on both architectures; trixie's 3.13 on arm64 (requires-python says 3.10-3.13).
TRIXIE = pytest.param("rasp4b", "arm64_trixie_sysroot", marks=pytest.mark.slow)


@pytest.mark.parametrize(
    ("target", "sysroot_fixture"), [("rasp4b", "arm64_sysroot"), ("rasp3b", "armhf_sysroot"), TRIXIE]
)
def test_emulated_agent_takes_frames_and_its_alert_reaches_the_host_broker(
    target, sysroot_fixture, request, mqtt_broker, cross_key, tmp_path
):
    sysroot = request.getfixturevalue(sysroot_fixture)
    if sysroot_fixture == "arm64_trixie_sysroot":
        version = run_emulated(sysroot, ["python3", "-c", "import sys; print(sys.version_info[:2])"], capture=True)
        assert version.stdout.strip() == "(3, 13)"

    def run(args: list[str]):
        return run_emulated(sysroot, ["python3", *args], capture=True, timeout=600)

    check_agent_alerts(target, run, mqtt_broker, cross_key, tmp_path)
