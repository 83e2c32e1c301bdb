"""`edgefleet agent launch`: the fixed part that starts the agent release `current` names (the bootloader of A/B updates).

The systemd unit runs this, not `agent run`: it is the installed agent's code, never replaced
over the air, so a release that cannot start at all is still undone. Before every start it
looks at the agent update journal (agent/self_update.py) and acts on LAUNCH:

    probation     count this start; past the job's max_boots starts without a commit the
                  release crashed, hung or lost power before proving itself: roll back
    switching     power went out between the switch and the journal: roll back
    rolling_back  finish the roll back
    others        nothing (the agent continues or reports them)

A state it does not know, or a journal it cannot read, means roll back to the previous release
if the journal names one. Then it checks the release it is about to start as it was checked at
unpacking (signature by a trusted key, every file's sha256): a release changed on disk since
(corruption, tampering) is not started; the installed agent starts instead and says why. Then
it replaces itself (exec) with `agent run` on the release:
its site/ first on PYTHONPATH, its runtime bundle (if it has one) as EDGEFLEET_RUNTIME.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from edgefleet import __version__
from edgefleet.agent.config import load_config, trusted_keys
from edgefleet.agent.self_update import INSTALLED_ENV, LAUNCHER_ENV, TRANSITIONS, AgentJournal
from edgefleet.agent_release import verify_release_dir
from edgefleet.errors import EdgefleetError, PackageIntegrityError, UsageError
from edgefleet.runtime_bundle import BUNDLE_ENV

log = logging.getLogger("edgefleet.agent.launcher")

LAUNCH: dict[str, str] = {
    "idle": "start",
    "downloading": "start",
    "verifying": "start",
    "staged": "start",
    "switching": "roll_back",
    "probation": "count_boot",
    "rolling_back": "roll_back",
    "committed": "start",
    "rolled_back": "start",
    "failed": "start",
}


def prepare_boot(journal: AgentJournal) -> str:
    """Act on the journal before a start; returns what was done (for the log and the tests)."""
    try:
        job = journal.load()
    except (ValueError, OSError) as exc:
        return _unreadable(journal, str(exc))
    if job is None:
        return "start"
    action = LAUNCH.get(job.state, "roll_back")
    if action == "count_boot":
        job.boots += 1
        limit = job.probation.max_boots
        if job.boots <= limit:
            journal.enter(job, "probation", f"start {job.boots} of at most {limit} to pass the health check")
            return "start"
        journal.event(
            job, "error", f"agent {job.package.version} started {limit} times without passing its health check"
        )
        action = "roll_back"
    if action == "roll_back":
        if job.state != "rolling_back":
            if TRANSITIONS.get((job.state, "error")) == "rolling_back":
                journal.event(job, "error", f"interrupted in {job.state}")
            else:
                journal.enter(
                    job, "rolling_back", f"unknown journaled state {job.state!r}; rolling back"
                )  # the one way around the table
        journal.roll_back(job)
        return "rolled_back"
    return "start"


def _unreadable(journal: AgentJournal, why: str) -> str:
    """A torn or foreign journal: go back to the release it names as previous, if it names one; else keep `current`."""
    log.error("agent update journal unreadable (%s)", why)
    try:
        previous = json.loads(journal.path.read_text()).get("previous")
    except (ValueError, OSError, AttributeError):
        previous = journal.current_version()
    if previous is None or (journal.releases / str(previous)).is_dir():
        journal.point_current(previous)
    journal.set_aside()
    return "rolled_back"


def check_current(journal: AgentJournal, config_path: Path) -> str | None:
    """Re-check the release `current` names before it starts; on a failure point `current` at the
    installed agent and return why (None: it passed, or the installed agent runs anyway)."""
    release = journal.current_dir()
    if release is None:
        return None
    try:
        verify_release_dir(release, trusted_keys(load_config(config_path)))
    except PackageIntegrityError as exc:
        journal.point_current(None)
        return f"agent release {release.name} failed its check at start ({exc.cause}); starting the installed agent"
    except (EdgefleetError, OSError) as exc:  # an unreadable config or key: `agent run` reports it itself
        log.warning("launcher: release %s not re-checked: %s", release.name, exc)
    return None


def launch_argv(config_path: Path, run_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(config_path), *run_args]


def launch_env(journal: AgentJournal) -> dict[str, str]:
    env = dict(os.environ, **{LAUNCHER_ENV: "1", INSTALLED_ENV: __version__})
    release = journal.current_dir()
    if release is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(release / "site"), *filter(None, [os.environ.get("PYTHONPATH")])])
        if (release / "runtime").is_dir():
            env[BUNDLE_ENV] = str(release / "runtime")
    return env


def launch(config_path: Path, state_dir: Path, run_args: list[str]) -> None:
    """Prepare the boot, then exec the agent; never returns."""
    if not Path(state_dir).is_absolute():
        raise UsageError(
            f"state_dir {state_dir} is relative; the launcher starts the agent in another working directory",
            "give state_dir (and every path in the agent config) as an absolute path",
        )
    config_path = Path(config_path).resolve()  # the working directory changes below
    journal = AgentJournal(state_dir)
    done = prepare_boot(journal)
    refused = check_current(journal, config_path)
    if refused:
        log.error("launcher: %s", refused)
    release = journal.current_version()
    log.info("launcher: %s; starting %s", done, f"agent release {release}" if release else "the installed agent")
    # `python -m` puts the working directory first on sys.path: start where no edgefleet/ can shadow the release.
    os.chdir(journal.root)
    os.execve(sys.executable, launch_argv(config_path, run_args), launch_env(journal))
