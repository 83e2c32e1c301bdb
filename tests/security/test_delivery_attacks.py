"""Alert delivery under faults a camera network sees: cuts, broker kills and restarts, an agent
restarted during an outage. A real agent (in-process, its real outbox and MQTT client), real
mosquitto with the fleet's configuration, and a TCP relay that can cut every connection."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from agent_support import agent_config, drop_frame, jpeg, wait_until

from edgefleet.agent.config import parse_config
from edgefleet.agent.run import Agent, RunOptions
from edgefleet.net import free_port

pytestmark = pytest.mark.mqtt
DURABLE_AFTER_S = 0.05  # see test_broker_attacks.py and docs/security.md


class Relay:
    """127.0.0.1:<port> -> the broker; `cut()` resets every connection (a network cut)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            s.close()

    def cut(self) -> None:
        for pair in self.pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.pairs.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


def frames(sub) -> set[str]:
    return {m.json()["frame"].split(":")[0] for m in sub.messages}


def run_agent(cfg: dict) -> tuple[Agent, threading.Thread]:
    agent = Agent(parse_config(cfg), RunOptions(drain_s=5))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, thread


def stop_agent(agent: Agent, thread: threading.Thread) -> None:
    agent.request_stop()
    thread.join(15)


def test_network_cuts_mid_stream_lose_no_alert(tmp_path, mqtt_broker, agent_package):
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    relay = Relay((mqtt_broker.host, mqtt_broker.port))
    cfg = agent_config(tmp_path, mqtt_broker, agent_package)
    cfg["mqtt"]["port"] = relay.port
    agent, thread = run_agent(cfg)
    names = [f"f{i:03d}.jpg" for i in range(30)]
    try:
        for i, name in enumerate(names):
            drop_frame(tmp_path / "incoming", name, jpeg(240))
            if i % 10 == 5:
                relay.cut()
            time.sleep(0.05)
        wait_until(lambda: frames(alerts) == set(names), timeout=40)
    finally:
        stop_agent(agent, thread)
        relay.close()


def test_broker_sigkill_after_acknowledgement_with_the_fleet_offline(tmp_path, mqtt_broker, agent_package):
    fleet_side = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    fleet_side.close()  # the fleet is down; its persistent session queues
    agent, thread = run_agent(agent_config(tmp_path, mqtt_broker, agent_package))
    names = [f"f{i:03d}.jpg" for i in range(20)]
    try:
        for name in names[:10]:
            drop_frame(tmp_path / "incoming", name, jpeg(240))
        wait_until(lambda: agent.metrics.totals["ok"] == 10 and agent.outbox.stats()["pending"] == 0)
        time.sleep(DURABLE_AFTER_S)
        mqtt_broker.kill()
        for name in names[10:]:
            drop_frame(tmp_path / "incoming", name, jpeg(240))
        wait_until(lambda: agent.metrics.totals["ok"] == 20)
        mqtt_broker.start()
        wait_until(lambda: agent.outbox.stats()["pending"] == 0, timeout=30)
        fleet_side.client.reconnect()
        fleet_side.client.loop_start()
        wait_until(lambda: frames(fleet_side) == set(names), timeout=30)
    finally:
        stop_agent(agent, thread)


def test_agent_restarted_during_a_broker_outage_keeps_its_outbox(tmp_path, mqtt_broker, agent_package):
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    cfg = agent_config(tmp_path, mqtt_broker, agent_package)
    agent, thread = run_agent(cfg)
    names = [f"f{i:03d}.jpg" for i in range(10)]
    mqtt_broker.stop()
    try:
        for name in names:
            drop_frame(tmp_path / "incoming", name, jpeg(240))
        wait_until(lambda: agent.metrics.totals["ok"] == 10)
    finally:
        stop_agent(agent, thread)
    agent, thread = run_agent(cfg)  # a new agent over the same state directory
    try:
        mqtt_broker.start()
        wait_until(lambda: frames(alerts) == set(names), timeout=30)
    finally:
        stop_agent(agent, thread)


def test_broker_sigkill_mid_stream_with_the_fleet_online(tmp_path, mqtt_broker, agent_package):
    """The fleet's session is online, so the broker forwards in the pass that acknowledges: a SIGKILL
    mid-stream loses nothing; what was not yet acknowledged the agent's outbox sends again."""
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    agent, thread = run_agent(agent_config(tmp_path, mqtt_broker, agent_package))
    names = [f"f{i:03d}.jpg" for i in range(30)]
    try:
        for i, name in enumerate(names):
            drop_frame(tmp_path / "incoming", name, jpeg(240))
            if i == 15:
                mqtt_broker.kill()
                mqtt_broker.start()
            time.sleep(0.03)
        wait_until(lambda: frames(alerts) == set(names), timeout=40)
    finally:
        stop_agent(agent, thread)
