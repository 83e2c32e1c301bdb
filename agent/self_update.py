"""Over-the-air updates of the agent itself: the model update machine (agent/update.py) applied to releases.

Same states, events and TRANSITIONS as model updates, so the fleet's rollouts track both alike.
Under <state_dir>/agent/:

    releases/<version>/     verified, unpacked agent releases (edgefleet/agent_release.py)
    current -> releases/V   what `edgefleet agent launch` starts; absent: the installed agent
    journal.json            this machine's journal (format 1), history.jsonl its transitions

Who does what: the running agent downloads, verifies (signature, hashes, architecture, Python,
installed distributions), unpacks and switches `current` (one atomic rename), journals
`probation` and exits to be restarted. The launcher (agent/launcher.py), which is not updated
over the air, runs before every start: it counts the starts of a release in probation and,
past `max_boots` starts without a commit (the new agent crashes, hangs or loses power before
proving itself), points `current` back at the previous release. The new agent commits once its
health check passes (broker connected, the model it had loaded again and answering) within
`health_deadline_s`; otherwise it rolls back itself and exits. A power loss anywhere resumes
from the journal: RESUME below for the agent, LAUNCH (agent/launcher.py) for the launcher; a
state neither knows means roll back.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgefleet.agent.update import (
    EVENTS,
    TERMINAL_STATES,
    TRANSITIONS,
    UpdateRefused,
    _default_fault,
    _write_json_atomic,
    append_history,
    done_jobs,
    fetch,
    job_update,
    rollback_authorized,
)
from edgefleet.contracts.jobs import JobDocument, JobProbation
from edgefleet.contracts.journal import AgentUpdateJournal

log = logging.getLogger("edgefleet.agent.self_update")

KINDS = ("agent_install", "agent_rollback")
# Set by the launcher: only an agent it started can hand over to another release.
LAUNCHER_ENV = "EDGEFLEET_AGENT_LAUNCHER"
# Set by the launcher to its own version: the installed agent, which a fleet rollback may return to.
INSTALLED_ENV = "EDGEFLEET_AGENT_INSTALLED"
RESTART_EXIT_CODE = 75  # EX_TEMPFAIL: "start me again" for systemd (Restart=always) or any supervisor
# What the agent does at startup with a journaled state; not listed means "roll_back".
RESUME: dict[str, str] = {
    "idle": "continue",
    "downloading": "continue",
    "verifying": "continue",
    "staged": "continue",
    "switching": "roll_back",
    "probation": "health_check",
    "rolling_back": "roll_back",
    "committed": "finish",
    "rolled_back": "finish",
    "failed": "finish",
}


class AgentJournal:
    """The journal and the `current` link, shared by the agent and the launcher."""

    def __init__(
        self,
        state_dir: Path,
        publish: Callable[[str, dict], None] | None = None,
        fault: Callable[[str], None] = _default_fault,
    ) -> None:
        self.root = Path(state_dir) / "agent"
        self.releases = self.root / "releases"
        self.downloads = self.root / "downloads"
        for folder in (self.releases, self.downloads):
            folder.mkdir(parents=True, exist_ok=True)
        self.current_link = self.root / "current"
        self.path = self.root / "journal.json"
        self.history = self.root / "history.jsonl"
        self.publish = publish
        self.fault = fault

    def load(self) -> AgentUpdateJournal | None:
        """The journaled job; None when there is none; ValueError when it cannot be read (another format included)."""
        if not self.path.exists():
            return None
        return AgentUpdateJournal.model_validate_json(self.path.read_text())

    def set_aside(self) -> None:
        self.path.rename(self.path.with_name("journal.unreadable.json"))

    def enter(self, job: AgentUpdateJournal, state: str, detail: str = "") -> None:
        """Journal `state` (fsynced, before its action runs), record it, report it when connected."""
        job.state, job.detail, job.updated_at, job.unreported = state, detail, time.time(), self.publish is None
        _write_json_atomic(self.path, job)
        append_history(self.history, job)
        if self.publish is not None:
            self.report(job)
        log.info("agent job %s: %s %s", job.job, state, detail)
        self.fault(state)

    def event(self, job: AgentUpdateJournal, event: str, detail: str = "") -> None:
        assert event in EVENTS, event
        new = TRANSITIONS.get((job.state, event))
        if new is None:
            raise RuntimeError(f"agent update machine has no transition ({job.state}, {event})")
        if event == "error":
            job.why = detail  # the launcher cannot report; the final report carries the reason
        self.enter(job, new, detail)

    def report(self, job: AgentUpdateJournal) -> None:
        self.publish(f"jobs/{job.job}/update", job_update(job))

    def done_jobs(self) -> set[str]:
        return done_jobs(self.history)

    # -- releases --------------------------------------------------------------------------

    def current_version(self) -> str | None:
        """The release `current` points at; None for the installed (factory) agent."""
        return os.readlink(self.current_link).rsplit("/", 1)[-1] if self.current_link.is_symlink() else None

    def current_dir(self) -> Path | None:
        version = self.current_version()
        return None if version is None else self.releases / version

    def point_current(self, version: str | None) -> None:
        """Switch `current` in one rename (a new symlink replaces the old); None: back to the installed agent."""
        if version is None:
            self.current_link.unlink(missing_ok=True)
        else:
            tmp = self.root / f".current-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            os.symlink(f"releases/{version}", tmp)
            os.replace(tmp, self.current_link)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def roll_back(self, job: AgentUpdateJournal) -> None:
        """rolling_back -> rolled_back: `current` back to what it was before the job (idempotent)."""
        previous = job.previous
        why = job.why or "rolled back"
        if previous is not None and not (self.releases / previous).is_dir():
            # Never leave `current` on a release that failed: the installed agent is always there.
            previous, why = None, f"{why}; the previous release {previous} is gone from the camera"
        self.point_current(previous)
        self.event(job, "rolled_back", f"back on {previous or 'the installed agent'}: {why}")


class AgentUpdateManager:
    """The agent's side: runs agent jobs from the fleet, resumes them at startup, runs the health check."""

    def __init__(
        self,
        state_dir: Path,
        publish: Callable[[str, dict], None],
        trusted_keys,
        device_id: str,
        request_restart: Callable[[], None],
        *,
        active_model: Callable[[], object] = lambda: None,
        fault: Callable[[str], None] = _default_fault,
        download_timeout_s: float = 30.0,
        download_retries: int = 5,
        download_context: ssl.SSLContext | None = None,
    ) -> None:
        self.journal = AgentJournal(state_dir, publish, fault)
        self.active_model = active_model  # the loaded model's manifest: the release's runtime must run it
        self.trusted_keys = trusted_keys
        self.device_id = device_id
        self.request_restart = request_restart
        self.download_timeout_s = download_timeout_s
        self.download_retries = download_retries
        self.download_context = download_context
        self._lock = threading.Lock()

    # ---- entry points ----------------------------------------------------------------------

    def handle_notify(self, payload: dict) -> str | None:
        """Run an agent job up to its switch (then the agent restarts) or its end; returns the state reached."""
        with self._lock:
            job = self._accept(payload)
            if job is None:
                return None
            self._run(job)
            return job.state

    def resume(self) -> str | None:
        """At startup: report what the launcher did, continue or undo an interrupted job.

        Returns "health_check" when this start is a new release on probation: the caller runs
        `probation()` once the agent is up.
        """
        with self._lock:
            try:
                job = self.journal.load()
            except (ValueError, OSError) as exc:
                log.error("agent update journal unreadable (%s); keeping the release the launcher started", exc)
                self.journal.set_aside()
                return None
            if job is None:
                return None
            if job.unreported:
                self.journal.report(job)
                job.unreported = False
                _write_json_atomic(self.journal.path, job)
            action = RESUME.get(job.state, "roll_back")
            if action == "continue":
                self._run(job)
            elif action == "roll_back":
                self._roll_back_and_restart(job, f"interrupted in {job.state}")
            elif action == "health_check":
                return "health_check"
            else:
                self._finish(job)
            return job.state

    def probation_settings(self) -> JobProbation:
        """The probation settings of the journaled job (smoke_runs, latency_budget_ms, ...)."""
        job = self.journal.load()
        return job.probation if job else JobProbation()

    def probation(self, check: Callable[[], str | None]) -> str:
        """Poll `check` (None: healthy, else why not) until it passes or the job's deadline; commit or roll back."""
        with self._lock:
            job = self.journal.load()
            if job is None or job.state != "probation":
                return "none"
            deadline = time.monotonic() + job.probation.health_deadline_s
            why = "not checked"
            while time.monotonic() < deadline:
                why = check()
                if why is None:
                    self.journal.event(
                        job, "probation_passed", f"agent {job.package.version} healthy after {job.boots} start(s)"
                    )
                    self._finish(job)
                    return job.state
                time.sleep(0.5)
            self._roll_back_and_restart(job, f"health check failed: {why}")
            return job.state

    # ---- the machine -----------------------------------------------------------------------

    def _accept(self, payload: dict) -> AgentUpdateJournal | None:
        from edgefleet.agent_release import RELEASE_NAME
        from edgefleet.package import NAME_PATTERN, parse_version

        try:
            doc = JobDocument.model_validate(payload)
            parse_version(doc.package.version)
        except ValueError as exc:  # ValidationError included
            log.warning("ignoring malformed agent job: %s", str(exc)[:500])
            return None
        if doc.kind not in KINDS or doc.package.name != RELEASE_NAME or not re.fullmatch(NAME_PATTERN, doc.job):
            log.warning("ignoring agent job with unknown kind, name or id")
            return None
        if doc.job in self.journal.done_jobs():
            return None
        current = self.journal.load()
        if current is not None and current.state not in TERMINAL_STATES:
            log.warning("agent job %s arrived while job %s is %s; ignoring it", doc.job, current.job, current.state)
            return None
        job = AgentUpdateJournal(
            job=doc.job,
            kind=doc.kind,
            package=doc.package,
            authorization=doc.rollback_authorization,
            probation=doc.probation,
            previous=self.journal.current_version(),
            target_existed=(self.journal.releases / doc.package.version).is_dir(),
        )
        self.journal.enter(job, "idle")
        self.journal.event(job, *self._start(job))
        return job

    def _start(self, job: AgentUpdateJournal) -> tuple[str, str]:
        from edgefleet.agent_release import running_version

        if running_version() == job.package.version:
            return "already_installed", f"agent {job.package.version} is already running"
        if not os.environ.get(LAUNCHER_ENV):
            return (
                "error",
                "this agent was not started by `edgefleet agent launch`, so it cannot switch releases (run the service through the launcher: docs/agent.md)",
            )
        return "start", ""

    def _run(self, job: AgentUpdateJournal) -> None:
        actions = {
            "idle": self._start,
            "downloading": self._download,
            "verifying": self._verify,
            "staged": lambda j: ("switch", ""),
            "switching": self._switch,
        }
        while job.state in actions:
            try:
                event, detail = actions[job.state](job)
            except UpdateRefused as exc:
                event, detail = "error", str(exc)
            except Exception as exc:  # anything unexpected in a step fails the job, never the camera
                log.exception("agent update step %s failed", job.state)
                event, detail = "error", f"{type(exc).__name__}: {exc}"[:300]
            self.journal.event(job, event, detail)
        if job.state == "probation":
            self.request_restart()  # the launcher starts the new release
        elif job.state == "rolling_back":
            self._roll_back_and_restart(job, "")
        else:
            self._finish(job)

    def _archive(self, job: AgentUpdateJournal) -> Path:
        return self.journal.downloads / f"{job.job}.tar.gz"

    def _target(self, job: AgentUpdateJournal) -> str | None:
        """The release the job switches to; None for the installed agent (back to it needs no download)."""
        version = job.package.version
        if version == os.environ.get(INSTALLED_ENV) and not (self.journal.releases / version).is_dir():
            return None
        return version

    def _download(self, job: AgentUpdateJournal) -> tuple[str, str]:
        if self._target(job) is None:
            return "downloaded", "the installed agent is on the camera"
        if (self.journal.releases / job.package.version).is_dir():
            return "downloaded", "release already on the camera"
        fetch(job.package, self._archive(job), self.download_timeout_s, self.download_retries, self.download_context)
        return "downloaded", ""

    def _verify(self, job: AgentUpdateJournal) -> tuple[str, str]:
        from edgefleet.agent_release import compatibility_problems, running_version, unpack_release, verify_release_dir
        from edgefleet.errors import EdgefleetError
        from edgefleet.package import parse_version

        version = job.package.version
        if self._target(job) is None:
            if not self._rollback_authorized(job):
                raise UpdateRefused(
                    f"going back to the installed agent {version} needs a valid fleet-signed rollback authorization"
                )
            return "verified", f"the installed agent {version}"
        final = self.journal.releases / version
        try:
            if final.is_dir():
                manifest, _ = verify_release_dir(final, self.trusted_keys)
            else:
                staging = self.journal.releases / f".{version}.partial"
                shutil.rmtree(staging, ignore_errors=True)
                manifest, _ = unpack_release(self._archive(job), staging, self.trusted_keys)
        except EdgefleetError as exc:
            raise UpdateRefused(f"agent release refused: {exc.cause}") from None
        problems = (
            [f"the release is agent {manifest.version}, the job names {version}"] if manifest.version != version else []
        )
        problems += compatibility_problems(manifest) + self._runtime_problems(final if final.is_dir() else staging)
        if parse_version(version) <= parse_version(running_version()) and not self._rollback_authorized(job):
            problems.append(
                f"agent {version} is not newer than the running {running_version()} and the job has no valid fleet-signed rollback authorization"
            )
        if problems:
            if not final.is_dir():
                shutil.rmtree(staging, ignore_errors=True)
            raise UpdateRefused("agent release refused: " + "; ".join(problems))
        if not final.is_dir():
            os.replace(staging, final)
        self._archive(job).unlink(missing_ok=True)
        return "verified", f"agent {version} for {manifest.arch}, signed by a trusted key"

    def _runtime_problems(self, release: Path) -> list[str]:
        """A release shipping a runtime that cannot run the active model is refused before the switch."""
        from edgefleet.runtime_bundle import read_bundle, requirement_problems

        manifest = self.active_model()
        need = manifest.runtime_requirement() if manifest is not None else None
        if need is None or not (release / "runtime").is_dir():
            return []
        have = read_bundle(release / "runtime").info
        problems = requirement_problems(need, have)
        return (
            [
                f"its runtime ({have.describe()}) cannot run the active model {manifest.name} {manifest.version}: {'; '.join(problems)}"
            ]
            if problems
            else []
        )

    def _rollback_authorized(self, job: AgentUpdateJournal) -> bool:
        return job.kind == "agent_rollback" and rollback_authorized(job, self.device_id, self.trusted_keys)

    def _switch(self, job: AgentUpdateJournal) -> tuple[str, str]:
        self.journal.point_current(self._target(job))
        return "switched", "restarting into the new agent"

    def _roll_back_and_restart(self, job: AgentUpdateJournal, why: str) -> None:
        if job.state not in ("rolling_back", *TERMINAL_STATES):
            if TRANSITIONS.get((job.state, "error")) == "rolling_back":
                self.journal.event(job, "error", why)
            else:
                self.journal.enter(
                    job, "rolling_back", f"unknown journaled state {job.state!r}; rolling back"
                )  # the one way around the table
        if job.state == "rolling_back":
            self.journal.roll_back(job)
        self._finish(job)
        from edgefleet.agent_release import running_release

        if self.journal.current_version() != running_release():
            self.request_restart()  # the launcher starts the release `current` names again

    def _finish(self, job: AgentUpdateJournal) -> None:
        """Idempotent clean-up: the download; releases other than `current` and the one before it (kept for a fleet rollback)."""
        self._archive(job).unlink(missing_ok=True)
        self._archive(job).with_suffix(".part").unlink(missing_ok=True)
        keep = {self.journal.current_version(), job.previous, job.package.version if job.state == "committed" else None}
        if job.state != "committed" and not job.target_existed:
            keep.discard(job.package.version)  # undo only what this job added
        for release in self.journal.releases.iterdir():
            if release.name not in keep:
                shutil.rmtree(release, ignore_errors=True)
