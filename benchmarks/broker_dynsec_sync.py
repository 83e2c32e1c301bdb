"""What `[broker] authorization = "dynsec"` costs: one fleet syncing N devices' rights into a real
mosquitto with the dynamic security plugin (fleet/broker_auth/dynsec.py), first on an empty
broker, then again with nothing to change, then enrolling one more device.

    .venv/bin/python benchmarks/broker_dynsec_sync.py --devices 200 1000 4000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from support.broker import Broker  # noqa: E402

from edgefleet.fleet.bridge import Bridge  # noqa: E402
from edgefleet.fleet.broker_auth.dynsec import Dynsec  # noqa: E402
from edgefleet.fleet.config import FleetConfig  # noqa: E402
from edgefleet.fleet.core import open_fleet  # noqa: E402
from edgefleet.fleet.db import Device  # noqa: E402
from edgefleet.fleet.ingest import Ingest  # noqa: E402


def measure(n: int, root: Path) -> str:
    broker = Broker(root / "broker", dynsec=True)
    broker.start()
    assert broker.dynsec_file is not None
    broker_cfg = {"host": broker.host, "port": broker.port, "ca_file": broker.pki.ca_file}
    broker_cfg |= {"cert_file": broker.fleet_cert, "key_file": broker.fleet_key, "authorization": "dynsec"}
    config = FleetConfig.model_validate({"data_dir": root / "fleet", "broker": broker_cfg})
    fleet = open_fleet(config)
    with fleet.writer() as s, s.begin():
        s.add_all([Device(id=f"cam-{i:05d}", target="x86_64") for i in range(n)])
    bridge = Bridge(config.broker, Ingest(fleet))
    bridge.start()
    try:
        dynsec = Dynsec(fleet, bridge, "fleet")
        times = []
        for step in (dynsec.sync, dynsec.sync, lambda: dynsec.add_device("cam-new")):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        size = broker.dynsec_file.stat().st_size
    finally:
        bridge.stop()
        broker.close()
    return (
        f"devices={n} first_sync_s={times[0]:.1f} resync_s={times[1]:.1f} "
        f"add_device_ms={times[2] * 1000:.0f} dynsec_json_bytes={size}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[200, 1000])
    for n in parser.parse_args().devices:
        with tempfile.TemporaryDirectory() as tmp:
            print(measure(n, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
