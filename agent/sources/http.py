"""`type = "http"`: an HTTP(S) snapshot URL, the JPEG endpoint most IP cameras expose.

Basic auth with a password from a file or environment variable; a private CA for the camera
can be given. Responses larger than the frame cap are refused without reading them whole.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

from edgefleet.agent.config import HttpSource
from edgefleet.agent.preprocess import MAX_FRAME_BYTES
from edgefleet.agent.sources import Frame, FrameSource, RateLimit

log = logging.getLogger("edgefleet.agent.sources")


class HttpFrameSource(FrameSource):
    def __init__(self, cfg: HttpSource) -> None:
        super().__init__(cfg)
        self.cfg = cfg
        handlers: list = []
        if cfg.url.startswith("https://"):
            handlers.append(
                urllib.request.HTTPSHandler(
                    context=ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
                )
            )
        if cfg.username is not None:
            passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            passwords.add_password(None, cfg.url, cfg.username, cfg.password.read() if cfg.password else "")
            handlers.append(urllib.request.HTTPBasicAuthHandler(passwords))
        self._opener = urllib.request.build_opener(*handlers)
        self._run = uuid.uuid4().hex[:12]

    def fetch(self) -> bytes:
        with self._opener.open(self.cfg.url, timeout=self.cfg.timeout_s) as resp:
            return resp.read(MAX_FRAME_BYTES + 1)

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        limit = RateLimit(self.cfg.max_fps)
        for n in itertools.count():
            if not limit.wait(stop):
                return
            try:
                data = self.fetch()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.errors += 1
                log.warning("snapshot %s failed: %s", self.cfg.url, exc)
                continue
            yield Frame(data, f"{self._run}-{n}", self.name)
