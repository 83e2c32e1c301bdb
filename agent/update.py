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
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from edgefleet.contracts.jobs import JobDocument, JobPackage, JobProbation, RollbackAuthorization
from edgefleet.contracts.journal import HistoryEntry, JournalBase, UpdateJournal
from edgefleet.contracts.mqtt import TERMINAL_STATES, UPDATE_STATES, JobUpdate, ModelRef

log = logging.getLogger("edgefleet.agent.update")

AGENT_STATES = UPDATE_STATES
EVENTS = frozenset(
    {
        "start",
        "already_installed",
        "downloaded",
        "verified",
        "switch",
        "switched",
        "probation_passed",
        "error",
        "rolled_back",
    }
)
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


def _parse_version(version: str) -> tuple[int, ...]:
    from edgefleet.package import parse_version

    return parse_version(version)


def _copy_capped(src, dst, size: int) -> None:
    """Copy at most the job's declared `size` bytes: a server sending more is refused, not stored."""
    written = dst.tell()
    while block := src.read(1 << 20):
        written += len(block)
        if written > size:
            raise UpdateRefused(f"the download is larger than the job's declared {size} bytes")
        dst.write(block)


def _write_json_atomic(path: Path, data: JournalBase) -> None:
    write_atomic(path, json.dumps(data.model_dump(mode="json", by_alias=True), sort_keys=True))


def write_atomic(path: Path, text: str) -> None:
    """Write, fsync, rename, fsync the folder: after a power cut the file is the old or the new text."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
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
    KINDS: tuple[str, ...] = ("install", "rollback")  # the job kinds it runs
    RESUME: dict[str, str] = RESUME

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
        download_context: ssl.SSLContext | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.slot = slot
        self.active_slot = slot  # whose model the version rules compare with (the shadow jobs install beside it)
        self.publish = publish
        self.trusted_keys = trusted_keys
        self.device_id = device_id
        self.fault = fault
        self.download_timeout_s = download_timeout_s
        self.download_retries = download_retries
        self.download_context = download_context
        self.journal_dir = self.state_dir / "journal"
        self.downloads = self.journal_dir / "downloads"
        self.downloads.mkdir(parents=True, exist_ok=True)
        self.current_path = self.journal_dir / "current.json"
        self.history_path = self.journal_dir / "history.jsonl"
        self._lock = threading.Lock()

    # ---- journal ---------------------------------------------------------------------------

    def _done_jobs(self) -> set[str]:
        return done_jobs(self.history_path)

    def _enter(self, job: UpdateJournal, state: str, detail: str = "") -> None:
        """Journal `state`, record it in the history and report it; then the fault hook."""
        job.state, job.detail, job.updated_at = state, detail, time.time()
        _write_json_atomic(self.current_path, job)
        append_history(self.history_path, job)
        self.publish(f"jobs/{job.job}/update", job_update(job))
        log.info("job %s: %s %s", job.job, state, detail)
        self.fault(state)

    def _event(self, job: UpdateJournal, event: str, detail: str = "") -> None:
        assert event in EVENTS, event
        new = TRANSITIONS.get((job.state, event))
        if new is None:
            raise RuntimeError(f"update machine has no transition ({job.state}, {event})")
        self._enter(job, new, detail)

    # ---- entry points ----------------------------------------------------------------------

    def handle_notify(self, payload: dict) -> str | None:
        """Run one job from edgefleet/v1/<device>/jobs/notify to its end; returns the final state."""
        with self._lock:
            doc = self._parse(payload)
            if doc is None:
                return None
            job = self._begin(doc)
            self._run(job)
            return job.state

    def resume(self) -> str | None:
        """At startup, before inference: finish or undo whatever the journal says was under way."""
        with self._lock:
            if not self.current_path.exists():
                return None
            try:
                job = UpdateJournal.model_validate_json(self.current_path.read_text())
            except ValueError:
                return self._recover_unreadable()
            state = job.state
            action = self.RESUME.get(state, "roll_back")
            log.info("resuming job %s from %s: %s", job.job, state, action)
            if action == "finish":
                self._finish(job)
            elif action == "continue":
                self._run(job)
            else:
                if (state, "error") in TRANSITIONS and TRANSITIONS[(state, "error")] == "rolling_back":
                    self._event(job, "error", f"interrupted in {state}; rolling back")
                elif state != "rolling_back":
                    why = f"interrupted in {state}" if state in AGENT_STATES else f"unknown journaled state {state!r}"
                    self._enter(job, "rolling_back", f"{why}; rolling back")  # the one way around the table
                self._run(job)
            return job.state

    def _recover_unreadable(self) -> str:
        """A journal we cannot read: point `current` back at the newest other verified package if `current` is broken."""
        log.error("update journal %s is unreadable; checking the active model", self.current_path)
        try:
            self.slot.reload()
        except Exception:
            previous = [
                p
                for p in sorted(self.slot.packages.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
                if p.is_dir() and not p.name.startswith(".")
            ]
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

    def _parse(self, payload: dict) -> JobDocument | None:
        """The job document if this manager runs it now: well formed, one of its KINDS, plain names,
        not run before, no other job under way; None (logged) otherwise."""
        from edgefleet.package import NAME_PATTERN  # job ids and names become file names under the state dir

        try:
            doc = JobDocument.model_validate(payload)
            _parse_version(doc.package.version)
        except ValueError as exc:  # ValidationError included
            log.warning("ignoring malformed job notification: %s", str(exc)[:500])
            return None
        plain = all(re.fullmatch(NAME_PATTERN, v) for v in (doc.job, doc.package.name))
        if doc.kind not in self.KINDS or not plain:
            log.warning("ignoring job notification with unknown kind or names")
            return None
        if doc.job in self._done_jobs():
            log.info("job %s already ran; ignoring the repeat", doc.job)
            return None
        current = self._current()
        if current is not None and current.state not in TERMINAL_STATES:
            log.warning("job %s arrived while job %s is %s; ignoring it", doc.job, current.job, current.state)
            return None
        return doc

    def _begin(self, doc: JobDocument) -> UpdateJournal:
        """Journal an accepted job as idle and take its first step."""
        previous = self.slot.current_dir()
        target = f"{doc.package.name}-{doc.package.version}"
        job = UpdateJournal(
            job=doc.job,
            kind=doc.kind,
            package=doc.package,
            authorization=doc.rollback_authorization,
            probation=doc.probation,
            previous=previous.name if previous else None,
            target=target,
            target_existed=(self.slot.packages / target).is_dir(),
        )
        self._enter(job, "idle", "")
        self._event(job, *self._start(job))
        return job

    def _current(self) -> UpdateJournal | None:
        """The journaled job, or None; an unreadable journal raises (resume() sets it aside at startup)."""
        try:
            return UpdateJournal.model_validate_json(self.current_path.read_text())
        except FileNotFoundError:
            return None

    def _start(self, job: UpdateJournal) -> tuple[str, str]:
        active = self._active_manifest()
        name, version = job.package.name, job.package.version
        if active is not None and (active.name, active.version) == (name, version):
            return "already_installed", f"{name} {version} is already active"
        return "start", ""

    def _active_manifest(self):
        """The active model's manifest; read from `current` on disk if the slot is not loaded yet."""
        try:
            return self.active_slot.manifest
        except Exception:
            pass
        from edgefleet.errors import EdgefleetError
        from edgefleet.package import read_manifest_unverified

        current = self.active_slot.current_dir()
        if current is None:
            return None
        try:
            return read_manifest_unverified(current)
        except EdgefleetError:
            return None

    def _run(self, job: UpdateJournal) -> None:
        actions = {
            "idle": self._start,
            "downloading": self._download,
            "verifying": self._verify,
            "staged": lambda j: ("switch", ""),
            "switching": self._switch,
            "probation": self._probation,
            "rolling_back": self._roll_back,
        }
        while job.state not in TERMINAL_STATES:
            try:
                event, detail = actions[job.state](job)
            except UpdateRefused as exc:
                event, detail = "error", str(exc)
            except Exception as exc:  # anything unexpected in an action is a failed step, never a crash
                log.exception("update step %s failed", job.state)
                event, detail = "error", f"{type(exc).__name__}: {exc}"[:300]
            self._event(job, event, detail)
        self._finish(job)

    def _download_path(self, job: UpdateJournal) -> Path:
        return self.downloads / f"{job.job}.tar.gz"

    def _download(self, job: UpdateJournal) -> tuple[str, str]:
        if (self.slot.packages / job.target).is_dir():
            return "downloaded", "package already on the device"
        fetch(
            job.package, self._download_path(job), self.download_timeout_s, self.download_retries, self.download_context
        )
        return "downloaded", ""

    def _verify(self, job: UpdateJournal) -> tuple[str, str]:
        from edgefleet.agent.model_slot import verify_extracted
        from edgefleet.errors import EdgefleetError
        from edgefleet.package import open_package

        name, version = job.package.name, job.package.version
        existing = self.slot.packages / job.target
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
                raise UpdateRefused(
                    f"package {name} {version} is not newer than the active {active.version} and the job has no valid fleet-signed rollback authorization"
                )
        if not existing.is_dir():
            try:
                self.slot.stage(self._download_path(job))
            except EdgefleetError as exc:
                raise UpdateRefused(f"package refused: {exc.cause}") from None
        self._download_path(job).unlink(missing_ok=True)
        return "verified", ""

    def _rollback_authorized(self, job: UpdateJournal) -> bool:
        return job.kind == "rollback" and rollback_authorized(job, self.device_id, self.trusted_keys)

    def _switch(self, job: UpdateJournal) -> tuple[str, str]:
        self.slot.point_current(self.slot.packages / job.target)
        self.slot.reload()
        return "switched", ""

    def _probation(self, job: UpdateJournal) -> tuple[str, str]:
        active = self.slot.active
        if (active.manifest.name, active.manifest.version) != (job.package.name, job.package.version):
            raise UpdateRefused("the active model is not the one this job installed")
        return "probation_passed", smoke_test(active, job.probation)

    def _roll_back(self, job: UpdateJournal) -> tuple[str, str]:
        previous = job.previous
        if not previous or not (self.slot.packages / previous).is_dir():
            raise UpdateRefused("no previous package on the device to roll back to")
        self.slot.point_current(self.slot.packages / previous)
        self.slot.reload()
        return "rolled_back", f"back on {previous}"

    def _clear_download(self, job: UpdateJournal) -> None:
        self._download_path(job).unlink(missing_ok=True)
        self._download_path(job).with_suffix(".part").unlink(missing_ok=True)

    def _finish(self, job: UpdateJournal) -> None:
        """Idempotent clean-up for a finished job (run again by resume after a crash)."""
        self._clear_download(job)
        active = self.slot.current_dir()
        protect = {active.name if active else None}
        if job.state == "committed":
            drop = job.previous  # the new model is proven: the old one may go
        else:
            drop = None if job.target_existed else job.target  # undo only what this job added
            protect.add(job.previous)
        if drop and drop not in protect:
            shutil.rmtree(self.slot.packages / drop, ignore_errors=True)


def done_jobs(history: Path) -> set[str]:
    """Ids of the jobs the history shows finished: a repeat of one is not run again."""
    if not history.exists():
        return set()
    done = set()
    for line in history.read_text().splitlines():
        try:
            entry = HistoryEntry.model_validate_json(line)
        except ValidationError:
            continue  # a torn last line after power loss
        if entry.state in TERMINAL_STATES:
            done.add(entry.job)
    return done


def append_history(history: Path, job: JournalBase) -> None:
    with open(history, "a") as fh:
        fh.write(
            HistoryEntry(job=job.job, state=job.state, detail=job.detail, at=job.updated_at).model_dump_json() + "\n"
        )
        fh.flush()
        os.fsync(fh.fileno())


def job_update(job: JournalBase) -> dict:
    """The job's progress as reported to the fleet (edgefleet/v1/<device>/jobs/<job>/update)."""
    return JobUpdate(
        id=uuid.uuid4().hex,
        job=job.job,
        state=job.state,
        detail=job.detail,
        package=ModelRef(name=job.package.name, version=job.package.version),
    ).wire()


def rollback_authorized(job: JournalBase, device_id: str, trusted_keys) -> bool:
    """The job carries a rollback authorization a trusted (fleet) key signed for this device, this job and its version."""
    from edgefleet.signing import verify_signature

    doc: RollbackAuthorization | None = job.authorization
    if doc is None or (doc.device, doc.job, doc.name, doc.version) != (
        device_id,
        job.job,
        job.package.name,
        job.package.version,
    ):
        return False
    try:
        verify_signature(doc.signed_bytes(), base64.b64decode(doc.signature, validate=True), trusted_keys)
    except Exception:
        return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """HTTPS downloads trust the system's CAs plus [fleet] ca_file: a package comes from the fleet
    (often under its own CA) or, with an S3 package store, from a presigned S3 URL (a public CA)."""
    if ca_file is None:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=str(ca_file))
    return context


def fetch(
    package: JobPackage, dest: Path, timeout_s: float, retries: int, context: ssl.SSLContext | None = None
) -> None:
    """Download a job's package to `dest`, resuming a partial download with an HTTP Range request,
    bounded by and checked against the job's size and sha256; UpdateRefused says why not."""
    url, size, sha = package.url, package.size, package.sha256
    if not url:
        raise UpdateRefused("the job has no download URL and the package is not on the device")
    if size is None:
        raise UpdateRefused("the job declares no package size, so the download could not be bounded")
    part = dest.with_suffix(".part")
    for attempt in range(retries):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with (
                urllib.request.urlopen(request, timeout=timeout_s, context=context) as resp,
                open(part, "ab" if have and resp.status == 206 else "wb") as fh,
            ):
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


def smoke_test(active, probation: JobProbation) -> str:
    """The active model answers a neutral input `smoke_runs` times, with finite outputs, within the latency budget."""
    import numpy as np

    runs = probation.smoke_runs
    budget = probation.latency_budget_ms
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
