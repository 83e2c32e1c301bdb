"""The static run plan (compiler/static_plan.py): what it records for a static `main`, and why a
`main` it cannot express gets none (the runtime then runs the VM, tests/runtime/test_runtime.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgefleet.compiler.static_plan import PLAN_FUNCTION, PLAN_VERSION, static_plan


def _finalized(mod):
    """`mod` through TVM's CPU pipeline (the finalize passes the plan reads), then the plan pass."""
    import tvm
    from tvm import relax

    target = tvm.target.Target("llvm")
    with target:
        lowered = relax.get_default_pipeline(target)(mod)
    notes: list[str] = []
    return static_plan(notes.append)(lowered), notes


def _plan(mod) -> tuple[dict, list]:
    func = mod[PLAN_FUNCTION]
    text, constants = func.body.body.fields
    return json.loads(text.value), list(constants.fields)


def _two_outputs_module():
    from tvm.script import ir as I
    from tvm.script import relax as R

    weight = np.arange(32, dtype=np.float32).reshape(8, 4)

    @I.ir_module
    class TwoOutputs:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")):
            with R.dataflow():
                y = R.matmul(x, R.const(weight))
                z = R.reshape(R.nn.relu(y), (4, 2))
                R.output(y, z)
            return (y, z)

    return TwoOutputs


def test_a_static_main_gets_a_plan_of_its_kernels_views_and_constants():
    mod, notes = _finalized(_two_outputs_module())
    plan, constants = _plan(mod)
    assert notes == []
    assert plan["version"] == PLAN_VERSION
    assert plan["inputs"] == [{"shape": [2, 8], "dtype": "float32"}]
    symbols = {
        str(f.attrs["global_symbol"])
        for gv, f in mod.functions_items()
        if gv.name_hint != "main" and "global_symbol" in f.attrs
    }
    assert plan["calls"] and {c["kernel"] for c in plan["calls"]} <= symbols
    values = plan["values"]
    assert values[0] == {"input": 0}
    # The matmul's weight is the one constant; every call argument is a value the plan made.
    assert len(constants) == 1 and np.array_equal(
        constants[0].value.numpy(), np.arange(32, dtype=np.float32).reshape(8, 4)
    )
    assert all(0 <= a < len(values) for c in plan["calls"] for a in c["args"])
    outputs = [values[i] for i in plan["outputs"]]
    assert [o.get("shape") for o in outputs] == [[2, 4], [4, 2]]
    assert all(size > 0 for size in plan["storages"])


@pytest.mark.parametrize(
    "source, reason",
    [
        (
            """
@R.function
def main(x: R.Tensor(("n",), "float32")):
    return R.nn.relu(x)
""",
            "a shape that is not static",
        ),
        (
            """
@R.function
def main(x: R.Tensor((4,), "float32")):
    y = R.call_pure_packed("edgefleet.test.identity", x, ty_args=R.Tensor((4,), "float32"))
    return R.nn.relu(y)
""",
            "the builtin edgefleet.test.identity",
        ),
    ],
    ids=["dynamic input", "other builtin"],
)
def test_a_main_the_plan_cannot_express_runs_on_the_vm_and_the_compile_says_why(source, reason):
    import tvm
    from tvm.script import ir as I  # noqa: F401 - the parsed source uses them
    from tvm.script import relax as R  # noqa: F401

    mod = tvm.script.from_source(source)
    if not isinstance(mod, tvm.IRModule):
        mod = tvm.IRModule({"main": mod})
    finalized, notes = _finalized(mod)
    assert PLAN_FUNCTION not in [gv.name_hint for gv in finalized.get_global_vars()]
    assert len(notes) == 1 and notes[0].startswith("no static run plan, the model runs on the Relax VM ("), notes
    assert reason in notes[0]


def test_a_planned_library_with_two_outputs_and_a_view_runs_what_its_vm_runs(tmp_path):
    """Built and run on the camera runtime (a process without TVM): the plan's outputs (one a
    reshaped view) equal the VM's on the same library, bit for bit, input after input."""
    import tvm
    from tvm import relax

    mod, _ = _finalized(_two_outputs_module())
    library = tmp_path / "two.so"
    relax.build(mod, target=tvm.target.Target("llvm"), relax_pipeline=None).export_library(str(library))
    code = f"""
import json, numpy as np
from edgefleet.agent.runtime import TvmModel
planned, vm = TvmModel({str(library)!r}), TvmModel({str(library)!r})
report = {{"executors": [planned.use_plan(True), vm.use_plan(False)], "runs": []}}
for k in range(3):
    x = np.random.default_rng(k).standard_normal((2, 8)).astype(np.float32)
    got, want = planned.run([x]), vm.run([x])
    report["runs"].append([[o.shape for o in got], all(np.array_equal(a, b) for a, b in zip(got, want)), got[0].tolist()])
print(json.dumps(report))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["executors"] == [True, False]
    weight = np.arange(32, dtype=np.float32).reshape(8, 4)
    for k, (shapes, same, first) in enumerate(report["runs"]):
        x = np.random.default_rng(k).standard_normal((2, 8)).astype(np.float32)
        assert shapes == [[2, 4], [4, 2]] and same
        np.testing.assert_allclose(first, x @ weight, rtol=1e-5, atol=1e-4)
