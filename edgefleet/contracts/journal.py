"""The camera's update journals (format 1): the job under way, written (fsynced) before each
step's action, and one history line per state.

    <state>/journal/current.json     UpdateJournal       model updates (agent/update.py)
    <state>/agent/journal.json       AgentUpdateJournal  agent updates (agent/self_update.py,
                                                         read before every start by agent/launcher.py)
    .../history.jsonl                HistoryEntry per line

`state` is kept as any string: a journal written by another agent version may hold a state
this one does not know, which means "roll back" (RESUME in agent/update.py), not "unreadable".
A journal of another format, or one that does not parse, is unreadable.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from edgefleet.contracts.base import WireMessage
from edgefleet.contracts.jobs import JobKind, JobPackage, JobProbation, RollbackAuthorization

JOURNAL_FORMAT: Literal[1] = 1


class JournalBase(WireMessage):
    """Revision 2: `kind` takes the job kinds of JobDocument revision 2 (shadow_install, shadow_remove)."""

    REVISION: ClassVar[int] = 2
    format: Literal[1] = JOURNAL_FORMAT
    job: str
    kind: JobKind
    package: JobPackage
    authorization: RollbackAuthorization | None = None
    probation: JobProbation = Field(default_factory=lambda: JobProbation())
    previous: str | None = (
        None  # what was active before the job: a package dir, or an agent release (None: the installed agent)
    )
    target_existed: bool = False  # the job's target was on the camera before it: a failure must not delete it
    state: str = "idle"
    detail: str = ""
    updated_at: float = 0.0


class UpdateJournal(JournalBase):
    target: str  # the package dir the job installs: <name>-<version>


class AgentUpdateJournal(JournalBase):
    boots: int = 0  # starts of the new release in probation, counted by the launcher
    unreported: bool = False  # entered while the launcher ran, with no broker: reported at the next start
    why: str | None = None  # the launcher cannot report; the final report carries the reason


class HistoryEntry(WireMessage):
    VERSION: ClassVar[int] = JOURNAL_FORMAT  # one line of history.jsonl, versioned with the journal
    job: str
    state: str
    detail: str = ""
    at: float
