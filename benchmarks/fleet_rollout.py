"""Benchmark: roll a package out to 1,000 and then 10,000 simulated devices.

Real parts: `edgefleet fleet serve` (SQLite; or `--replicas N` processes on a throwaway
PostgreSQL, each with its replica_id, sharing the device topics), mosquitto on loopback (plain
TCP here: the benchmark measures the fleet, not TLS handshakes), and simulated devices in this
process (paho clients driven by one selector loop, `--devices-per-connection` devices sharing one
connection). The simulated agents are light: on a job they publish the update states straight to
`committed` without downloading, then their retained status and telemetry every `--telemetry-s`
seconds. Prints, per fleet size: the rollout's timeline, time until the rollout succeeded
(every device committed, every wave's health gate passed), the fleet's CPU (share of one core,
all replicas together) and CPU per ingested MQTT message, peak RSS of the largest replica,
telemetry ingested per second during it (the offered load), and the ingest capacity: every
device sends `--burst` (3) telemetry messages at once, stored per second; and what reading
the finished rollout costs the fleet: its detail, and every deployment page by page.

    python benchmarks/fleet_rollout.py --devices 1000 10000 [--replicas 3] | tee results.jsonl
    python benchmarks/fleet_rollout.py --plot results.jsonl growth.png   # needs matplotlib

Progress goes to stderr while it runs: per stage (connect, rollout, burst) the devices connected
or committed, the messages ingested, the CPU seconds of the simulator, the fleet and the broker
so far, and the load average; each result line has those per stage (`stages`).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "agent_update"))
sys.path.insert(0, str(ROOT / "tests"))
from support.paging import all_items  # noqa: E402
from support.postgres import create_database, temporary_postgres  # noqa: E402

from edgefleet.net import free_port  # noqa: E402


class SimulatedFleet:
    """N simulated devices multiplexed over paho clients (`per_connection` devices each) on one
    selector loop; each device answers its jobs and sends telemetry. The broker runs without an
    ACL here, so one connection may speak for many devices (a real camera has its own)."""

    def __init__(
        self, port: int, ids: list[str], telemetry_s: float, per_connection: int = 100, host: str = "127.0.0.1"
    ) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []
        self.client_of: dict[str, mqtt.Client] = {}
        self.telemetry_s = telemetry_s
        self.version: dict[str, str] = {}
        # Telemetry due times: the dict holds each device's current one, the heap (due, device) every
        # one ever set; an entry that is no longer its device's due time is skipped when popped, so a
        # pump costs the messages due, not a pass over every device.
        self.next_telemetry: dict[str, float] = {}
        self.due: list[tuple[float, str]] = []
        self.sent_telemetry = 0
        self.published = 0  # every message the simulated devices sent (minus what the fleet received: lost)
        self.jobs_received = 0
        self.subscribed = 0  # connections whose job subscriptions the broker acknowledged
        for k in range(0, len(ids), per_connection):
            devices = ids[k : k + per_connection]
            c = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-conn-{k}", clean_session=True, userdata=devices
            )
            c.max_inflight_messages_set(1000)
            c.on_connect = self._on_connect
            c.on_message = self._on_message
            c.on_subscribe = self._on_subscribe
            c.connect(host, port, keepalive=600)
            self.sel.register(c.socket(), selectors.EVENT_READ, c)
            self.clients.append(c)
            for dev in devices:
                self.client_of[dev] = c
                self.version[dev] = "1"
                self._schedule(dev, time.time() + (len(self.version) % 100) / 100 * telemetry_s)
            if len(self.clients) % 20 == 0:
                self.pump(0)

    def _on_connect(self, c, devices, flags, rc, props) -> None:
        c.subscribe([(f"edgefleet/v1/{dev}/jobs/notify", 1) for dev in devices])
        for dev in devices:
            self._status(c, dev)

    def _on_subscribe(self, c, devices, mid, reason_codes, props) -> None:
        self.subscribed += 1

    def wait_subscribed(self, timeout: float = 120.0) -> None:
        """Until every connection may receive its devices' jobs (a job published before is lost)."""
        end = time.time() + timeout
        while self.subscribed < len(self.clients):
            if time.time() > end:
                raise TimeoutError(f"{len(self.clients) - self.subscribed} connections not subscribed")
            self.pump(0.1)

    def _status(self, c: mqtt.Client, dev: str) -> None:
        """The retained status an agent publishes when it connects and after it switched models."""
        status = {
            "schema": 1,
            "id": uuid.uuid4().hex,
            "state": "online",
            "model": {"name": "tiny", "version": self.version[dev]},
        }
        c.publish(f"edgefleet/v1/{dev}/status", json.dumps(status), qos=1, retain=True)
        self.published += 1

    def _on_message(self, c, devices, msg) -> None:
        dev = msg.topic.split("/")[2]
        job = json.loads(msg.payload)
        self.jobs_received += 1
        for state in ("idle", "downloading", "verifying", "staged", "switching", "probation", "committed"):
            c.publish(
                f"edgefleet/v1/{dev}/jobs/{job['job']}/update",
                json.dumps({"schema": 1, "id": uuid.uuid4().hex, "job": job["job"], "state": state, "detail": ""}),
                qos=1,
            )
        self.published += 7
        self.version[dev] = job["package"]["version"]
        self._status(c, dev)
        self._schedule(dev, time.time() + 0.5)

    def _schedule(self, dev: str, due: float) -> None:
        self.next_telemetry[dev] = due
        heapq.heappush(self.due, (due, dev))

    def telemetry(self, dev: str) -> None:
        body = {
            "schema": 1,
            "id": uuid.uuid4().hex,
            "model": {"name": "tiny", "version": self.version[dev]},
            "frames": {"ok": 50, "bad": 0, "error": 0},
            "alerts": {"person": 1},
            "latency_ms": {"count": 50, "p50": 4.0, "p95": 6.0},
            "drift": {"confidence": {"edges": [i / 10 for i in range(11)], "counts": [0] * 9 + [50]}},
        }
        self.client_of[dev].publish(f"edgefleet/v1/{dev}/telemetry", json.dumps(body), qos=1)
        self.sent_telemetry += 1
        self.published += 1

    def pump(self, seconds: float) -> None:
        end = time.time() + seconds
        while True:
            for key, _ in self.sel.select(timeout=0.05):
                key.data.loop_read(100)
            now = time.time()
            while self.telemetry_s and self.due and self.due[0][0] <= now:
                due, dev = heapq.heappop(self.due)
                if self.next_telemetry[dev] == due:
                    self._schedule(dev, now + self.telemetry_s)
                    self.telemetry(dev)
            for c in self.clients:
                if c.want_write():
                    c.loop_write()
            if now >= end:
                break
        for c in self.clients:
            c.loop_misc()

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_write()


def _cpu(procs: list[psutil.Process]) -> float:
    """CPU seconds (user + system) of the processes together."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


class Stages:
    """Where a run's time goes: per stage, its wall time and the CPU seconds of each party (the
    simulator is this process; the fleet's replicas; the broker), and while a stage runs one
    progress line on stderr every `every` seconds, so a long run can be read as it goes."""

    def __init__(self, devices: int, parties: dict[str, list[psutil.Process]], every: float = 5.0) -> None:
        self.devices, self.parties, self.every = devices, parties, every
        self.stages: dict[str, dict[str, float]] = {}
        self.name: str | None = None

    def _cpu(self) -> dict[str, float]:
        return {party: _cpu(procs) for party, procs in self.parties.items()}

    def start(self, name: str) -> None:
        self.end()
        self.name, self.t0, self.cpu0, self.shown = name, time.time(), self._cpu(), time.time()

    def show(self, **counts: object) -> None:
        """A progress line, when `every` seconds have passed since the last one."""
        now = time.time()
        if now - self.shown < self.every:
            return
        self.shown = now
        cpu = self._cpu()
        parts = [f"{k.replace('_', ' ')} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in counts.items()]
        spent = " ".join(f"{party} {cpu[party] - self.cpu0[party]:.1f}" for party in cpu)
        print(
            f"[{self.devices:,} devices] {self.name} {now - self.t0:6.1f} s | {', '.join(parts)} | "
            f"CPU s: {spent} | load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
            flush=True,
        )

    def end(self) -> None:
        if self.name is None:
            return
        cpu = self._cpu()
        self.stages[self.name] = {"s": round(time.time() - self.t0, 1)} | {
            f"cpu_{party}_s": round(cpu[party] - self.cpu0[party], 1) for party in cpu
        }
        self.name = None


def run(
    n: int,
    work: Path,
    package_v1: Path,
    package_v2: Path,
    key: Path,
    telemetry_s: float,
    per_connection: int,
    database_url: str | None = None,
    replicas: int = 1,
    max_rollout_s: float = 900.0,
    burst: int = 3,
    broker_inflight: int | None = None,
    max_jobs_in_progress: int | None = None,
) -> dict:
    from edgefleet.fleet import auth, registry
    from edgefleet.fleet.config import BrokerConfig, FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.db import Device
    from edgefleet.fleet.local_broker import MAX_INFLIGHT_MESSAGES

    work.mkdir(parents=True)
    mport, hports = free_port(), [free_port() for _ in range(replicas)]
    hport = hports[0]
    (work / "mosquitto.conf").write_text(
        f"listener {mport} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nlog_dest none\n"
        # as fleet/local_broker.py: the fleet acknowledges after commit, so batches need this many in flight
        f"max_inflight_messages {broker_inflight or MAX_INFLIGHT_MESSAGES}\n"
    )
    broker = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "mosquitto.conf")])
    config = FleetConfig(
        data_dir=work / "fleet",
        database_url=database_url,
        listen_port=hport,
        public_url=f"http://127.0.0.1:{hport}",
        signing_key=key,
        broker=BrokerConfig(port=mport),
        tick_seconds=0.5,
    )
    fleet = open_fleet(config)
    for p in (package_v1, package_v2):
        v = registry.upload_package(fleet, p)
        registry.set_approval(fleet, "tiny", v.version, "Approved")
    token = auth.create_token(fleet, "bench", "admin")
    ids = [f"sim-{i:05d}" for i in range(n)]
    with fleet.writer() as s, s.begin():
        s.add_all(
            [Device(id=d, target="x86_64", group="bench", tags=[], model_name="tiny", model_version="1") for d in ids]
        )
    fleet.readers.kw["bind"].dispose()
    (work / "download.secret").write_text(os.urandom(32).hex())
    servers = []
    for i, port in enumerate(hports):
        toml = work / f"fleet-{i}.toml"
        toml.write_text(
            f'format_version = 1\ndata_dir = "{work / "fleet"}"\nlisten_port = {port}\npublic_url = "http://127.0.0.1:{port}"\n'
            f'signing_key = "{key}"\ntick_seconds = 0.5\ndownload_secret_file = "{work / "download.secret"}"\n'
            + (f"max_jobs_in_progress = {max_jobs_in_progress}\n" if max_jobs_in_progress else "")
            + (f'database_url = "{database_url}"\nreplica_id = "fleet-{i}"\n' if database_url else "")
            + f"[broker]\nport = {mport}\n"
        )
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "edgefleet.cli", "fleet", "serve", "--config", str(toml)],
                stdout=open(work / f"fleet-{i}.log", "wb"),
                stderr=subprocess.STDOUT,
            )
        )
        time.sleep(2)  # the first one migrates the database
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{hport}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    for _ in range(300):
        try:
            http.get("/rollouts")
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    procs = [psutil.Process(server.pid) for server in servers]
    metrics = [
        httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", headers=http.headers, timeout=60) for port in hports
    ]

    def counted(counter: str) -> int:
        """An MQTT counter summed over the replicas (each counts what it ingested)."""
        return sum(m.get("/metrics").json()["mqtt"].get(counter, 0) for m in metrics)

    def summary(rid: int) -> dict:
        """The rollout with its install counts per state (its deployments are a list of their own)."""
        return http.get(f"/rollouts/{rid}").json()

    stages = Stages(n, {"sim": [psutil.Process()], "fleet": procs, "broker": [psutil.Process(broker.pid)]})
    result: dict = {
        "devices": n,
        "replicas": replicas,
        "database": "postgresql" if database_url else "sqlite",
        "load_before": round(os.getloadavg()[0], 1),
        "broker_inflight": broker_inflight or MAX_INFLIGHT_MESSAGES,
        "max_jobs_in_progress": max_jobs_in_progress or FleetConfig.model_fields["max_jobs_in_progress"].default,
    }
    try:
        t0 = time.time()
        stages.start("connect")
        sim = SimulatedFleet(mport, ids, telemetry_s, per_connection)
        sim.wait_subscribed()
        # Each device's status on connecting makes it online; its count is cheap to poll, the list is checked once.
        while time.time() - t0 < 300:
            statuses = counted("status")
            if statuses >= n and len(all_items(http, "/devices", status="online")) == n:
                break
            stages.show(subscribed=sim.subscribed * per_connection, statuses_ingested=statuses)
            sim.pump(1)
        result["connect_s"] = round(time.time() - t0, 1)
        stages.start("rollout")
        cpu0, t_start = _cpu(procs), time.time()
        ingested0, received0 = counted("telemetry"), counted("received")
        rid = http.post(
            "/rollouts",
            json={
                "group": "tiny",
                "version": "2",
                "selection": {"group": "bench"},
                "plan": {"canary_percent": 1, "waves": [10, 50, 100], "bake_time_s": 0, "wave_timeout_s": 600},
            },
        ).json()["id"]
        peak_rss, state = 0, "created"
        while state not in ("succeeded", "aborted") and time.time() - t_start < max_rollout_s:
            sim.pump(1)
            peak_rss = max(peak_rss, *(p.memory_info().rss for p in procs))
            rollout = summary(rid)
            state = rollout["state"]
            stages.show(
                state=f"{state}/wave {rollout['wave']}",
                committed=rollout["installs"].get("committed", 0),
                jobs_sent=sum(rollout["installs"].values()),
                jobs_received=sim.jobs_received,
                messages_ingested=counted("received") - received0,
            )
        elapsed = time.time() - t_start
        stages.end()
        events = all_items(http, f"/rollouts/{rid}/events")
        marks = [e for e in events if e["device"] is None]
        # Where the time went: each rollout transition, seconds after creation.
        result["timeline"] = [f"{e['event']}@{e['at'] - marks[0]['at']:.1f}" for e in marks]
        ingested, received = counted("telemetry") - ingested0, counted("received") - received0
        cpu = _cpu(procs) - cpu0
        result |= {
            "state": state,
            "committed": summary(rid)["installs"].get("committed", 0),
            "all_committed_s": round(elapsed, 1),
            "fleet_cpu_core_share": round(cpu / elapsed, 2),
            # What the rollout costs the fleet per MQTT message it ingested (job updates, status, telemetry).
            "messages_ingested": received,
            "fleet_cpu_ms_per_message": round(cpu / max(received, 1) * 1000, 3),
            "fleet_peak_rss_mb": round(peak_rss / 2**20, 1),
            "telemetry_ingested_per_s": round(ingested / elapsed, 1),
            "telemetry_sent": sim.sent_telemetry,
        }
        # What reading the rollout costs the fleet: its detail (counts only), then every deployment,
        # page by page (1,000 a page).
        cpu_detail, t_detail = _cpu(procs), time.time()
        http.get(f"/rollouts/{rid}").raise_for_status()
        result["detail_call_s"] = round(time.time() - t_detail, 3)
        result["detail_call_fleet_cpu_s"] = round(_cpu(procs) - cpu_detail, 3)
        cpu_detail, t_detail = _cpu(procs), time.time()
        result["deployments_listed"] = len(all_items(http, f"/rollouts/{rid}/deployments"))
        result["deployments_pages_s"] = round(time.time() - t_detail, 2)
        result["deployments_pages_fleet_cpu_s"] = round(_cpu(procs) - cpu_detail, 2)
        # Capacity: every device sends `burst` telemetry messages at once; time until all are stored.
        if burst:
            stages.start("burst")
            before = counted("telemetry")
            t_burst = time.time()
            for dev in ids:
                for _ in range(burst):
                    sim.telemetry(dev)
            stored = 0
            while stored < burst * n and time.time() - t_burst < 300:
                sim.pump(0.5)
                stored = counted("telemetry") - before
                stages.show(telemetry_stored=stored, of=burst * n)
            result["telemetry_capacity_per_s"] = round(stored / (time.time() - t_burst), 1)
            stages.end()
            # Once the burst is stored nothing is in flight: what the devices sent and the fleet never
            # received was lost on the way (a redelivered message counts twice in `received`).
            result["sim_published"], result["fleet_received"] = sim.published, counted("received")
        # What the broker itself dropped (queue over max_queued_messages), as the fleet reads it from $SYS.
        result["broker_dropped"] = metrics[0].get("/metrics").json()["mqtt"].get("broker_messages_dropped", 0)
        result["installs"] = summary(rid)["installs"]
        result["stages"] = stages.stages
        result["load_after"] = round(os.getloadavg()[0], 1)
        sim.close()
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        broker.terminate()
        broker.wait(timeout=10)
    return result


def plot(results_file: Path, png: Path) -> None:
    """The growth figure from result lines this benchmark printed (one JSON object per fleet size,
    any number of runs): time to all committed, and the fleet's and the broker's CPU seconds during
    the rollout, against devices, per setup, on log-log axes with a line of slope 1 (linear growth)
    through each setup's smallest run. A rollout that did not succeed in time is an x at the time
    it was stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(line) for line in results_file.read_text().splitlines() if line.startswith("{")]
    panels = {
        "time to all committed (s)": lambda r: r["all_committed_s"],
        "fleet CPU during the rollout (s)": lambda r: r["stages"]["rollout"]["cpu_fleet_s"],
        "broker CPU during the rollout (s)": lambda r: r["stages"]["rollout"]["cpu_broker_s"],
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 4))
    for setup in sorted({(r["replicas"], r["database"]) for r in runs}):
        mine = sorted((r for r in runs if (r["replicas"], r["database"]) == setup), key=lambda r: r["devices"])
        done = [r for r in mine if r["state"] == "succeeded"]
        database = "PostgreSQL" if setup[1] == "postgresql" else "SQLite"
        label = f"{setup[0]} replica{'s' if setup[0] > 1 else ''}, {database}"
        for ax, value in zip(axes, panels.values()):
            n = [r["devices"] for r in done]
            (line,) = ax.plot(n, [value(r) for r in done], "o-", label=label)
            ax.plot(n, [value(done[0]) * k / n[0] for k in n], ":", color=line.get_color(), label=f"{label}: linear")
            stopped = [r for r in mine if r["state"] != "succeeded"]
            if stopped:
                ax.plot(
                    [r["devices"] for r in stopped],
                    [value(r) for r in stopped],
                    "x",
                    color=line.get_color(),
                    label=f"{label}: stopped unfinished",
                )
    for ax, title in zip(axes, panels):
        ax.set(xscale="log", yscale="log", xlabel="simulated devices", title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--telemetry-s",
        type=float,
        default=60.0,
        help="telemetry interval of each simulated device (the agent's default is 60 s)",
    )
    parser.add_argument(
        "--devices-per-connection", type=int, default=100, help="simulated devices sharing one MQTT connection"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="fleet processes (more than 1: on PostgreSQL, each with its replica_id)"
    )
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite")
    parser.add_argument(
        "--max-rollout-s", type=float, default=900.0, help="stop waiting for a rollout after this long (and report it)"
    )
    parser.add_argument(
        "--burst", type=int, default=3, help="telemetry messages per device sent at once after the rollout (0: skip)"
    )
    parser.add_argument(
        "--broker-inflight",
        type=int,
        help="the broker's max_inflight_messages (default: fleet/local_broker.py's); each PUBACK walks that list",
    )
    parser.add_argument(
        "--max-jobs-in-progress", type=int, help="the fleet's max_jobs_in_progress (default: the fleet's own)"
    )
    parser.add_argument(
        "--plot",
        nargs=2,
        type=Path,
        metavar=("RESULTS", "PNG"),
        help="no run: draw the growth figure from saved result lines (needs matplotlib)",
    )
    args = parser.parse_args()
    if args.plot:
        plot(*args.plot)
        return
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(temporary_postgres()) if args.postgres or args.replicas > 1 else None
        bench(args, server)


def bench(args: argparse.Namespace, server: str | None) -> None:
    work = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    os.environ["EDGEFLEET_HOME"] = str(work / "home")
    from tiny_models import compile_tiny

    from edgefleet.signing import create_signing_key

    key = create_signing_key(work / "keys" / "fleet.key").path
    v1, v2 = compile_tiny(work / "pkg", "good", "1", key), compile_tiny(work / "pkg", "good", "2", key)
    results = []
    for n in args.devices:
        database = create_database(server, f"bench_{uuid.uuid4().hex[:8]}") if server else None
        results.append(
            run(
                n,
                work / f"n{n}",
                v1,
                v2,
                key,
                args.telemetry_s,
                args.devices_per_connection,
                database,
                args.replicas,
                args.max_rollout_s,
                args.burst,
                args.broker_inflight,
                args.max_jobs_in_progress,
            )
        )
        print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(
            f"{b['devices'] / a['devices']:.0f}x devices: {b['all_committed_s'] / a['all_committed_s']:.2f}x time to all committed, "
            f"{b['fleet_peak_rss_mb'] / a['fleet_peak_rss_mb']:.2f}x fleet RSS, {b['telemetry_capacity_per_s'] / max(a['telemetry_capacity_per_s'], 0.1):.2f}x telemetry capacity"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
