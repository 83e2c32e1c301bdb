"""Frame sources, one plugin per file, chosen by the config's `type` key.

A source yields `Frame`s (encoded image bytes plus a key naming the frame) no faster than
its `max_fps`, stops when the stop event is set, and is told `done(frame)` once the frame's
result is safely in the outbox (the folder source deletes the file then).
"""

from __future__ import annotations

import importlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

# type -> "module:class"; imported only when a config uses it.
PLUGINS = {
    "folder": "edgefleet.agent.sources.folder:FolderFrameSource",
    "http": "edgefleet.agent.sources.http:HttpFrameSource",
    "ffmpeg": "edgefleet.agent.sources.ffmpeg:FfmpegFrameSource",
}


@dataclass(frozen=True)
class Frame:
    data: bytes
    key: str  # stable for the same frame (the folder source), else unique per run
    source: str


class RateLimit:
    """At most `max_fps` frames per second; waiting wakes early when stop is set."""

    def __init__(self, max_fps: float) -> None:
        self.interval = 1.0 / max_fps
        self._next = 0.0

    def wait(self, stop: threading.Event) -> bool:
        delay = self._next - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return False
        self._next = max(self._next, time.monotonic()) + self.interval
        return not stop.is_set()

    def ready(self) -> bool:
        """Non-blocking form for live streams: True if a frame may go now (then counts it)."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = max(self._next, now) + self.interval
        return True


class FrameSource(ABC):
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.errors = 0  # failures to get a frame at all (camera unreachable, ffmpeg died)

    @abstractmethod
    def frames(self, stop: threading.Event) -> Iterator[Frame]: ...

    def done(self, frame: Frame) -> None:  # noqa: B027 - optional hook; most sources keep nothing
        """The frame's outcome is stored; the source may forget it."""

    def close(self) -> None:  # noqa: B027 - optional hook; most sources hold nothing
        """Release processes or connections."""


def make_source(cfg) -> FrameSource:
    module, _, attr = PLUGINS[cfg.type].partition(":")
    return getattr(importlib.import_module(module), attr)(cfg)
