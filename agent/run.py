"""`edgefleet agent run`: frames -> local inference -> rules -> outbox -> MQTT.

Threads: one per frame source (bounded queue into the loop), the inference loop (the
caller's thread), the outbox sender, telemetry, the jobs worker (OTA updates) and the
health endpoint. A bad frame is counted and skipped; nothing a frame contains can stop the
loop. SIGTERM/SIGINT stop it cleanly: sources stop, stored messages get a short chance to
drain, a retained "offline" status is published, the outbox is closed.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.agent import payloads
from edgefleet.agent.config import AgentConfig, trusted_keys
from edgefleet.agent.metrics import AgentMetrics, luma_stats
from edgefleet.agent.model_slot import ActiveModel, ModelSlot
from edgefleet.agent.order import MessageOrder
from edgefleet.agent.outbox import Outbox
from edgefleet.agent.postprocess import interpret
from edgefleet.agent.preprocess import FrameRejected, decode_image, geometry, preprocess
from edgefleet.agent.rules import AlertRules
from edgefleet.agent.self_update import KINDS as AGENT_JOB_KINDS
from edgefleet.agent.self_update import AgentUpdateManager
from edgefleet.agent.sender import Sender
from edgefleet.agent.shadow import Observed, ShadowRunner
from edgefleet.agent.shadow_job import KINDS as SHADOW_JOB_KINDS
from edgefleet.agent.shadow_job import ShadowJobs
from edgefleet.agent.snapshots import SnapshotUploader
from edgefleet.agent.sources import Frame, FrameSource, make_source
from edgefleet.agent.transports import make_transport
from edgefleet.agent.update import UpdateManager, UpdateRefused, download_context, smoke_test
from edgefleet.contracts.jobs import JobProbation
from edgefleet.contracts.mqtt import SCHEMA
from edgefleet.contracts.shadow import SHADOW_FEATURE
from edgefleet.errors import UsageError

log = logging.getLogger("edgefleet.agent")


@dataclass
class RunOptions:
    max_frames: int | None = None  # stop after this many frames (ok + bad + error)
    idle_exit_s: float | None = None  # stop when no frame arrived for this long
    drain_s: float = 5.0  # on stop, wait this long for the broker to ack stored messages


@dataclass
class RunSummary:
    frames: dict = field(default_factory=dict)
    alerts: int = 0
    outbox: dict = field(default_factory=dict)
    restart: bool = False  # an agent update asks the launcher to start the agent again


def load_plain_tflite(cfg: AgentConfig) -> ActiveModel:
    """A .tflite that is not a package: preprocessing and labels come from the config."""
    from edgefleet.agent.runtime import TfliteModel
    from edgefleet.package import Manifest, now_utc, sha256_file
    from edgefleet.runtime_bundle import host_arch

    m = cfg.model
    path = Path(m.tflite)
    if not path.is_file():
        raise UsageError(f"model.tflite {path} does not exist", "fix model.tflite in the agent config")
    model = TfliteModel(path)
    labels = (
        [line.strip() for line in Path(m.labels_file).read_text().splitlines() if line.strip()] if m.labels_file else []
    )

    def spec(d: dict) -> dict:
        return {
            "name": d["name"],
            "shape": [int(x) for x in d["shape"]],
            "dtype": str(d["dtype"].__name__ if hasattr(d["dtype"], "__name__") else d["dtype"]),
        }

    manifest = Manifest(
        name=path.stem.replace(" ", "_")[:100] or "model",
        version="0",
        target={"name": "tflite", "tvm_target": None, "arch": host_arch()},
        runtime={"kind": "tflite", "library": path.name},
        inputs=[spec(d) for d in model.interpreter.get_input_details()],
        outputs=[spec(d) for d in model.interpreter.get_output_details()],
        preprocessing={
            "resize": m.resize,
            "color_order": m.color_order,
            "layout": m.layout,
            "scale": m.scale,
            "mean": m.mean,
            "std": m.std,
        },
        task=m.task,
        labels=labels,
        provenance={
            "source_uri": str(path),
            "source_sha256": sha256_file(path),
            "source_format": "tflite",
            "compiler": "none (plain .tflite)",
            "compiled_at": now_utc(),
        },
        verification={"status": "skipped", "reason": "plain .tflite from the agent config, not a package"},
        files={},
        signature={"key_id": "unsigned"},
    )
    return ActiveModel(model, manifest, None)


class Agent:
    def __init__(self, cfg: AgentConfig, options: RunOptions | None = None) -> None:
        self.cfg = cfg
        self.options = options or RunOptions()
        self.device = cfg.device_id
        self.state = Path(cfg.state_dir)
        for sub in ("packages", "journal"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        self.stop_event = threading.Event()
        self.metrics = AgentMetrics()
        self.rules = AlertRules(cfg.rules)
        self.slot = ModelSlot(self.state, trusted_keys(cfg))
        self.outbox = Outbox(
            self.state / "outbox.sqlite",
            max_messages=cfg.outbox.max_messages,
            max_bytes=cfg.outbox.max_bytes,
            max_snapshot_bytes=cfg.snapshots.max_pending_bytes,
        )
        self.snapshots = SnapshotUploader(cfg, self.outbox) if cfg.snapshots.enabled else None
        self.order = MessageOrder(self.state)  # (run, seq) on every message (agent/order.py)
        will = json.dumps(self.order.last_will(payloads.status(self.device, "offline"))).encode()
        self.transport = make_transport(cfg.mqtt, payloads.topic(self.device, "status"), will)
        self.transport.on_connect.append(self._publish_online)
        self.sender = Sender(self.outbox, self.transport, cfg.mqtt.inflight)
        self.sources: list[FrameSource] = [make_source(s) for s in cfg.sources]
        self.frames: queue.Queue[Frame] = queue.Queue(maxsize=4)
        self.jobs: queue.Queue[dict] = queue.Queue()
        self.updates = None
        self.shadow = ShadowRunner(
            self.device,
            lambda topic, body: self.outbox.put("telemetry", topic, self.order.stamp(body)),
            cfg.model.detection.model_dump(),
        )
        self.shadow_jobs: ShadowJobs | None = None  # with signed packages only, as model updates
        self.agent_updates = AgentUpdateManager(
            self.state,
            self.publish,
            trusted_keys(cfg),
            self.device,
            self.request_restart,
            active_model=lambda: self.slot.loaded.manifest if self.slot.loaded else None,
            download_context=download_context(cfg.fleet.ca_file),
        )
        self.restart = False
        self._agent_probation = JobProbation()
        self.health = None
        self._threads: list[threading.Thread] = []
        self.started_at = time.monotonic()

    # -- model ------------------------------------------------------------------------
    def _load_model(self) -> None:
        from edgefleet.agent.runtime import configure_pool
        from edgefleet.agent.variants import force_library

        configure_pool(self.cfg.runtime)  # before the first model starts the runtime's workers
        force_library(self.cfg.runtime.library)
        if self.cfg.model.tflite is not None:
            self.slot.load_plain(load_plain_tflite(self.cfg))
            return
        if self.slot.current_dir() is None:
            if self.cfg.model.package is None:
                # A newly enrolled camera: frames are dropped (counted as no_model) until the
                # fleet deploys its first model over the jobs topic.
                log.info("no model installed yet: waiting for the fleet to deploy one")
                return
            self.slot.install_initial(self.cfg.model.package)
        else:
            self.slot.reload()

    # -- MQTT ---------------------------------------------------------------------------
    def _publish_online(self) -> None:
        manifest = self.slot.loaded.manifest if self.slot.loaded else None
        self.transport.publish(
            payloads.topic(self.device, "status"),
            json.dumps(
                self.order.stamp(
                    payloads.status(self.device, "online", manifest, self.cfg.rules.labels, self._features())
                )
            ).encode(),
            retain=True,
        )

    def _features(self) -> list[str] | None:
        return [SHADOW_FEATURE] if self.shadow_jobs is not None else None

    def publish(self, topic_suffix: str, payload: dict) -> None:
        """QoS 1, ordered, through the outbox: what the update manager uses for job updates."""
        payload = {"schema": SCHEMA, **payload}
        payload.setdefault("id", str(uuid.uuid4()))
        self.outbox.put(
            "job" if topic_suffix.startswith("jobs/") else "event",
            payloads.topic(self.device, topic_suffix),
            self.order.stamp(payload),
        )

    def _on_notify(self, topic: str, data: bytes) -> None:
        try:
            payload = json.loads(data)
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            log.warning("ignoring malformed job notification on %s: %s", topic, exc)
            return
        self.jobs.put(payload)

    def _jobs_worker(self) -> None:
        while not self.stop_event.is_set():
            try:
                payload = self.jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                if payload.get("kind") in AGENT_JOB_KINDS:
                    self.agent_updates.handle_notify(payload)
                elif payload.get("kind") in SHADOW_JOB_KINDS:
                    if self.shadow_jobs is not None:
                        self.shadow_jobs.handle_notify(payload)
                elif self.updates is not None:
                    self.updates.handle_notify(payload)
            except Exception:  # an update failure must never take the camera down
                log.exception("update job failed")

    def _telemetry_loop(self) -> None:
        while not self.stop_event.wait(self.cfg.telemetry.interval_s):
            self.send_telemetry()

    def send_telemetry(self) -> None:
        loaded = self.slot.loaded
        manifest, library = (loaded.manifest, loaded.library) if loaded else (None, None)
        body = payloads.telemetry(self.device, self.metrics.window(), manifest, self.outbox.stats(), library)
        self.outbox.put("telemetry", payloads.topic(self.device, "telemetry"), self.order.stamp(body))

    # -- health -------------------------------------------------------------------------
    def health_status(self) -> dict:
        stats = self.outbox.stats()
        active = self.slot.loaded
        ok = active is not None and not self.stop_event.is_set()
        return {
            "status": "ok" if ok else "degraded",
            "device": self.device,
            "mqtt_connected": self.transport.connected.is_set(),
            "model": payloads.model_ref(active.manifest).wire() if active else None,
            "frames": dict(self.metrics.totals),
            "outbox": stats,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
        }

    def agent_health_problem(self) -> str | None:
        """Why this agent is not healthy yet (None: healthy): what a new agent release must show to be committed."""
        if not self.transport.connected.is_set():
            return "not connected to the broker"
        active = self.slot.loaded
        if active is None:
            return (
                "the installed model did not load"
                if self.slot.current_dir() is not None or self.cfg.model.tflite
                else None
            )
        try:
            smoke_test(active, self._agent_probation)
        except UpdateRefused as exc:
            return str(exc)
        except Exception as exc:  # a model that raises is as unhealthy as one that answers NaN
            return f"the model failed: {type(exc).__name__}: {exc}"[:300]
        return None

    def _refresh_gauges(self) -> None:
        self.metrics.refresh_gauges(self.outbox.stats(), self.transport.connected.is_set())

    # -- sources ------------------------------------------------------------------------
    def _pump(self, source: FrameSource) -> None:
        try:
            for frame in source.frames(self.stop_event):
                while not self.stop_event.is_set():
                    try:
                        self.frames.put(frame, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except Exception:
            log.exception("frame source %s failed", source.name)

    def _start_thread(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- the loop -----------------------------------------------------------------------
    def handle(self, frame: Frame) -> None:
        """One frame: decode, preprocess, infer, rules, outbox. Never raises for bad data."""
        start = time.perf_counter()
        by_source = {s.name: s for s in self.sources}
        try:
            image = decode_image(frame.data)
        except FrameRejected as exc:
            self.metrics.frame_bad(exc.reason)
            log.warning("skipped frame %s from %s: %s", frame.key, frame.source, exc.cause)
            self._done(by_source, frame)
            return
        active = self.slot.loaded
        if active is None:
            self.metrics.frame_bad("no_model")
            self._done(by_source, frame)
            return
        try:
            manifest = active.manifest
            batch = preprocess(image, manifest.inputs[0], manifest.preprocessing)
            model_start = time.perf_counter()
            outputs = active.model.run([batch])
            model_s = time.perf_counter() - model_start
            where = geometry(image.size, manifest.inputs[0], manifest.preprocessing)
            result = interpret(outputs, manifest, where, self.cfg.model.detection.model_dump())
            brightness, contrast = luma_stats(image)
            hits = self.rules.observe(result.scores, time.monotonic(), result.detections)
            thumb = self._thumbnail(image, hits)
            snap = self._snapshot(image, hits)
        except Exception as exc:  # a frame that breaks preprocessing, the model or a thumbnail is counted, not fatal
            self.metrics.frame_error()
            log.warning("inference failed on frame %s: %s", frame.key, str(exc)[:200])
            self._done(by_source, frame)
            return
        if hits:
            topic = payloads.topic(self.device, "alerts")
            bodies = [
                self.order.stamp(
                    payloads.alert(
                        self.device,
                        hit,
                        result,
                        active.manifest,
                        frame_key=frame.key,
                        source=frame.source,
                        latency_ms=model_s * 1000,
                        thumb=thumb,
                        snap=snap and snap[0],
                        rule=self.rules.describe(hit.label),
                    )
                )
                for hit in hits
            ]
            jpegs = [(snap[0].sha256, snap[1])] if snap else []
            for hit, added in zip(hits, self.outbox.put_many([("alert", topic, body) for body in bodies], jpegs)):
                if added:
                    self.metrics.alert(hit.label)
            if self.snapshots is not None:
                self.snapshots.wake.set()
        self._done(by_source, frame)
        total = time.perf_counter() - start
        self.metrics.frame_ok(model_s, total - model_s, brightness, contrast, result.top_label, result.top_score)
        # After the active model's alerts are stored: the candidate never delays or raises one.
        self.shadow.observe(Observed(image, batch, active, result, model_s, total, brightness, contrast))

    def _thumbnail(self, image, hits) -> dict | None:
        rules = self.cfg.rules
        if not hits or not rules.thumbnail:
            return None
        boxes = [d.px for hit in hits for d in hit.detections or []] if rules.draw_boxes else None
        return payloads.thumbnail(image, rules.thumbnail_max_side, rules.thumbnail_max_bytes, boxes)

    def _snapshot(self, image, hits):
        """The frame as the JPEG the alerts name ([snapshots]); one per frame, whatever the number of hits."""
        cfg = self.cfg.snapshots
        if not hits or self.snapshots is None:
            return None
        return payloads.snapshot(image, cfg.max_side, cfg.quality, cfg.max_bytes)

    @staticmethod
    def _done(by_source: dict, frame: Frame) -> None:
        source = by_source.get(frame.source)
        if source is not None:
            source.done(frame)

    def run(self) -> RunSummary:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            log.warning("running as root; the installed service runs as an unprivileged user")
        if self.cfg.model.tflite is None:
            # Before loading: an update interrupted mid-switch is rolled back first.
            self.updates = UpdateManager(
                self.state,
                self.slot,
                self.publish,
                self.slot.trusted_keys,
                self.device,
                download_context=download_context(self.cfg.fleet.ca_file),
            )
            self.updates.resume()
        self._load_model()
        if self.updates is None:
            log.info("over-the-air model updates are disabled: the model is a plain .tflite, not a signed package")
        else:
            # After the active model loaded: a shadow model held before a crash runs again or is dropped.
            self.shadow_jobs = ShadowJobs(
                self.state,
                self.slot,
                self.shadow,
                self.publish,
                self.slot.trusted_keys,
                self.device,
                download_context=download_context(self.cfg.fleet.ca_file),
            )
            self.shadow_jobs.resume()
        # After the model: a new agent release on probation proves itself with the model it had.
        agent_job = self.agent_updates.resume()
        self._agent_probation = (
            self.agent_updates.probation_settings() if agent_job == "health_check" else JobProbation()
        )
        self.transport.subscribe(payloads.topic(self.device, "jobs/notify"), self._on_notify)
        self._start_thread(self._jobs_worker, "jobs")
        if self.cfg.health.enabled:  # bind first: a busy port fails before anything connects
            from edgefleet.agent.health import HealthServer

            self.health = HealthServer(
                self.cfg.health.host,
                self.cfg.health.port,
                self.health_status,
                self.metrics.registry,
                self._refresh_gauges,
            )
            (self.state / "health.port").write_text(f"{self.health.port}\n")
        self.transport.start()
        self.sender.start()
        if self.snapshots is not None:
            self.snapshots.start()
        self._start_thread(self._telemetry_loop, "telemetry")
        if self.health is not None:
            self.health.start()
        if agent_job == "health_check":
            self._start_thread(self.agent_updates.probation, "agent-probation", self.agent_health_problem)
        for source in self.sources:
            self._start_thread(self._pump, f"source-{source.name}", source)
        handled = 0
        last_frame = time.monotonic()
        try:
            while not self.stop_event.is_set():
                self.shadow.report_if_due()
                try:
                    frame = self.frames.get(timeout=0.1)
                except queue.Empty:
                    if (
                        self.options.idle_exit_s is not None
                        and time.monotonic() - last_frame > self.options.idle_exit_s
                    ):
                        break
                    continue
                last_frame = time.monotonic()
                try:
                    self.handle(frame)
                except Exception:  # e.g. the disk is full: keep the camera running, say why
                    self.metrics.frame_error()
                    log.exception("could not store the result of frame %s", frame.key)
                handled += 1
                if self.options.max_frames is not None and handled >= self.options.max_frames:
                    break
        finally:
            final_outbox = self.shutdown()
        return RunSummary(dict(self.metrics.totals), self.metrics.totals["alerts"], final_outbox, self.restart)

    def request_stop(self, *_: object) -> None:
        self.stop_event.set()

    def request_restart(self) -> None:
        """Stop cleanly (drain the outbox) and exit for the launcher to start the release `current` names."""
        self.restart = True
        self.stop_event.set()

    def shutdown(self) -> dict:
        """Stop everything; returns the outbox's final stats."""
        self.stop_event.set()
        for source in self.sources:
            source.close()
        for thread in self._threads:
            if thread.name in ("telemetry", "jobs"):
                thread.join(timeout=10)
        self.shadow.stop()  # its last window is reported
        self.send_telemetry()
        if not self.sender.drain(self.options.drain_s):
            log.warning(
                "stopping with %d messages not yet acked; they are kept and sent on the next start",
                self.outbox.stats()["pending"],
            )
        self.sender.stop()
        if self.snapshots is not None:
            self.snapshots.stop()
        manifest = self.slot.loaded.manifest if self.slot.loaded else None
        self.transport.stop(
            payloads.topic(self.device, "status"),
            json.dumps(self.order.stamp(payloads.status(self.device, "offline", manifest))).encode(),
        )
        if self.health is not None:
            self.health.stop()
        stats = self.outbox.stats()
        self.outbox.close()
        return stats


def run_agent(cfg: AgentConfig, options: RunOptions | None = None) -> RunSummary:
    """Run until SIGTERM/SIGINT (or the limits in `options`); installs the signal handlers."""
    import signal

    agent = Agent(cfg, options)
    previous = {sig: signal.signal(sig, agent.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return agent.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
