"""shadow_install / shadow_remove jobs: the model update machine (agent/update.py) beside the active model.

Under <state_dir>/shadow/, apart from the active model's packages and journal:

    packages/<name>-<version>/   the verified candidate; packages/current -> it while it runs
    journal/current.json         this machine's journal (UpdateJournal, kind shadow_*), history.jsonl
    jobs/<job>.json              the shadow_install JobDocument (settings, rollout) the candidate runs for

A shadow_install goes through the same states and checks as an install (download bounded by the
job's size and sha256, signature and file hashes, name and version as the job says, newer than
the active model), reported with the same UpdateState values:

    idle -> downloading -> verifying -> staged      as an install
    switching     the candidate is loaded beside the active model (the active model never changes)
    probation     its smoke test, and the same task as the active model
    committed     the shadow runs (agent/shadow.py)
    failed / rolling_back -> rolled_back    no shadow runs; the candidate's files are deleted

A second shadow_install replaces the first: the running candidate stops and its files go before
the new job starts. shadow_remove journals idle, stops the candidate, deletes its files and ends
committed. After a crash or SIGKILL (resume(), at startup after the active model loaded): a
committed shadow_install whose job document and package still load runs again; any other state,
an unreadable journal or job document, or a package that does not load means the shadow is
dropped (rolling_back -> rolled_back, files deleted). Nothing here touches the active model.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from edgefleet.agent.model_slot import ModelSlot
from edgefleet.agent.shadow import Candidate, ShadowRunner
from edgefleet.agent.update import RESUME, UpdateManager, UpdateRefused, _write_json_atomic
from edgefleet.contracts.jobs import JobDocument
from edgefleet.contracts.journal import UpdateJournal

log = logging.getLogger("edgefleet.agent.shadow")

KINDS = ("shadow_install", "shadow_remove")
# At startup only a running shadow comes back; a job caught half-way is dropped, not resumed
# (resuming would run its download before the active model's first frame).
SHADOW_RESUME = {state: "roll_back" for state in RESUME} | {
    "committed": "finish",
    "rolled_back": "finish",
    "failed": "finish",
}


class ShadowJobs(UpdateManager):
    KINDS = KINDS
    RESUME = SHADOW_RESUME

    def __init__(
        self,
        state_dir: Path,
        active_slot: ModelSlot,
        runner: ShadowRunner,
        publish,
        trusted_keys,
        device_id: str,
        **options,
    ) -> None:
        root = Path(state_dir) / "shadow"
        slot = ModelSlot(root, trusted_keys, role="loaded as the shadow model")
        super().__init__(root, slot, publish, trusted_keys, device_id, **options)
        self.active_slot = active_slot
        self.runner = runner
        self.documents = root / "jobs"
        self.documents.mkdir(exist_ok=True)

    def handle_notify(self, payload: dict) -> str | None:
        with self._lock:
            doc = self._parse(payload)
            if doc is None:
                return None
            self._drop()  # a second install replaces the first; a remove removes it
            if doc.kind == "shadow_remove":
                return self._remove(doc)
            _write_json_atomic(self.documents / f"{doc.job}.json", doc)
            job = self._begin(doc)
            self._run(job)
            return job.state

    def _remove(self, doc: JobDocument) -> str:
        package = doc.package
        job = UpdateJournal(job=doc.job, kind=doc.kind, package=package, target=f"{package.name}-{package.version}")
        self._enter(job, "idle")
        self._enter(job, "committed", "shadow model removed")  # nothing can fail: the files are gone
        return job.state

    def _drop(self) -> None:
        """Stop the candidate and delete every shadow file but the journal."""
        self.runner.stop()
        self.slot.unload()
        for folder in (self.slot.packages, self.documents):
            for path in folder.iterdir():
                if path.is_symlink() or path.is_file():
                    path.unlink()
                else:
                    shutil.rmtree(path, ignore_errors=True)

    def _start(self, job: UpdateJournal) -> tuple[str, str]:
        return "start", ""  # the version rules in _verify refuse a candidate that is the active model

    def _probation(self, job: UpdateJournal) -> tuple[str, str]:
        active = self._active_manifest()
        task = self.slot.active.manifest.task
        if active is not None and active.task != task:
            raise UpdateRefused(f"the candidate is a {task} model, the active model a {active.task} model")
        return super()._probation(job)

    def _roll_back(self, job: UpdateJournal) -> tuple[str, str]:
        self._drop()
        return "rolled_back", "shadow model dropped; the active model is unchanged"

    def _recover_unreadable(self) -> str:
        log.error("shadow journal %s is unreadable; dropping the shadow model", self.current_path)
        self._drop()
        self.current_path.rename(self.current_path.with_name("current.unreadable.json"))
        return "rolled_back"

    def _finish(self, job: UpdateJournal) -> None:
        """Run the committed candidate (again, after a restart), or make sure nothing of a shadow is left."""
        self._clear_download(job)
        if job.state != "committed" or job.kind != "shadow_install":
            self._drop()
            return
        try:
            doc = JobDocument.model_validate_json((self.documents / f"{job.job}.json").read_text())
            model = self.slot.loaded or self.slot.reload()
        except Exception as exc:  # a missing or unreadable document, a package altered on disk: drop it
            self._enter(job, "rolling_back", f"the shadow model cannot run again: {exc}"[:300])
            self._drop()
            self._enter(job, "rolled_back", "shadow model dropped; the active model is unchanged")
            return
        self.runner.start(Candidate(doc, model))
