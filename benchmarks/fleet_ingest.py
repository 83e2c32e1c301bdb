"""Benchmark: MQTT telemetry ingest into a real `edgefleet fleet serve`, on SQLite and PostgreSQL.

Real parts: mosquitto on loopback (plain TCP and no per-change autosave: this measures the
fleet, not the broker's disk), `edgefleet fleet serve` as a subprocess, PostgreSQL started
here (initdb in a temp dir, as in the tests). Publishers: `--connections` paho clients in this
process, each sending QoS 1 telemetry for its share of `--devices` simulated devices, every
message with its own id, as fast as the broker acknowledges.

Per database it prints two runs:
  steady  every message published while the fleet runs; the fleet's CPU time (user + system,
          all its threads: paho, parsing, database) over the messages stored = CPU ms per message
  sigkill the fleet is SIGKILLed once a third is stored, restarted 1 s later; then every
          message the broker acknowledged to a camera is looked up in the database
  dead_replica  (--dead-replica, PostgreSQL) two replicas share the topics, one is SIGKILLed and
          returns only after its session expired (60 s): what mosquitto did with its share
and for each: messages, CPU ms/msg, stored msg/s, lost (acknowledged to the camera, not
stored) and duplicated rows (stored more than once).

    python benchmarks/fleet_ingest.py --messages 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


class Publishers:
    """`connections` paho clients; `send(n)` publishes n telemetry messages round-robin over devices."""

    def __init__(self, port: int, devices: list[str], connections: int) -> None:
        self.devices = devices
        self.clients = []
        for i in range(connections):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{i}")
            c.max_inflight_messages_set(200)
            c.connect("127.0.0.1", port)
            c.loop_start()
            self.clients.append(c)
        self.sent: list[tuple[mqtt.MQTTMessageInfo, str]] = []
        self._lock = threading.Lock()

    def _send(self, client: mqtt.Client, devices: list[str], n: int) -> None:
        for i in range(n):
            device, mid = devices[i % len(devices)], uuid.uuid4().hex
            body = {
                "schema": 1,
                "id": mid,
                "type": "telemetry",
                "device": device,
                "window_s": 60.0,
                "frames": {"ok": 600, "bad": 0, "error": 0},
                "latency_ms": {"count": 600, "p50": 8.1, "p95": 12.4},
                "alerts": {"person": 3},
                "model": {"name": "tiny", "version": "1"},
            }
            info = client.publish(f"edgefleet/v1/{device}/telemetry", json.dumps(body), qos=1)
            with self._lock:
                self.sent.append((info, mid))

    def send(self, n: int) -> None:
        per = [n // len(self.clients) + (i < n % len(self.clients)) for i in range(len(self.clients))]
        threads = [
            threading.Thread(target=self._send, args=(c, self.devices[i :: len(self.clients)], k))
            for i, (c, k) in enumerate(zip(self.clients, per))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def accepted(self, timeout: float = 300.0) -> list[str]:
        """The ids of every message the broker acknowledged (waits for the PUBACKs)."""
        deadline = time.monotonic() + timeout
        for info, _ in self.sent:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        return [mid for info, mid in self.sent if info.is_published()]

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


class Fleet:
    """`edgefleet fleet serve` on `database_url` with the broker on `port`; rows counted from here."""

    def __init__(
        self, work: Path, database_url: str, port: int, devices: list[str], replica: str = "", session_s: int = 3600
    ) -> None:
        from edgefleet.fleet.config import BrokerConfig, FleetConfig
        from edgefleet.fleet.core import open_fleet
        from edgefleet.fleet.db import Device
        from edgefleet.net import free_port

        self.work, self.replica = work, replica or f"fleet-{work.name}"
        self.config = FleetConfig(
            data_dir=work / self.replica,
            database_url=database_url,
            listen_port=free_port(),
            broker=BrokerConfig(port=port),
        )
        self.library = open_fleet(self.config)
        with self.library.writer() as s, s.begin():
            s.add_all([Device(id=d, target="x86_64", status="online") for d in devices])
        (work / f"{self.replica}.toml").write_text(
            f'data_dir = "{work / self.replica}"\ndatabase_url = "{database_url}"\n'
            f'listen_port = {self.config.listen_port}\nreplica_id = "{self.replica}"\n'
            f"[broker]\nport = {port}\nsession_expiry_s = {session_s}\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> psutil.Process:
        import httpx

        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefleet.cli",
                "fleet",
                "serve",
                "--config",
                str(self.work / f"{self.replica}.toml"),
            ],
            stdout=open(self.work / f"{self.replica}.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        for _ in range(600):
            try:
                httpx.get(f"http://127.0.0.1:{self.config.listen_port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        return psutil.Process(self.process.pid)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def stored(self) -> list[str]:
        from sqlalchemy import select

        from edgefleet.fleet.db import Telemetry

        with self.library.session() as s:
            return list(s.scalars(select(Telemetry.message_id)))

    def wait_stored(self, n: int, timeout: float = 600.0) -> float:
        from sqlalchemy import func, select

        from edgefleet.fleet.db import Telemetry

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.library.session() as s:
                if s.scalar(select(func.count(Telemetry.id))) >= n:
                    return time.monotonic()
            time.sleep(0.1)
        raise TimeoutError(f"fewer than {n} rows stored after {timeout} s")


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def losses(accepted: list[str], rows: list[str]) -> dict:
    counts = Counter(rows)
    return {
        "lost": len(set(accepted) - set(counts)),
        "duplicated_rows": sum(k - 1 for k in counts.values() if k > 1),
    }


def steady(work: Path, url: str, args) -> dict:
    devices = [f"sim-{i:05d}" for i in range(args.devices)]
    mosquitto, port = broker(work)
    fleet = Fleet(work, url, port, devices)
    proc = fleet.start()
    pubs = Publishers(port, devices, args.connections)
    try:
        cpu0, t0 = cpu_s(proc), time.monotonic()
        pubs.send(args.messages)
        accepted = pubs.accepted()
        t1 = fleet.wait_stored(len(accepted))
        cpu = cpu_s(proc) - cpu0
        rows = fleet.stored()
    finally:
        pubs.close()
        fleet.stop()
        mosquitto.terminate()
        mosquitto.wait(timeout=10)
    return {
        "run": "steady",
        "msgs": len(accepted),
        "fleet_cpu_ms_per_msg": round(1000 * cpu / len(accepted), 3),
        "stored_msg_per_s": round(len(accepted) / (t1 - t0), 1),
    } | losses(accepted, rows)


def sigkill(work: Path, url: str, args) -> dict:
    devices = [f"kill-{i:05d}" for i in range(args.devices)]
    mosquitto, port = broker(work)
    fleet = Fleet(work, url, port, devices)
    fleet.start()
    pubs = Publishers(port, devices, args.connections)
    try:
        t0 = time.monotonic()
        sender = threading.Thread(target=pubs.send, args=(args.messages,))
        sender.start()
        fleet.wait_stored(args.messages // 3)
        fleet.kill()
        time.sleep(1.0)
        fleet.start()
        sender.join()
        accepted = pubs.accepted()
        t1 = fleet.wait_stored(len(accepted))
        time.sleep(2.0)  # anything delivered twice would be stored by now
        rows = fleet.stored()
    finally:
        pubs.close()
        fleet.stop()
        mosquitto.terminate()
        mosquitto.wait(timeout=10)
    return {"run": "sigkill", "msgs": len(accepted), "stored_msg_per_s": round(len(accepted) / (t1 - t0), 1)} | losses(
        accepted, rows
    )


def dead_replica(work: Path, url: str, args) -> dict:
    """Two replicas share the topics; one is SIGKILLed and stays away past its session expiry
    (60 s). mosquitto deals messages to its offline session until then, and drops them after."""
    devices = [f"dead-{i:05d}" for i in range(args.devices)]
    mosquitto, port = broker(work)
    a = Fleet(work, url, port, devices, "fleet-a", session_s=60)
    b = Fleet(work, url, port, [], "fleet-b", session_s=60)
    a.start(), b.start()
    pubs = Publishers(port, devices, args.connections)
    n = args.messages // 4
    try:
        pubs.send(n)
        a.wait_stored(n)
        b.kill()
        pubs.send(n)
        accepted = pubs.accepted()
        time.sleep(5.0)
        waiting = len(accepted) - len(a.stored())  # dealt to fleet-b's session, not stored
        time.sleep(60 + 45 + 10)  # session expiry after keepalive (30 s x 1.5) ran out, and a margin
        b.start()
        time.sleep(10.0)
        rows = a.stored()
    finally:
        pubs.close()
        a.stop(), b.stop()
        mosquitto.terminate()
        mosquitto.wait(timeout=10)
    return {"run": "dead_replica", "msgs": len(accepted), "waiting_for_dead_replica": waiting} | losses(accepted, rows)


def broker(work: Path) -> tuple[subprocess.Popen, int]:
    """A fresh mosquitto per run: no session of an earlier run's fleet collects messages."""
    from edgefleet.net import free_port

    work.mkdir(parents=True)
    port = free_port()
    (work / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n"
        "max_inflight_messages 1000\nlog_dest none\n"
    )
    process = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")])
    time.sleep(0.5)
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--databases", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument(
        "--dead-replica", action="store_true", help="PostgreSQL: also a replica gone for good (~2.5 min)"
    )
    args = parser.parse_args()
    from support.postgres import create_database, temporary_postgres

    work = Path(tempfile.mkdtemp(prefix="edgefleet-ingest-bench-"))
    os.environ["EDGEFLEET_HOME"] = str(work / "home")
    try:
        for database in args.databases:
            if database == "sqlite":
                urls = [f"sqlite:///{work / name}.db" for name in ("steady", "sigkill")]
                runs = [steady(work / "sqlite-steady", urls[0], args), sigkill(work / "sqlite-kill", urls[1], args)]
            else:
                with temporary_postgres() as server:
                    runs = [
                        steady(work / "pg-steady", create_database(server, "steady"), args),
                        sigkill(work / "pg-kill", create_database(server, "sigkill"), args),
                        *(
                            [dead_replica(work / "pg-dead", create_database(server, "dead"), args)]
                            if args.dead_replica
                            else []
                        ),
                    ]
            for r in runs:
                print(json.dumps({"database": database} | r), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
