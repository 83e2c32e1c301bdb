"""MetaSchedule tuning, one task at a time: progress per task, resumable, database kept per target.

The database is MetaSchedule's JSON pair (database_workload.json, database_tuning_record.json)
under EDGEFLEET_HOME/tuning/<target>-<hash>/, keyed by each fused kernel's structural hash, so
a later compile of any model with the same layer shapes reuses it. Tuning is resumable: a
task that already holds its share of measured records is skipped, so an interrupted
`--tune-trials` run continues where it stopped. The search's records are kept in `search/`;
the folder itself, which MetaScheduleApplyDatabase reads, holds per kernel the default
schedule (`schedules.py`) and the search's fastest candidate measured side by side, so the
tuned schedule is used only where it ran faster next to the default.

JSONDatabase files each record under the line number of its workload, and each open handle
computes that number from its own in-memory table. Two writers on one folder (two compiles
tuning the same target at once), or a workload line written twice, shift those numbers and
records land on another kernel. So writers hold an exclusive lock on the folder, and
`check_database` refuses a database whose records do not fit the kernel they are filed under.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tvm

from edgefleet.errors import BuildError, UsageError
from edgefleet.locks import exclusive

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
LOCK_FILE = "tuning.lock"
SEARCH_DIR = "search"
# Rounds of the side-by-side measurement that decides between default and tuned schedules.
PAIRED_ROUNDS = 3


# Worker processes import TVM before building: on a busy 2-core machine that alone can pass
# MetaSchedule's 30 s default, failing every candidate.
BUILD_TIMEOUT_S = 180
RUN_TIMEOUT_S = 120


class DatabaseError(BuildError):
    """A tuning database whose records do not fit its kernels: replaying it would be wrong."""


def _builder():
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(max_workers=1, timeout_sec=BUILD_TIMEOUT_S, initializer=_register_operators)


def _register_operators() -> None:
    """In a build worker: the TIR operators edgefleet registers at import (x86_intrin.RDHM_OP, the
    x86 int8 rescale), which a candidate's kernels call and its lowering needs."""
    import edgefleet.compiler.x86_intrin  # noqa: F401  (registration on import)


@dataclass(frozen=True)
class RpcTracker:
    """Where candidates run when tuning for a device: a TVM RPC tracker and the device's key.

    The board runs `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` (the
    apache-tvm wheel for its architecture); `cores` is its core count (MetaSchedule's
    num-cores for the target).
    """

    host: str
    port: int
    key: str
    cores: int

    @classmethod
    def parse(cls, text: str) -> "RpcTracker":
        """HOST:PORT/KEY[@CORES], e.g. tracker.lan:9190/rasp4b@4 (CORES defaults to 4)."""
        match = re.fullmatch(r"([^:/@\s]+):(\d+)/([^@\s]+)(?:@(\d+))?", text)
        if not match:
            raise UsageError(
                f"--tune-rpc {text!r} is not HOST:PORT/KEY or HOST:PORT/KEY@CORES",
                "for example --tune-rpc 192.168.1.20:9190/rasp4b@4",
            )
        host, port, key, cores = match.groups()
        return cls(host, int(port), key, int(cores or 4))


def _runner(rpc: RpcTracker | None = None):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20)
    if rpc is not None:
        config = ms.runner.RPCConfig(
            tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key, session_timeout_sec=RUN_TIMEOUT_S
        )
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)
    return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=evaluator)


def has_database(work: Path) -> bool:
    return (work / RECORD_FILE).is_file() and (work / RECORD_FILE).stat().st_size > 0


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _arg_json(mod: tvm.IRModule) -> list:
    from tvm.s_tir import meta_schedule as ms

    return [
        ["TENSOR", str(a.dtype), [int(d) for d in a.shape]] for a in ms.arg_info.ArgInfo.from_prim_func(mod["main"])
    ]


def check_database(work: Path) -> None:
    """Raise DatabaseError if two workload lines hold the same kernel or a record's arguments
    differ from those of the kernel it is filed under (records shifted onto another kernel)."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    mods = [ms.database.Workload.from_json(json.loads(line)).mod for line in _lines(work / WORKLOAD_FILE)]
    by_hash: dict[int, list[int]] = {}
    for i, mod in enumerate(mods):
        same = by_hash.setdefault(tvm_ffi.structural_hash(mod), [])
        if any(tvm_ffi.structural_equal(mods[j], mod) for j in same):
            raise DatabaseError(
                f"tuning database {work}: workload line {i + 1} repeats an earlier kernel, so later record indices are shifted",
                f"delete {work} and tune again",
            )
        same.append(i)
    args = [_arg_json(mod) for mod in mods]
    for n, line in enumerate(_lines(work / RECORD_FILE), 1):
        index, record = json.loads(line)
        if not 0 <= index < len(mods) or record[3] != args[index]:
            raise DatabaseError(
                f"tuning database {work}: record {n} does not fit the kernel it is filed under (written by two processes at once?)",
                f"delete {work} and tune again",
            )


def open_database(work: Path):
    from tvm.s_tir import meta_schedule as ms

    work.mkdir(parents=True, exist_ok=True)
    check_database(work)
    return ms.database.JSONDatabase(path_workload=str(work / WORKLOAD_FILE), path_tuning_record=str(work / RECORD_FILE))


@contextmanager
def writing(work: Path, report: Callable[[str], None]) -> Iterator[None]:
    """Hold the folder's lock: the only writer, so record indices stay right."""
    with exclusive(work / LOCK_FILE, lambda: report(f"waiting for another tuning run on {work}")):
        yield


def _records(db, mod: tvm.IRModule) -> list:
    if not db.has_workload(mod):
        return []
    return list(db.get_top_k(db.commit_workload(mod), 1 << 20))


def _mean(record) -> float:
    return sum(float(s) for s in record.run_secs) / len(record.run_secs)


def _measure_default(db, task_mod: tvm.IRModule, target: tvm.target.Target, builder, runner) -> float | None:
    """Measure the default schedule of one task and store it as a tuning record (seconds, or None)."""
    from tvm.s_tir import meta_schedule as ms

    from edgefleet.compiler.schedules import schedule_func

    sch = schedule_func(task_mod["main"], target)
    if sch is None:
        return None
    built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
    if built.error_msg:
        return None
    args = ms.arg_info.ArgInfo.from_prim_func(task_mod["main"])
    result = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args)])[0].result()
    if result.error_msg or not result.run_secs:
        return None
    secs = [float(s) for s in result.run_secs]
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(task_mod), secs, target, args))
    return sum(secs) / len(secs)


def trial_shares(tasks: list, total_trials: int) -> list[int]:
    """Trials per task in proportion to its FLOPs x occurrences: the convolutions hold nearly all
    the time, and a search round on a reshape or layout transform costs as much as on a conv.
    A task whose share rounds to 0 keeps its default schedule. Deterministic, so a rerun with the
    same budget finds the same shares (resume)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    work = [estimate_tir_flops(t.dispatched[0]) * t.weight for t in tasks]
    total = sum(work)
    return [int(total_trials * w / total) if total else 0 for w in work]


@dataclass(frozen=True)
class Decision:
    """What `_decide` measured: both schedules side by side (seconds), or, when the search's best
    is the default schedule itself, only the search's own mean for it (nothing run side by side)."""

    default_s: float
    tuned_s: float | None  # None: the search found nothing but the default schedule

    def message(self) -> str:
        if self.tuned_s is None:
            return (
                f"the search's best is the default schedule ({1e3 * self.default_s:.3f} ms as measured in the search; "
                "not measured side by side): default schedule kept"
            )
        kept = "tuned" if self.tuned_s < self.default_s else "default"
        return f"side by side default {1e3 * self.default_s:.3f} ms, tuned {1e3 * self.tuned_s:.3f} ms: {kept} schedule kept"


def _decide(search, decided, task_mod: tvm.IRModule, target: tvm.target.Target, builder, runner) -> Decision | None:
    """Measure the default schedule and the search's fastest candidate side by side, alternating,
    and file them in the database that compiles read (None when nothing could be measured).

    The search measured each candidate at a different moment of a shared machine's load: a
    default measured under load lost to a candidate that is 3x slower when run next to it.
    """
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from edgefleet.compiler.schedules import schedule_func

    records = _records(search, task_mod)
    default = schedule_func(task_mod["main"], target)
    if not records or default is None:
        return None
    tuned = records[0].as_measure_candidate().sch
    args = ms.arg_info.ArgInfo.from_prim_func(task_mod["main"])
    if tvm_ffi.structural_equal(tuned.mod, default.mod):  # the search found nothing faster
        decided.commit_tuning_record(
            ms.database.TuningRecord(
                default.trace, decided.commit_workload(task_mod), records[0].run_secs, target, args
            )
        )
        return Decision(_mean(records[0]), None)
    built = builder.build([ms.builder.BuilderInput(m, target) for m in (default.mod, tuned.mod)])
    if any(b.error_msg for b in built):
        return None
    secs: list[list[float]] = [[] for _ in built]
    for _ in range(PAIRED_ROUNDS):
        for k, future in enumerate(runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", args) for b in built])):
            result = future.result()
            if result.error_msg or not result.run_secs:
                return None
            secs[k] += [float(x) for x in result.run_secs]
    # The workload is committed only with its records: a workload alone marks the task decided.
    workload = decided.commit_workload(task_mod)
    for trace, run_secs in zip((default.trace, records[0].trace), secs, strict=True):
        decided.commit_tuning_record(ms.database.TuningRecord(trace, workload, run_secs, target, args))
    return Decision(sum(secs[0]) / len(secs[0]), sum(secs[1]) / len(secs[1]))


def tune(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    work: Path,
    total_trials: int,
    report: Callable[[str], None],
    rpc: RpcTracker | None = None,
) -> None:
    """Tune every kernel of `mod` (fused, unscheduled Relax + TIR) with about total_trials trials.

    The search's records go to `work/search` (resume, warm start); `work` itself, which
    MetaScheduleApplyDatabase reads, gets only the side-by-side measurements of `_decide`.
    """
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, target)
    # `tirx.is_scheduled` is a PrimFunc attribute; the task's module never carries it.
    tasks = [t for t in tasks if not t.dispatched[0]["main"].attrs.get("tirx.is_scheduled", False)]
    if not tasks:
        return
    with writing(work, report):
        search, decided = open_database(work / SEARCH_DIR), open_database(work)
        # One builder and runner (worker process pools) for the whole run: pools started per
        # task were seen to hang MetaSchedule on this machine.
        builder, runner = _builder(), _runner(rpc)
        if rpc is not None:
            report(f"candidates run on {rpc.key} devices through the RPC tracker at {rpc.host}:{rpc.port}")
        for i, (task, share) in enumerate(zip(tasks, trial_shares(tasks, total_trials), strict=True), 1):
            task_mod = task.dispatched[0]
            label = f"task {i}/{len(tasks)} {task.task_name}"
            if share == 0:
                report(f"{label}: no trials in its share of the budget, default schedule")
                continue
            done = len(_records(search, task_mod))
            if done >= share and decided.has_workload(task_mod):
                report(f"{label}: {done} records in the database, skipped")
                continue
            if done == 0:
                default = _measure_default(search, task_mod, target, builder, runner)
                if default is not None:
                    report(f"{label}: default schedule {1e3 * default:.3f} ms")
                    done = 1
            if done < share:
                ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts([task], str(work / SEARCH_DIR))
                ms.tune.tune_tasks(
                    tasks=ctxs,
                    task_weights=weights,
                    work_dir=str(work / SEARCH_DIR),
                    max_trials_global=share - done,
                    max_trials_per_task=share - done,
                    num_trials_per_iter=min(64, share - done),
                    builder=builder,
                    runner=runner,
                    database=search,
                )
                best = _records(search, task_mod)
                best_ms = f", best {1e3 * _mean(best[0]):.3f} ms" if best else ""
                report(f"{label}: {share - done} trials{best_ms}")
            decision = _decide(search, decided, task_mod, target, builder, runner)
            if decision is not None:
                report(f"{label}: {decision.message()}")


def tune_pass(
    target: tvm.target.Target,
    work: Path,
    total_trials: int,
    report: Callable[[str], None],
    rpc: RpcTracker | None = None,
) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="EdgefleetTune")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        tune(mod, target, work, total_trials, report, rpc)
        return mod

    return _pass
