"""MetaSchedule tuning through edgefleet: kernels keep their own records, the database is reused
and resumed, the faster schedule wins, and the tuned build still matches ONNX Runtime.
The slow test makes real MetaSchedule builds and runs (minutes on 2 cores)."""

from __future__ import annotations

import fcntl
import json
import re

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.pipeline import fused_kernels

from edgefleet.compiler.targets import resolve_target

tvm = pytest.importorskip("tvm")
import tvm_ffi  # noqa: E402
from tvm import relax  # noqa: E402
from tvm.relax.frontend.onnx import from_onnx  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402

from edgefleet.compiler import tuning  # noqa: E402
from edgefleet.compiler.build import KernelFallbacks, _cpu_pipeline, tuning_dir, tvm_target  # noqa: E402
from edgefleet.compiler.schedules import schedule_func  # noqa: E402


def _model():
    """Two 3x3 convolutions of different shapes: same block names, so a record filed under the
    wrong one would still replay there without error."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])],
        [w1, w2],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _tasks(target, model):
    """The tasks tuning sees: the fused module of `_cpu_pipeline` before tuning."""
    fused = fused_kernels(model, tvm_target(target))
    return fused, ms.relax_integration.extract_tasks(fused, tvm.target.Target({**target.tvm_target, "num-cores": 1}))


def _tuned(line: str) -> bool:
    return re.search(r": \d+ trials", line) is not None


def _decided(line: str) -> bool:
    return line.endswith("schedule kept")


def _measured(line: str) -> bool:
    return _tuned(line) or _decided(line) or re.search(r"default schedule \d", line) is not None


def _same_schedule(a, b) -> bool:
    return tvm_ffi.structural_equal(a.mod["main"].body, b.mod["main"].body, map_free_vars=True)


def _record_count(work) -> int:
    return len((work / tuning.RECORD_FILE).read_text().splitlines())


class _Interrupted(Exception):
    pass


@pytest.mark.slow
def test_tuning_keeps_kernels_apart_resumes_reuses_and_applies_the_faster(edgefleet_home):
    target = resolve_target("x86_64")
    model = _model()
    fused, tasks = _tasks(target, model)
    convs = [t for t in tasks if "conv2d" in t.task_name]
    assert len(convs) == 2
    budget = 6
    shares = tuning.trial_shares(tasks, budget)
    assert all(s > 1 for t, s in zip(tasks, shares, strict=True) if t in convs), shares

    # Interrupted after the first task that finished (as Ctrl-C would be).
    first: list[str] = []

    def stop_after_trials(line: str) -> None:
        first.append(line)
        if _decided(line):
            raise _Interrupted("interrupted")

    with tvm_target(target), pytest.raises(Exception, match="interrupted"):
        _cpu_pipeline(target, budget, KernelFallbacks(stop_after_trials))(from_onnx(model, keep_params_in_input=False))
    interrupted_task = first[-1].split(":")[0].split()[-1]

    # Rerun: the finished task is skipped, the other conv is tuned now.
    second: list[str] = []
    with tvm_target(target):
        lowered = _cpu_pipeline(target, budget, KernelFallbacks(second.append))(
            from_onnx(model, keep_params_in_input=False)
        )
    assert any(
        line.endswith(
            f"{interrupted_task}: {shares[[t.task_name for t in tasks].index(interrupted_task)]} records in the database, skipped"
        )
        for line in second
    ), second
    assert sum(map(_tuned, second)) == 1, second

    # Every record belongs to exactly one kernel, filed under that kernel's own workload, in the
    # search's database and in the one compiles read.
    work = tuning_dir(target)
    per_task = {}
    for folder, fewest in ((work / tuning.SEARCH_DIR, 2), (work, 1)):
        db = tuning.open_database(folder)
        workloads = [json.loads(line)[0] for line in (folder / tuning.WORKLOAD_FILE).read_text().splitlines()]
        assert len(workloads) == len(set(workloads)) == len(convs)
        per_task = {t.task_name: tuning._records(db, t.dispatched[0]) for t in convs}
        for t in convs:
            assert fewest <= len(per_task[t.task_name]) <= shares[tasks.index(t)], (
                folder,
                t.task_name,
                len(per_task[t.task_name]),
            )
            assert all(tvm_ffi.structural_equal(r.workload.mod, t.dispatched[0]) for r in per_task[t.task_name])
        assert sum(map(len, per_task.values())) == len(db.get_all_tuning_records())

    # Same budget again: nothing is measured, every kernel comes from the database.
    before = _record_count(work)
    third: list[str] = []
    with tvm_target(target):
        _cpu_pipeline(target, budget, KernelFallbacks(third.append))(from_onnx(model, keep_params_in_input=False))
    assert not any(map(_measured, third)), third
    assert _record_count(work) == before

    # The default schedule competes side by side, and the applied schedule is the fastest.
    with tvm_target(target):
        applied = relax.transform.MetaScheduleApplyDatabase(str(work))(fused)
    for t in convs:
        records = per_task[t.task_name]
        default = schedule_func(t.dispatched[0]["main"], tvm_target(target))
        assert any(_same_schedule(r.as_measure_candidate().sch, default) for r in records), t.task_name
        fastest = min(records, key=tuning._mean).as_measure_candidate().sch
        got = applied[t.task_name]
        assert got.attrs["tirx.is_scheduled"]
        assert tvm_ffi.structural_equal(got.body, fastest.mod["main"].body, map_free_vars=True), t.task_name

    x = np.random.default_rng(1).random((1, 16, 8, 8), dtype=np.float32)
    vm = relax.VirtualMachine(tvm.compile(lowered, target=tvm_target(target), relax_pipeline=None), tvm.cpu())
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_database_written_by_two_handles_is_refused(tmp_path):
    """Two writers on one folder file the second kernel's record under the first kernel's line."""
    target = resolve_target("x86_64")
    _, tasks = _tasks(target, _model())
    tgt = tvm.target.Target({**target.tvm_target, "num-cores": 1})
    a, b = tuning.open_database(tmp_path), tuning.open_database(tmp_path)
    for db, task in zip((a, b), [t for t in tasks if "conv2d" in t.task_name], strict=True):
        mod = task.dispatched[0]
        sch = schedule_func(mod["main"], tgt)
        db.commit_tuning_record(
            ms.database.TuningRecord(
                sch.trace, db.commit_workload(mod), [1e-3], tgt, ms.arg_info.ArgInfo.from_prim_func(mod["main"])
            )
        )
    with pytest.raises(tuning.DatabaseError, match="record 2 does not fit"):
        tuning.check_database(tmp_path)


def test_one_writer_at_a_time(tmp_path):
    waits: list[str] = []
    with (
        tuning.writing(tmp_path, waits.append),
        open(tmp_path / tuning.LOCK_FILE) as other,
        pytest.raises(BlockingIOError),
    ):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with tuning.writing(tmp_path, waits.append):
        pass
    assert waits == []


def test_decision_says_whether_it_was_measured_side_by_side():
    """A search whose best is the default schedule runs nothing side by side: the log must not
    print one number twice as 'side by side default X, tuned X'."""
    same = tuning.Decision(0.000422, None).message()
    assert "side by side default" not in same and "not measured side by side" in same and "0.422 ms" in same
    assert same.endswith("default schedule kept")
    paired = tuning.Decision(0.000422, 0.000301).message()
    assert paired == "side by side default 0.422 ms, tuned 0.301 ms: tuned schedule kept"
    assert tuning.Decision(0.0003, 0.0004).message().endswith("default schedule kept")


def test_tuning_build_workers_lower_the_x86_int8_rescale_operator():
    """A tuning candidate of an x86 int8 kernel calls x86_intrin.RDHM_OP, which edgefleet registers at
    import: the builder's worker processes register it too (without, LocalBuilder's build fails)."""
    from tvm import te

    from edgefleet.compiler import graph
    from edgefleet.compiler.targets import ISA_LEVELS

    target = tvm_target(resolve_target(json.dumps({"kind": "llvm", **ISA_LEVELS["x86-64-v4"].tvm_target})))
    xs, qs = te.placeholder((4, 16), "int32", "x"), te.placeholder((1, 16), "int32", "q")
    out = graph.x86_rounding_doubling_high_mul(xs, qs)
    sch = tvm.s_tir.Schedule(te.create_prim_func([xs, qs, out]))
    sch.vectorize(sch.get_loops(sch.get_sblock(out.op.name))[-1])
    built = tuning._builder().build([ms.builder.BuilderInput(sch.mod, target)])[0]
    assert built.error_msg is None and built.artifact_path, built.error_msg
