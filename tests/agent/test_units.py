"""The agent's parts on their own: config, outbox, rules, outputs, model slot."""

from __future__ import annotations

import os
import shutil
import sqlite3

import numpy as np
import pytest

from edgefleet.agent.config import RulesConfig, parse_config
from edgefleet.agent.model_slot import ModelSlot
from edgefleet.agent.outbox import Outbox
from edgefleet.agent.postprocess import classification, detection
from edgefleet.agent.rules import AlertRules
from edgefleet.errors import BadInputError, PackageIntegrityError
from edgefleet.signing import create_signing_key, load_public_key


def minimal_config(**over) -> dict:
    config = {
        "version": 1,
        "state_dir": "/tmp/x",
        "mqtt": {
            "host": "broker",
            "device_id": "cam-1",
            "tls": {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "c.key"},
        },
        "sources": [{"type": "folder", "path": "/tmp/in"}],
        "rules": {"labels": ["person"]},
    }
    config.update(over)
    return config


class TestConfig:
    def test_minimal_config_gets_documented_defaults(self):
        cfg = parse_config(minimal_config())
        assert cfg.mqtt.port == 8883 and cfg.mqtt.transport == "paho" and cfg.outbox.max_messages == 10_000
        assert cfg.sources[0].type == "folder" and cfg.sources[0].delete_after
        assert cfg.runtime.threads == 1 and not cfg.runtime.spin  # measured on shared cores: docs/performance.md
        assert cfg.runtime.pool == "edgefleet"

    @pytest.mark.parametrize(
        "change, where",
        [
            ({"colour": "red"}, "colour"),
            (
                {
                    "mqtt": {
                        "host": "b",
                        "device_id": "cam-1",
                        "tls": {"ca_file": "a", "cert_file": "b", "key_file": "c"},
                        "password": "hunter2",
                    }
                },
                "mqtt.password",
            ),
            (
                {
                    "sources": [
                        {"type": "http", "url": "http://cam/snap.jpg", "username": "u", "password": "inline-secret"}
                    ]
                },
                "sources.0.http.password",
            ),
            ({"sources": [{"type": "webcam"}]}, "sources.0"),
            ({"runtime": {"threads": 0}}, "runtime.threads"),
            ({"runtime": {"spin_count": 0}}, "runtime.spin_count"),
            ({"runtime": {"pool": "openmp"}}, "runtime.pool"),
            (
                {
                    "mqtt": {
                        "host": "b",
                        "device_id": "../other",
                        "tls": {"ca_file": "a", "cert_file": "b", "key_file": "c"},
                    }
                },
                "mqtt.device_id",
            ),
        ],
    )
    def test_unknown_keys_inline_secrets_and_bad_values_are_refused(self, change, where):
        with pytest.raises(BadInputError) as err:
            parse_config(minimal_config(**change))
        assert where in err.value.cause

    def test_a_future_config_version_is_refused_clearly(self):
        with pytest.raises(BadInputError, match="version 2"):
            parse_config(minimal_config(version=2))

    def test_secrets_come_from_env_or_file(self, tmp_path, monkeypatch):
        secret_file = tmp_path / "pw"
        secret_file.write_text("from-file\n")
        by_file = parse_config(
            minimal_config(
                sources=[
                    {
                        "type": "http",
                        "url": "https://cam/s.jpg",
                        "username": "u",
                        "password": {"file": str(secret_file)},
                    }
                ]
            )
        )
        assert by_file.sources[0].password.read() == "from-file"
        monkeypatch.setenv("CAM_PW", "from-env")
        by_env = parse_config(
            minimal_config(
                sources=[{"type": "http", "url": "https://cam/s.jpg", "username": "u", "password": {"env": "CAM_PW"}}]
            )
        )
        assert by_env.sources[0].password.read() == "from-env"


class TestOutbox:
    def put_n(self, box: Outbox, kind: str, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            box.put(kind, f"t/{kind}", {"id": f"{kind}-{i}", "n": i})

    def test_order_and_acks_survive_reopening(self, tmp_path):
        box = Outbox(tmp_path / "o.sqlite")
        self.put_n(box, "alert", 5)
        first = box.pending()
        box.ack(first[0].seq)
        box.close()
        box = Outbox(tmp_path / "o.sqlite")
        assert [m.id for m in box.pending()] == ["alert-1", "alert-2", "alert-3", "alert-4"]

    def test_the_same_id_is_stored_once(self, tmp_path):
        box = Outbox(tmp_path / "o.sqlite")
        assert box.put("alert", "t", {"id": "a"})
        box.ack(box.pending()[0].seq)
        assert not box.put("alert", "t", {"id": "a"}), "a delivered id is still recognised"
        assert box.pending() == []

    def test_caps_drop_telemetry_before_alerts_and_report_it(self, tmp_path):
        box = Outbox(tmp_path / "o.sqlite", max_messages=10)
        self.put_n(box, "alert", 4)
        self.put_n(box, "telemetry", 6)
        self.put_n(box, "alert", 3, start=4)
        ids = [m.id for m in box.pending()]
        assert ids == [f"alert-{i}" for i in range(4)] + ["telemetry-3", "telemetry-4", "telemetry-5"] + [
            f"alert-{i}" for i in range(4, 7)
        ]
        self.put_n(box, "alert", 5, start=7)
        ids = [m.id for m in box.pending()]
        assert len(ids) == 10 and not any(i.startswith("telemetry") for i in ids) and ids[0] == "alert-2"
        assert box.stats()["dropped"] == {"telemetry": 6, "alert": 2}

    def test_messages_with_the_transport_are_not_dropped(self, tmp_path):
        box = Outbox(tmp_path / "o.sqlite", max_messages=10)
        self.put_n(box, "telemetry", 10)
        box.mark_handed(box.pending()[4].seq)
        self.put_n(box, "alert", 3)
        assert [m.id for m in box.pending()][:5] == [f"telemetry-{i}" for i in range(5)]

    def test_schema_version_is_recorded(self, tmp_path):
        Outbox(tmp_path / "o.sqlite").close()
        assert sqlite3.connect(tmp_path / "o.sqlite").execute("PRAGMA user_version").fetchone()[0] == 1


def test_rules_need_consecutive_hits_and_respect_the_cooldown():
    rules = AlertRules(RulesConfig(labels=["person", "car"], min_score=0.6, min_consecutive=2, cooldown_s=10))
    seen = [
        [h.label for h in rules.observe(scores, t)]
        for t, scores in enumerate(
            [
                {"person": 0.9},
                {"person": 0.9, "car": 0.7},
                {"person": 0.5, "car": 0.8},
                {"person": 0.9},
                {"person": 0.9},
                {"car": 0.9},
            ]
        )
    ]
    assert seen == [[], ["person"], ["car"], [], [], []]  # person run broken at t=2; at t=4 still cooling down
    assert rules.observe({"person": 0.99}, 11.5) == []  # t=5 broke the run: it starts again
    assert [h.label for h in rules.observe({"person": 0.99}, 12)] == ["person"]


def test_classification_softmaxes_logits():
    result = classification([np.array([[0.0, 4.0, 1.0]], dtype=np.float32)], ["a", "b", "c"])
    assert result.top_label == "b" and 0.9 < result.top_score < 1 and abs(sum(result.scores.values()) - 1) < 1e-6


def test_detection_reads_the_ssd_layout():
    boxes = np.array([[[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.9], [0, 0, 1, 1]]], dtype=np.float32)
    outputs = [
        boxes,
        np.array([[1, 0, 1]], dtype=np.float32),
        np.array([[0.8, 0.95, 0.7]], dtype=np.float32),
        np.array([2], dtype=np.float32),
    ]
    result = detection(outputs, ["TFLite_Detection_PostProcess", "x:1", "x:2", "x:3"], ["person", "car"])
    assert result.top_label == "person" and result.scores == {"car": pytest.approx(0.8), "person": pytest.approx(0.95)}
    assert len(result.detections) == 2, "count limits the valid rows"
    named = detection(
        [outputs[2], outputs[0], outputs[3], outputs[1]],
        ["detection_scores", "detection_boxes", "num_detections", "detection_classes"],
        ["person", "car"],
    )
    assert named.scores == result.scores


class TestModelSlot:
    def test_install_reload_and_layout(self, tmp_path, agent_package):
        pkg, trust = agent_package
        slot = ModelSlot(tmp_path / "state", [load_public_key(trust)])
        active = slot.install_initial(pkg)
        assert active.manifest.name == "brightness" and slot.model is active.model
        assert (tmp_path / "state/packages/current").is_symlink()
        assert slot.current_dir() == (tmp_path / "state/packages/brightness-1").resolve()
        assert len(slot.model.run([np.zeros((1, 3, 16, 16), np.float32)])[0].reshape(-1)) == 2

    def test_untrusted_or_tampered_packages_are_refused_and_the_old_model_stays(
        self, tmp_path, agent_package, edgefleet_home
    ):
        pkg, trust = agent_package
        stranger = create_signing_key(tmp_path / "other.key")
        with pytest.raises(PackageIntegrityError, match="signature"):
            ModelSlot(tmp_path / "s1", [stranger.public]).install_initial(pkg)
        slot = ModelSlot(tmp_path / "s2", [load_public_key(trust)])
        before = slot.install_initial(pkg)
        # Replace, not rewrite in place: the loaded library stays mapped, and truncating a mapped
        # file makes the process die of SIGBUS when TVM unloads it at exit.
        tampered = slot.current_dir() / "model.so.new"
        tampered.write_bytes(b"tampered")
        os.replace(tampered, slot.current_dir() / "model.so")
        with pytest.raises(PackageIntegrityError, match="sha256"):
            slot.reload()
        assert slot.active is before
        shutil.rmtree(slot.current_dir())
        assert slot.stage(pkg) == tmp_path / "s2/packages/brightness-1", (
            "a damaged or missing directory is re-extracted"
        )


def test_a_plain_tflite_runs_through_litert_with_the_configs_preprocessing(tmp_path, mqtt_broker):
    """model.tflite instead of a package: ai-edge-litert runs it, labels and NHWC preprocessing come from the config."""
    import importlib.util

    # The compiler tests' flatbuffer writer makes a real float32 CNN .tflite without TensorFlow.
    import sys
    from pathlib import Path

    from agent_support import agent_config, jpeg

    from edgefleet.agent.run import Agent
    from edgefleet.agent.sources import Frame

    spec = importlib.util.spec_from_file_location(
        "agent_tests_compiler_testlib", Path(__file__).parents[1] / "compiler" / "compiler_testlib.py"
    )
    testlib = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = testlib  # dataclasses look their module up
    spec.loader.exec_module(testlib)
    model = testlib.small_tflite_cnn(tmp_path / "cnn.tflite", classes=4, size=16)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    config = agent_config(
        tmp_path,
        mqtt_broker,
        (tmp_path, tmp_path),
        rules={"labels": ["a", "b", "c", "d"], "min_score": 0.0},
        model={"tflite": str(model), "labels_file": str(labels), "resize": [16, 16], "layout": "NHWC"},
    )
    agent = Agent(parse_config(config))
    agent._load_model()
    assert agent.slot.manifest.runtime.kind == "tflite" and agent.slot.manifest.inputs[0].shape == [1, 16, 16, 3]
    for i in range(3):
        agent.handle(Frame(jpeg(40 * i), f"k{i}", "folder"))
    assert agent.metrics.totals["ok"] == 3
    alerts = [m for m in agent.outbox.pending() if m.kind == "alert"]
    assert len(alerts) == 12, "min_score 0: every label alerts on every frame"
    import json

    first_frame = [json.loads(m.payload) for m in alerts if json.loads(m.payload)["frame"] == "k0"]
    assert sorted(a["label"] for a in first_frame) == ["a", "b", "c", "d"]
    assert sum(a["score"] for a in first_frame) == pytest.approx(1.0, abs=1e-3), (
        "the model's softmax scores, one per label"
    )
    assert first_frame[0]["model"] == {"name": "cnn", "version": "0"}
    agent.outbox.close()
