"""MetaSchedule tuning, one task at a time: progress per task, resumable, database kept per target.

The database is MetaSchedule's JSON pair (database_workload.json, database_tuning_record.json)
under EDGEFLEET_HOME/tuning/<target>-<hash>/, keyed by each fused kernel's structural hash, so
a later compile of any model with the same layer shapes reuses it. Tuning is resumable: a
task that already holds `per_task` measured records is skipped, so an interrupted
`--tune-trials` run continues where it stopped. Before a task is tuned, its default schedule
(`schedules.py`) is measured and stored as a record too: the evolutionary search starts from
it, and MetaScheduleApplyDatabase only picks a tuned schedule when it measured faster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tvm

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


# Worker processes import TVM before building: on a busy 2-core machine that alone can pass
# MetaSchedule's 30 s default, failing every candidate.
BUILD_TIMEOUT_S = 180
RUN_TIMEOUT_S = 120


def _builder():
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(max_workers=1, timeout_sec=BUILD_TIMEOUT_S)


def _runner():
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20))


def has_database(work: Path) -> bool:
    return (work / RECORD_FILE).is_file() and (work / RECORD_FILE).stat().st_size > 0


def open_database(work: Path):
    from tvm.s_tir import meta_schedule as ms

    work.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(work / WORKLOAD_FILE), path_tuning_record=str(work / RECORD_FILE))


def _records(db, mod: tvm.IRModule) -> list:
    if not db.has_workload(mod):
        return []
    return list(db.get_top_k(db.commit_workload(mod), 1 << 20))


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


def tune(mod: tvm.IRModule, target: tvm.target.Target, work: Path, total_trials: int, report: Callable[[str], None]) -> None:
    """Tune every kernel of `mod` (fused, unscheduled Relax + TIR) with about total_trials trials."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(mod, target)
    tasks = [t for t in tasks if not t.mod.attrs or not t.mod.attrs.get("tirx.is_scheduled", False)]
    if not tasks:
        return
    per_task = max(1, total_trials // len(tasks))
    db = open_database(work)
    # One builder and runner (worker process pools) for the whole run: pools started per
    # task were seen to hang MetaSchedule on this machine.
    builder, runner = _builder(), _runner()
    for i, task in enumerate(tasks, 1):
        task_mod = task.dispatched[0]
        done = len([r for r in _records(db, task_mod) if r.run_secs])
        label = f"task {i}/{len(tasks)} {task.task_name}"
        if done >= per_task:
            report(f"{label}: {done} records in the database, skipped")
            continue
        if done == 0:
            default = _measure_default(db, task_mod, target, builder, runner)
            if default is not None:
                report(f"{label}: default schedule {1e3 * default:.3f} ms")
                done = 1
            if done >= per_task:
                continue
        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts([task], str(work))
        ms.tune.tune_tasks(
            tasks=ctxs,
            task_weights=weights,
            work_dir=str(work),
            max_trials_global=per_task - done,
            max_trials_per_task=per_task - done,
            num_trials_per_iter=min(64, per_task - done),
            builder=builder,
            runner=runner,
            database=db,
        )
        best = _records(db, task_mod)
        best_ms = f", best {1e3 * sum(float(s) for s in best[0].run_secs) / len(best[0].run_secs):.3f} ms" if best and best[0].run_secs else ""
        report(f"{label}: {per_task - done} trials{best_ms}")


def tune_pass(target: tvm.target.Target, work: Path, total_trials: int, report: Callable[[str], None]) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="EdgefleetTune")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        tune(mod, target, work, total_trials, report)
        return mod

    return _pass
