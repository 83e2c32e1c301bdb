"""`type = "ffmpeg"`: RTSP streams, V4L2 devices, files, anything ffmpeg opens.

ffmpeg samples the stream at `max_fps` (`-vf fps=`) and writes MJPEG to a pipe; frames are
split on the JPEG start/end markers (0xFF bytes inside JPEG data are stuffed, so an end
marker only ends a frame). If ffmpeg exits, it is restarted with backoff.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator

from edgefleet.agent.config import FfmpegSource
from edgefleet.agent.preprocess import MAX_FRAME_BYTES
from edgefleet.agent.sources import Frame, FrameSource, RateLimit
from edgefleet.errors import MissingToolError

log = logging.getLogger("edgefleet.agent.sources")
SOI, EOI = b"\xff\xd8", b"\xff\xd9"


def ffmpeg_command(cfg: FfmpegSource, binary: str = "ffmpeg") -> list[str]:
    cmd = [binary, "-nostdin", "-hide_banner", "-loglevel", "error"]
    if cfg.url.startswith("rtsp://"):
        cmd += ["-rtsp_transport", cfg.rtsp_transport]
    if cfg.input_format:
        cmd += ["-f", cfg.input_format]
    return cmd + [
        "-i",
        cfg.url,
        "-an",
        "-vf",
        f"fps={cfg.max_fps}",
        "-f",
        "image2pipe",
        "-c:v",
        "mjpeg",
        "-q:v",
        "4",
        "pipe:1",
    ]


def split_jpegs(buffer: bytearray) -> Iterator[bytes]:
    """Pop complete JPEGs off the front of `buffer`."""
    while True:
        start = buffer.find(SOI)
        if start < 0:
            del buffer[:-1]
            return
        end = buffer.find(EOI, start + 2)
        if end < 0:
            del buffer[:start]
            return
        yield bytes(buffer[start : end + 2])
        del buffer[: end + 2]


class FfmpegFrameSource(FrameSource):
    def __init__(self, cfg: FfmpegSource) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        binary = shutil.which("ffmpeg")
        if binary is None:
            raise MissingToolError(
                f"source {cfg.name!r} needs ffmpeg, which is not installed",
                "apt-get install ffmpeg, or use a folder/http source",
            )
        self.command = ffmpeg_command(cfg, binary)
        self._proc: subprocess.Popen | None = None
        self._run = uuid.uuid4().hex[:12]

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        counter = itertools.count()
        limit = RateLimit(self.cfg.max_fps)
        backoff = 1.0
        while not stop.is_set():
            self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            buffer = bytearray()
            got_any = False
            while not stop.is_set():
                chunk = self._proc.stdout.read1(65536)
                if not chunk:
                    break
                buffer += chunk
                if len(buffer) > 2 * MAX_FRAME_BYTES:
                    buffer.clear()  # no end marker in sight: garbage, start over
                for jpeg in split_jpegs(buffer):
                    got_any = True
                    # A file or fast input outruns `fps=`; frames over the cap are dropped, never queued.
                    if limit.ready():
                        yield Frame(jpeg, f"{self._run}-{next(counter)}", self.name)
            self.close()
            if stop.is_set():
                return
            self.errors += 1
            backoff = 1.0 if got_any else min(backoff * 2, 30.0)
            log.warning("ffmpeg for source %s exited; restarting in %.0f s", self.name, backoff)
            stop.wait(backoff)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
