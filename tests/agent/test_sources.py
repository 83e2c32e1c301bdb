"""Frame source plugins against real inputs: a local HTTP camera, real ffmpeg, a folder."""

from __future__ import annotations

import base64
import io
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from agent_support import drop_frame, jpeg
from PIL import Image

from edgefleet.agent.config import parse_config
from edgefleet.agent.sources import make_source
from edgefleet.agent.sources.ffmpeg import split_jpegs
from edgefleet.errors import MissingToolError


def source_config(source: dict):
    return parse_config(
        {
            "version": 1,
            "state_dir": "/tmp/unused",
            "rules": {"labels": ["x"]},
            "sources": [source],
            "mqtt": {"host": "h", "device_id": "cam-1", "tls": {"ca_file": "a", "cert_file": "b", "key_file": "c"}},
        }
    ).sources[0]


def take(source, n: int, timeout: float = 20.0) -> tuple[list, float]:
    stop = threading.Event()
    frames = []
    start = time.monotonic()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        for frame in source.frames(stop):
            frames.append(frame)
            if len(frames) == n:
                break
    finally:
        stop.set()
        timer.cancel()
        source.close()
    return frames, time.monotonic() - start


class Camera(BaseHTTPRequestHandler):
    """A snapshot endpoint with basic auth, like an IP camera's /snapshot.jpg."""

    hits = 0

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"admin:s3cret").decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="cam"')
            self.end_headers()
            return
        Camera.hits += 1
        body = jpeg(200 if Camera.hits % 2 else 30)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_http_snapshot_source_authenticates_with_an_env_secret_and_caps_the_rate(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CAM_PASSWORD", "s3cret")
    try:
        cfg = source_config(
            {
                "type": "http",
                "url": f"http://127.0.0.1:{server.server_address[1]}/snapshot.jpg",
                "username": "admin",
                "password": {"env": "CAM_PASSWORD"},
                "max_fps": 10.0,
            }
        )
        frames, elapsed = take(make_source(cfg), 4)
    finally:
        server.shutdown()
    assert len(frames) == 4 and len({f.key for f in frames}) == 4
    assert Image.open(io.BytesIO(frames[0].data)).size == (64, 48)
    assert elapsed >= 0.29, "10 fps cap: 4 frames take at least 3 intervals"


def test_http_source_survives_an_unreachable_camera():
    cfg = source_config({"type": "http", "url": "http://127.0.0.1:9/none.jpg", "max_fps": 20.0, "timeout_s": 0.5})
    source = make_source(cfg)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    assert list(source.frames(stop)) == []
    assert source.errors >= 2


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")
def test_ffmpeg_source_reads_a_stream_at_the_capped_rate():
    # lavfi's test pattern stands in for an RTSP camera: ffmpeg opens both the same way.
    cfg = source_config(
        {"type": "ffmpeg", "url": "testsrc=size=96x64:rate=30", "input_format": "lavfi", "max_fps": 5.0}
    )
    frames, elapsed = take(make_source(cfg), 4)
    assert [Image.open(io.BytesIO(f.data)).size for f in frames] == [(96, 64)] * 4
    assert elapsed >= 0.55, "5 fps cap: 4 frames take at least 3 intervals"


def test_ffmpeg_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(MissingToolError, match="ffmpeg"):
        make_source(source_config({"type": "ffmpeg", "url": "rtsp://cam/stream"}))


def test_jpeg_splitting_keeps_partial_frames_for_the_next_read():
    a, b = jpeg(10), jpeg(250)
    buffer = bytearray(b"junk" + a + b[:100])
    assert list(split_jpegs(buffer)) == [a]
    buffer += b[100:]
    assert list(split_jpegs(buffer)) == [b] and buffer == bytearray()


def test_folder_source_skips_files_still_being_written(tmp_path):
    incoming = tmp_path / "in"
    incoming.mkdir()
    (incoming / "late.jpg.part").write_bytes(b"half")
    (incoming / ".hidden.jpg").write_bytes(b"x")
    drop_frame(incoming, "b.jpg", jpeg(1))
    drop_frame(incoming, "a.jpg", jpeg(2))
    source = make_source(source_config({"type": "folder", "path": str(incoming), "max_fps": 100.0}))
    frames, _ = take(source, 2)
    assert [f.key.split(":")[0] for f in frames] == ["a.jpg", "b.jpg"]
    source.done(frames[0])
    assert not (incoming / "a.jpg").exists() and (incoming / "b.jpg").exists()
