"""Alert snapshots on the camera: the JPEG's size and sha256, the outbox keeping snapshots with
their alerts (capped, counted when dropped), and the uploader's answers to the fleet's refusals,
against a real HTTP server."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from agent_support import wait_until
from PIL import Image


def test_a_snapshot_is_a_jpeg_of_at_most_max_side_and_max_bytes_named_by_its_sha256() -> None:
    from edgefleet.agent.payloads import snapshot

    frame = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8), "RGB")
    ref, data = snapshot(frame, 640, 90, 60_000)
    assert Image.open(io.BytesIO(data)).size == (640, 360) == (ref.width, ref.height)
    assert ref.size == len(data) <= 60_000 and ref.sha256 == hashlib.sha256(data).hexdigest()
    assert snapshot(frame, 640, 90, 2_000) is None  # cannot fit even at the lowest quality: no snapshot


def test_the_outbox_keeps_snapshots_with_their_alerts_and_drops_the_oldest_over_its_cap(tmp_path: Path) -> None:
    from edgefleet.agent.outbox import Outbox

    box = Outbox(tmp_path / "outbox.sqlite", max_snapshot_bytes=2500)
    for i in range(3):
        box.put_many([("alert", "t", {"id": f"a{i}"})], [(f"sha{i}", bytes(1000))])
    assert box.stats()["snapshots"] == 2 and box.stats()["dropped"] == {"snapshot": 1}
    assert box.due_snapshot(time.time())[0] == "sha1"  # the oldest kept
    box.snapshot_retry("sha1", time.time() + 60)
    assert box.due_snapshot(time.time())[:3:2] == ("sha2", 0)
    box.close()
    reopened = Outbox(tmp_path / "outbox.sqlite")  # kept across restarts
    assert reopened.due_snapshot(time.time() + 120)[::2] == ("sha1", 1)


class Fleet(ThreadingHTTPServer):
    """Answers each PUT with the next status of `answers` and records what it got."""

    def __init__(self, answers: list[int]) -> None:
        self.answers, self.got = answers, []

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
                server = self.server
                server.got.append((self.path, dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(server.answers.pop(0))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def uploader(tmp_path: Path, url: str):
    from support.broker import TestPKI

    from edgefleet.agent.config import parse_config
    from edgefleet.agent.outbox import Outbox
    from edgefleet.agent.snapshots import SnapshotUploader

    pki = TestPKI(tmp_path / "pki")
    cert, key = pki.issue("cam-1")
    cfg = parse_config(
        {
            "version": 1,
            "state_dir": str(tmp_path / "state"),
            "mqtt": {
                "host": "x",
                "device_id": "cam-1",
                "tls": {"ca_file": str(pki.ca_file), "cert_file": str(cert), "key_file": str(key)},
            },
            "fleet": {"url": url},
            "snapshots": {"enabled": True},
            "sources": [{"type": "folder", "path": str(tmp_path)}],
            "rules": {"labels": ["person"]},
        }
    )
    return SnapshotUploader(cfg, Outbox(tmp_path / "outbox.sqlite")), pki


def test_the_uploader_retries_until_the_fleet_accepts_and_drops_what_it_refuses_for_good(tmp_path: Path) -> None:
    from cryptography import x509

    from edgefleet.device_auth import verify_headers

    fleet = Fleet([409, 503, 201, 400])
    up, pki = uploader(tmp_path, f"http://127.0.0.1:{fleet.server_address[1]}")
    jpeg = b"\xff\xd8\xff" + bytes(500)
    sha = hashlib.sha256(jpeg).hexdigest()
    up.outbox.put_many([("alert", "t", {"id": "a"})], [(sha, jpeg), ("f" * 64, b"refused")])
    up.start()
    try:
        # 409 (alert not in yet) and 503 are retried with backoff; 201 takes it out; 400 drops the other.
        wait_until(lambda: up.outbox.stats()["snapshots"] == 0, timeout=20)
    finally:
        up.stop()
    # Oldest due first: sha 409, other 503, then (both due again) sha 201, other 400.
    assert [p.rsplit("/", 1)[1] for p, _, _ in fleet.got] == [sha, "f" * 64, sha, "f" * 64]
    assert up.uploaded == 1 and up.outbox.stats()["dropped"] == {"snapshot": 1}
    path, headers, body = next(g for g in fleet.got if g[0].endswith(sha))
    assert path == f"/api/v1/devices/cam-1/snapshots/{sha}" and body == jpeg
    ca = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
    verify_headers({k.title(): v for k, v in headers.items()}, ca, "cam-1", sha, time.time(), None)
