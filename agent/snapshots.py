"""Uploads alert snapshots from the outbox to the fleet: PUT <fleet>/api/v1/devices/<id>/snapshots/<sha256>,
signed with the device's own key and certificate (edgefleet/device_auth.py).

A snapshot leaves the outbox when the fleet has it (201), or refuses it for good (400, 403,
404: wrong size or hash, not this device; counted as dropped). A 409 (no alert of this
device names it yet: the alert is still on its way through MQTT), a 5xx or no network are
tried again with backoff, up to MAX_BACKOFF_S apart, across agent restarts.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.error
import urllib.request

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.outbox import Outbox

log = logging.getLogger("edgefleet.agent.snapshots")
MAX_BACKOFF_S = 300.0
FOR_GOOD = (400, 401, 403, 404, 413, 422)


class SnapshotUploader(threading.Thread):
    def __init__(self, cfg: AgentConfig, outbox: Outbox) -> None:
        super().__init__(name="snapshots", daemon=True)
        self.cfg, self.outbox = cfg, outbox
        self.stop_event = threading.Event()
        self.wake = threading.Event()  # set when a new snapshot is stored
        tls = cfg.mqtt.tls
        self._key, self._cert = tls.key_file.read_bytes(), tls.cert_file.read_bytes()
        url = str(cfg.fleet.url).rstrip("/")
        self._base = f"{url}/api/v1/devices/{cfg.device_id}/snapshots/"
        ca = cfg.fleet.ca_file
        self._context = ssl.create_default_context(cafile=str(ca) if ca else None) if url.startswith("https") else None
        self.uploaded = 0

    def upload(self, sha256: str, data: bytes) -> int:
        """One try; the HTTP status, or 0 when the fleet could not be reached."""
        # Imported here: signing uploads needs cryptography, which an agent without snapshots never
        # loads (its memory: docs/agent.md).
        from edgefleet.device_auth import sign_headers

        headers = sign_headers(self._key, self._cert, self.cfg.device_id, sha256, int(time.time()))
        request = urllib.request.Request(
            self._base + sha256, data=data, method="PUT", headers=headers | {"Content-Type": "image/jpeg"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.snapshots.timeout_s, context=self._context) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            log.log(
                logging.WARNING if exc.code in FOR_GOOD else logging.INFO, "snapshot %s: HTTP %s", sha256[:12], exc.code
            )
            return int(exc.code)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            log.info("snapshot upload failed: %s", exc)
            return 0

    def step(self) -> bool:
        """Try the oldest due snapshot; False when none is due."""
        due = self.outbox.due_snapshot(time.time())
        if due is None:
            return False
        sha256, data, attempts = due
        status = self.upload(sha256, data)
        if 200 <= status < 300:
            self.outbox.snapshot_done(sha256)
            self.uploaded += 1
        elif status in FOR_GOOD:
            self.outbox.snapshot_done(sha256, dropped=True)
        else:
            self.outbox.snapshot_retry(sha256, time.time() + min(MAX_BACKOFF_S, 0.5 * 2**attempts))
        return True

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                if self.step():
                    continue
            except Exception:  # a failure here must not stop the camera; the snapshot stays stored
                log.exception("snapshot upload failed")
            self.wake.wait(0.5)
            self.wake.clear()

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        self.join(timeout=self.cfg.snapshots.timeout_s + 5)
