"""Over-the-air model updates on the device: a journaled state machine (journal format 1).

    idle -> downloading -> verifying -> staged -> switching -> probation -> committed
                 |             |          |          |             |
                 +-------------+----------+--> failed    +---------+--> rolling_back -> rolled_back

TRANSITIONS is the whole machine: (state, event) -> state over the closed EVENTS set. Each
new state is written to <state>/journal/current.json (atomically, fsynced) *before* its action
runs, and reported on edgefleet/v1/<device>/jobs/<job>/update. After a crash or power loss
`resume()` looks the journaled state up in RESUME: before the switch the job continues (the
download resumes with an HTTP Range request); from the switch on it rolls back; a state it
does not know, or a journal it cannot read, also means roll back. The previous package stays
in packages/ until the new one is committed.

Policy: a package must verify against the trusted keys (ModelSlot.stage), carry the name and
version the job names, and be newer than the active model, unless the job carries a rollback
authorization signed by a trusted (fleet) key for this device, this job and that version.
Finished job ids are remembered, so a redelivered or replayed job is not run twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("edgefleet.agent.update")

JOURNAL_FORMAT = 1
AGENT_STATES = ("idle", "downloading", "verifying", "staged", "switching", "probation", "committed", "rolling_back", "rolled_back", "failed")
TERMINAL_STATES = frozenset({"committed", "rolled_back", "failed"})
EVENTS = frozenset({"start", "already_installed", "downloaded", "verified", "switch", "switched", "probation_passed", "error", "rolled_back"})
TRANSITIONS: dict[tuple[str, str], str] = {
    ("idle", "start"): "downloading",
    ("idle", "already_installed"): "committed",
    ("idle", "error"): "failed",
    ("downloading", "downloaded"): "verifying",
    ("downloading", "error"): "failed",
    ("verifying", "verified"): "staged",
    ("verifying", "error"): "failed",
    ("staged", "switch"): "switching",
    ("staged", "error"): "failed",
    ("switching", "switched"): "probation",
    ("switching", "error"): "rolling_back",
    ("probation", "probation_passed"): "committed",
    ("probation", "error"): "rolling_back",
    ("rolling_back", "rolled_back"): "rolled_back",
    ("rolling_back", "error"): "failed",
}
# What resume() does with a journaled state. Not listed (or unreadable) means "roll_back".
RESUME: dict[str, str] = {
    "idle": "continue",
    "downloading": "continue",
    "verifying": "continue",
    "staged": "continue",
    "switching": "roll_back",
    "probation": "roll_back",
    "rolling_back": "roll_back",
    "committed": "finish",
    "rolled_back": "finish",
    "failed": "finish",
}
# Fault injection for tests: the agent SIGKILLs itself right after journaling this state.
FAULT_ENV = "EDGEFLEET_UPDATE_FAULT"


class UpdateRefused(Exception):
    """An action failed; the message is the reason reported to the fleet."""


def authorization_bytes(doc: dict[str, Any]) -> bytes:
    """The signed bytes of a rollback authorization: canonical JSON without the signature."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _parse_version(version: str) -> tuple[int, ...]:
    from edgefleet.package import parse_version

    return parse_version(version)


MAX_PACKAGE_BYTES = 2 * 1024**3  # as the fleet's upload cap (fleet/api.py)


def _check_size(size) -> None:
    """None is allowed in a job (nothing to download when the package is already active), checked again in _download."""
    if size is None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_PACKAGE_BYTES:
        raise ValueError(f"package size {size!r} is not a byte count in 1..{MAX_PACKAGE_BYTES}")


def _copy_capped(src, dst, size: int) -> None:
    """Copy at most the job's declared `size` bytes: a server sending more is refused, not stored."""
    written = dst.tell()
    while block := src.read(1 << 20):
        written += len(block)
        if written > size:
            raise UpdateRefused(f"the download is larger than the job's declared {size} bytes")
        dst.write(block)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _default_fault(state: str) -> None:
    if os.environ.get(FAULT_ENV) == state:
        os.kill(os.getpid(), signal.SIGKILL)


class UpdateManager:
    def __init__(
        self,
        state_dir: Path,
        slot,
        publish: Callable[[str, dict], None],
        trusted_keys,
        device_id: str,
        *,
        fault: Callable[[str], None] = _default_fault,
        download_timeout_s: float = 30.0,
        download_retries: int = 5,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.slot = slot
        self.publish = publish
        self.trusted_keys = trusted_keys
        self.device_id = device_id
        self.fault = fault
        self.download_timeout_s = download_timeout_s
        self.download_retries = download_retries
        self.journal_dir = self.state_dir / "journal"
        self.downloads = self.journal_dir / "downloads"
        self.downloads.mkdir(parents=True, exist_ok=True)
        self.current_path = self.journal_dir / "current.json"
        self.history_path = self.journal_dir / "history.jsonl"
        self._lock = threading.Lock()

    # ---- journal ---------------------------------------------------------------------------

    def _done_jobs(self) -> set[str]:
        if not self.history_path.exists():
            return set()
        done = set()
        for line in self.history_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line after power loss
            if entry.get("state") in TERMINAL_STATES:
                done.add(entry.get("job"))
        return done

    def _enter(self, job: dict, state: str, detail: str = "") -> None:
        """Journal `state`, record it in the history and report it; then the fault hook."""
        job["state"] = state
        job["detail"] = detail
        job["updated_at"] = time.time()
        _write_json_atomic(self.current_path, job)
        with open(self.history_path, "a") as fh:
            fh.write(json.dumps({"job": job["job"], "state": state, "detail": detail, "at": job["updated_at"]}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.publish(f"jobs/{job['job']}/update", {"schema": 1, "id": uuid.uuid4().hex, "job": job["job"], "state": state, "detail": detail, "package": {"name": job["package"]["name"], "version": job["package"]["version"]}})
        log.info("job %s: %s %s", job["job"], state, detail)
        self.fault(state)

    def _event(self, job: dict, event: str, detail: str = "") -> None:
        assert event in EVENTS, event
        new = TRANSITIONS.get((job["state"], event))
        if new is None:
            raise RuntimeError(f"update machine has no transition ({job['state']}, {event})")
        self._enter(job, new, detail)

    # ---- entry points ----------------------------------------------------------------------

    def handle_notify(self, payload: dict) -> str | None:
        """Run one job from edgefleet/v1/<device>/jobs/notify to its end; returns the final state."""
        with self._lock:
            job = self._accept(payload)
            if job is None:
                return None
            self._run(job)
            return job["state"]

    def resume(self) -> str | None:
        """At startup, before inference: finish or undo whatever the journal says was under way."""
        with self._lock:
            if not self.current_path.exists():
                return None
            try:
                job = json.loads(self.current_path.read_text())
                state = job["state"]
                job["package"]["name"], job["job"]  # noqa: B018 (required keys)
            except (ValueError, KeyError, TypeError):
                return self._recover_unreadable()
            action = RESUME.get(state, "roll_back")
            log.info("resuming job %s from %s: %s", job.get("job"), state, action)
            if action == "finish":
                self._finish(job)
            elif action == "continue":
                self._run(job)
            else:
                if (state, "error") in TRANSITIONS and TRANSITIONS[(state, "error")] == "rolling_back":
                    self._event(job, "error", f"interrupted in {state}; rolling back")
                elif state != "rolling_back":
                    self._enter(job, "rolling_back", f"unknown journaled state {state!r}; rolling back")  # the one way around the table
                self._run(job)
            return job["state"]

    def _recover_unreadable(self) -> str:
        """A journal we cannot read: point `current` back at the newest other verified package if `current` is broken."""
        log.error("update journal %s is unreadable; checking the active model", self.current_path)
        try:
            self.slot.reload()
        except Exception:
            previous = [p for p in sorted(self.slot.packages.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True) if p.is_dir() and not p.name.startswith(".")]
            for candidate in previous:
                try:
                    self.slot.point_current(candidate)
                    self.slot.reload()
                    break
                except Exception:
                    continue
        self.current_path.rename(self.current_path.with_name("current.unreadable.json"))
        return "rolled_back"

    # ---- the machine -----------------------------------------------------------------------

    def _accept(self, payload: dict) -> dict | None:
        try:
            job_id = str(payload["job"])
            kind = payload.get("kind", "install")
            package = payload["package"]
            name, version = str(package["name"]), str(package["version"])
            _parse_version(version)
            _check_size(package.get("size"))
            if package.get("url") is not None and not str(package["url"]).startswith(("http://", "https://")):
                raise ValueError("the package URL is not http(s)")  # no file://, ftp:// or data: from a job
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed job notification: %s", exc)
            return None
        from edgefleet.package import NAME_PATTERN  # job ids and names become file names under the state dir

        plain = all(re.fullmatch(NAME_PATTERN, v) for v in (job_id, name))
        if payload.get("schema") != 1 or kind not in ("install", "rollback") or not plain:
            log.warning("ignoring job notification with unknown schema, kind or names")
            return None
        if job_id in self._done_jobs():
            log.info("job %s already ran; ignoring the repeat", job_id)
            return None
        if self.current_path.exists():
            current = json.loads(self.current_path.read_text())
            if current.get("state") not in TERMINAL_STATES:
                log.warning("job %s arrived while job %s is %s; ignoring it", job_id, current.get("job"), current.get("state"))
                return None
        previous = self.slot.current_dir()
        job = {
            "format": JOURNAL_FORMAT,
            "job": job_id,
            "kind": kind,
            "package": {k: package.get(k) for k in ("name", "version", "sha256", "size", "url")},
            "authorization": payload.get("rollback_authorization"),
            "probation": payload.get("probation") or {},
            "previous": previous.name if previous else None,
            "target": f"{name}-{version}",
            "target_existed": (self.slot.packages / f"{name}-{version}").is_dir(),
        }
        self._enter(job, "idle", "")
        self._event(job, *self._start(job))
        return job

    def _start(self, job: dict) -> tuple[str, str]:
        active = self._active_manifest()
        name, version = job["package"]["name"], job["package"]["version"]
        if active is not None and (active.name, active.version) == (name, version):
            return "already_installed", f"{name} {version} is already active"
        return "start", ""

    def _active_manifest(self):
        """The active model's manifest; read from `current` on disk if the slot is not loaded yet."""
        try:
            return self.slot.manifest
        except Exception:
            pass
        from edgefleet.errors import EdgefleetError
        from edgefleet.package import read_manifest_unverified

        current = self.slot.current_dir()
        if current is None:
            return None
        try:
            return read_manifest_unverified(current)
        except EdgefleetError:
            return None

    def _run(self, job: dict) -> None:
        actions = {
            "idle": self._start,
            "downloading": self._download,
            "verifying": self._verify,
            "staged": lambda j: ("switch", ""),
            "switching": self._switch,
            "probation": self._probation,
            "rolling_back": self._roll_back,
        }
        while job["state"] not in TERMINAL_STATES:
            try:
                event, detail = actions[job["state"]](job)
            except UpdateRefused as exc:
                event, detail = "error", str(exc)
            except Exception as exc:  # anything unexpected in an action is a failed step, never a crash
                log.exception("update step %s failed", job["state"])
                event, detail = "error", f"{type(exc).__name__}: {exc}"[:300]
            self._event(job, event, detail)
        self._finish(job)

    def _download_path(self, job: dict) -> Path:
        return self.downloads / f"{job['job']}.tar.gz"

    def _download(self, job: dict) -> tuple[str, str]:
        if (self.slot.packages / job["target"]).is_dir():
            return "downloaded", "package already on the device"
        fetch(job["package"], self._download_path(job), self.download_timeout_s, self.download_retries)
        return "downloaded", ""

    def _verify(self, job: dict) -> tuple[str, str]:
        from edgefleet.agent.model_slot import verify_extracted
        from edgefleet.errors import EdgefleetError
        from edgefleet.package import open_package

        name, version = job["package"]["name"], job["package"]["version"]
        existing = self.slot.packages / job["target"]
        try:
            if existing.is_dir():
                manifest = verify_extracted(existing, self.trusted_keys).manifest
            else:
                with open_package(self._download_path(job), self.trusted_keys) as opened:
                    manifest = opened.manifest
        except EdgefleetError as exc:
            raise UpdateRefused(f"package refused: {exc.cause}") from None
        if (manifest.name, manifest.version) != (name, version):
            raise UpdateRefused(f"the package is {manifest.name} {manifest.version}, the job names {name} {version}")
        active = self._active_manifest()
        if active is not None and active.name == name and _parse_version(version) <= _parse_version(active.version):
            if not self._rollback_authorized(job):
                raise UpdateRefused(f"package {name} {version} is not newer than the active {active.version} and the job has no valid fleet-signed rollback authorization")
        if not existing.is_dir():
            try:
                self.slot.stage(self._download_path(job))
            except EdgefleetError as exc:
                raise UpdateRefused(f"package refused: {exc.cause}") from None
        self._download_path(job).unlink(missing_ok=True)
        return "verified", ""

    def _rollback_authorized(self, job: dict) -> bool:
        from edgefleet.signing import verify_signature

        doc = job.get("authorization")
        if job["kind"] != "rollback" or not isinstance(doc, dict):
            return False
        expected = {"schema": 1, "kind": "rollback", "device": self.device_id, "job": job["job"], "name": job["package"]["name"], "version": job["package"]["version"]}
        if any(doc.get(k) != v for k, v in expected.items()):
            return False
        try:
            verify_signature(authorization_bytes(doc), base64.b64decode(doc.get("signature", ""), validate=True), self.trusted_keys)
        except Exception:
            return False
        return True

    def _switch(self, job: dict) -> tuple[str, str]:
        self.slot.point_current(self.slot.packages / job["target"])
        self.slot.reload()
        return "switched", ""

    def _probation(self, job: dict) -> tuple[str, str]:
        active = self.slot.active
        if (active.manifest.name, active.manifest.version) != (job["package"]["name"], job["package"]["version"]):
            raise UpdateRefused("the active model is not the one this job installed")
        return "probation_passed", smoke_test(active, job["probation"])

    def _roll_back(self, job: dict) -> tuple[str, str]:
        previous = job.get("previous")
        if not previous or not (self.slot.packages / previous).is_dir():
            raise UpdateRefused("no previous package on the device to roll back to")
        self.slot.point_current(self.slot.packages / previous)
        self.slot.reload()
        return "rolled_back", f"back on {previous}"

    def _finish(self, job: dict) -> None:
        """Idempotent clean-up for a finished job (run again by resume after a crash)."""
        self._download_path(job).unlink(missing_ok=True)
        self._download_path(job).with_suffix(".part").unlink(missing_ok=True)
        active = self.slot.current_dir()
        protect = {active.name if active else None}
        if job["state"] == "committed":
            drop = job.get("previous")  # the new model is proven: the old one may go
        else:
            drop = None if job.get("target_existed") else job.get("target")  # undo only what this job added
            protect.add(job.get("previous"))
        if drop and drop not in protect:
            shutil.rmtree(self.slot.packages / drop, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(package: dict, dest: Path, timeout_s: float, retries: int) -> None:
    """Download a job's package to `dest`, resuming a partial download with an HTTP Range request,
    bounded by and checked against the job's size and sha256; UpdateRefused says why not."""
    url, size, sha = package.get("url"), package.get("size"), package.get("sha256")
    if not url:
        raise UpdateRefused("the job has no download URL and the package is not on the device")
    if size is None:
        raise UpdateRefused("the job declares no package size, so the download could not be bounded")
    part = dest.with_suffix(".part")
    for attempt in range(retries):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp, open(part, "ab" if have and resp.status == 206 else "wb") as fh:
                _copy_capped(resp, fh, size)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and size and have == size:
                break
            if 400 <= exc.code < 500:
                raise UpdateRefused(f"download refused: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            log.warning("download attempt %d failed: %s", attempt + 1, exc)
        time.sleep(min(8.0, 0.5 * 2**attempt))
    else:
        raise UpdateRefused(f"download failed after {retries} attempts")
    got = part.stat().st_size
    if got != size:
        part.unlink()
        raise UpdateRefused(f"downloaded {got} bytes, expected {size}")
    if sha is not None and _sha256(part) != sha:
        part.unlink()
        raise UpdateRefused("the download does not match the job's sha256")
    os.replace(part, dest)


def smoke_test(active, probation: dict) -> str:
    """The active model answers a neutral input `smoke_runs` times, with finite outputs, within the latency budget."""
    import numpy as np

    runs = int(probation.get("smoke_runs", 3))
    budget = float(probation.get("latency_budget_ms", 5000))
    inputs = [np.zeros(spec.shape, dtype=spec.dtype) for spec in active.manifest.inputs]
    worst = 0.0
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        outputs = active.model.run(inputs)
        worst = max(worst, (time.perf_counter() - start) * 1000)
        if not outputs or not all(np.all(np.isfinite(np.asarray(o, dtype=np.float64))) for o in outputs):
            raise UpdateRefused("the smoke test produced no output or non-finite values")
    if worst > budget:
        raise UpdateRefused(f"the smoke test took {worst:.0f} ms, over the {budget:.0f} ms budget")
    return f"smoke test {runs} runs, worst {worst:.1f} ms"
