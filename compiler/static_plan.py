"""A static run plan for CPU models whose every tensor has a static shape (the camera runtime's
fast path, agent/native/edgefleet_runtime.cc).

After TVM's memory planning, a static model's `main` is a straight line: allocate storages, view
tensors in them, call kernels, free. The Relax VM repeats all of it every run (a Tensor object per
intermediate, a register clear per free): int8 MobileNetV2-0.35 on x86 ran 0.122 ms per inference
on its VM and 0.114 ms on its plan (docs/performance.md, "A static run plan"). This pass reads that line once, at compile time, and adds a Relax function `edgefleet_plan`
to the library: it returns the plan (PLAN_VERSION, JSON) and the constants the kernels take (the
VM's own constants, not a copy). The runtime allocates the storages and views once at load and then
runs only the kernel calls. `main` stays: the runtime falls back to it for inputs the plan does not
fit (the VM's checks then say what is wrong) and for libraries without a plan.

A `main` with anything else (dynamic shapes, control flow, other builtins, a storage offset) gets no
plan and runs on the VM as before.
"""

from __future__ import annotations

import json

PLAN_FUNCTION = "edgefleet_plan"
PLAN_VERSION = 1

# Bindings that only check the inputs or free registers: the plan checks the inputs itself (their
# shapes and dtypes are static) and frees nothing between runs.
_SKIPPED_BUILTINS = ("vm.builtin.check_tensor_info", "vm.builtin.match_shape")
_SKIPPED_OPS = ("relax.null_value", "relax.vm.kill_object")


class _NoPlan(Exception):
    """`main` has something a static plan cannot express (the message says what)."""


def static_plan(note=None):
    """The pass: add `edgefleet_plan` to a finalized CPU module whose `main` allows one.
    `note(text)` hears why a module gets none."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="EdgefleetStaticPlan")
    def _pass(mod, _ctx):
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            return mod
        try:
            plan, constants = _Planner(mod).plan(mod["main"])
        except _NoPlan as reason:
            if note is not None:
                note(f"no static run plan, the model runs on the Relax VM ({reason})")
            return mod
        return _with_plan_function(mod, plan, constants)

    return _pass


def _with_plan_function(mod, plan: dict, constants: list):
    import tvm
    from tvm import relax

    text = tvm.ir.StringImm(json.dumps(plan, separators=(",", ":")))
    func = relax.Function([], relax.Tuple([text, relax.Tuple(constants)]), is_pure=True)
    mod = mod.clone()
    mod[PLAN_FUNCTION] = func.with_attr("global_symbol", PLAN_FUNCTION)
    return mod


def _static_shape(shape_expr) -> list[int]:
    from tvm import relax, tirx

    if not isinstance(shape_expr, relax.ShapeExpr) or not all(isinstance(v, tirx.IntImm) for v in shape_expr.values):
        raise _NoPlan(f"a shape that is not static: {shape_expr}")
    return [int(v) for v in shape_expr.values]


def _int(value, what: str) -> int:
    from tvm import tirx

    if isinstance(value, tirx.IntImm):
        return int(value)
    raise _NoPlan(f"{what} is not a constant integer")


class _Planner:
    """One walk over `main`'s bindings; values (inputs, views in storages, constants) are numbered
    in the order they appear."""

    def __init__(self, mod) -> None:
        from tvm import tirx

        self.kernels = {gv: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
        self.values: list[dict] = []
        self.storages: list[int] = []
        self.calls: list[dict] = []
        self.constants: list = []
        self.index: dict = {}  # relax.Var -> value number, or ("storage", number)
        self.constant_index: dict = {}  # constant -> value number

    def plan(self, main) -> tuple[dict, list]:
        from tvm import relax

        if not isinstance(main.body, relax.SeqExpr):
            raise _NoPlan("main is not a sequence of bindings")
        inputs = [self._input(i, param) for i, param in enumerate(main.params)]
        for block in main.body.blocks:
            if isinstance(block, relax.DataflowBlock):
                raise _NoPlan("main still has a dataflow block")
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    raise _NoPlan(f"a binding the plan cannot take: {type(binding).__name__}")
                self._bind(binding.var, binding.value)
        outputs = self._outputs(main.body.body)
        plan = {
            "version": PLAN_VERSION,
            "inputs": inputs,
            "storages": self.storages,
            "values": self.values,
            "calls": self.calls,
            "outputs": outputs,
        }
        return plan, self.constants

    def _input(self, i: int, param) -> dict:
        from tvm import relax

        ty = param.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise _NoPlan(f"input {param.name_hint} is not a tensor of known shape")
        self.index[param] = self._value({"input": i})
        return {"shape": _static_shape(ty.shape), "dtype": str(ty.dtype)}

    def _value(self, value: dict) -> int:
        self.values.append(value)
        return len(self.values) - 1

    def _bind(self, var, value) -> None:
        import tvm
        from tvm import relax

        if not isinstance(value, relax.Call):
            raise _NoPlan(f"a binding that is not a call: {type(value).__name__}")
        op = value.op
        if isinstance(op, relax.ExternFunc):
            self._builtin(var, str(op.global_symbol), value.args)
        elif isinstance(op, tvm.ir.GlobalVar):
            self._kernel(op, value.args)
        elif isinstance(op, tvm.ir.Op):
            self._operator(var, op.name, value.args)
        else:
            raise _NoPlan(f"a call the plan cannot take: {op}")

    def _builtin(self, var, name: str, args) -> None:
        if name in _SKIPPED_BUILTINS:
            return
        if name == "vm.builtin.reshape":
            source, shape = args
            view = {"view": self._tensor(source), "shape": _static_shape(shape), "dtype": str(source.ty.dtype)}
            self.index[var] = self._value(view)
            return
        raise _NoPlan(f"the builtin {name}")

    def _operator(self, var, name: str, args) -> None:
        if name in _SKIPPED_OPS:
            return
        if name == "relax.vm.alloc_storage":
            shape, device, dtype, scope = args
            if _int(device, "a storage's device") != 0 or str(scope.value) != "global":
                raise _NoPlan("a storage on another device or scope")
            if str(dtype.value) != "uint8":
                raise _NoPlan("a storage that is not bytes")
            (size,) = _static_shape(shape)
            self.storages.append(size)
            self.index[var] = ("storage", len(self.storages) - 1)
            return
        if name == "relax.vm.alloc_tensor":
            storage, offset, shape, dtype, _device = args
            where = self.index.get(storage)
            if not isinstance(where, tuple):
                raise _NoPlan("a tensor in a storage the plan did not allocate")
            if _int(offset, "a tensor's offset") != 0:
                raise _NoPlan("a tensor at an offset in its storage")
            value = {"storage": where[1], "shape": _static_shape(shape), "dtype": str(dtype.value)}
            self.index[var] = self._value(value)
            return
        raise _NoPlan(f"the operator {name}")

    def _kernel(self, gv, args) -> None:
        func = self.kernels.get(gv)
        if func is None:
            raise _NoPlan(f"a call to {gv.name_hint}, which is not a kernel")
        symbol = func.attrs.get("global_symbol") if func.attrs is not None else None
        if symbol is None:
            raise _NoPlan(f"the kernel {gv.name_hint} has no symbol")
        self.calls.append({"kernel": str(symbol), "args": [self._tensor(a) for a in args]})

    def _tensor(self, expr) -> int:
        import tvm
        from tvm import relax

        if isinstance(expr, relax.Var):
            number = self.index.get(expr)
            if not isinstance(number, int):
                raise _NoPlan(f"{expr.name_hint} is not a tensor the plan made")
            return number
        if isinstance(expr, tvm.ir.GenericConst) and isinstance(expr.value, tvm.runtime.Tensor):
            if expr not in self.constant_index:  # the same constant object: one value
                self.constant_index[expr] = self._value({"constant": len(self.constants)})
                self.constants.append(expr)
            return self.constant_index[expr]
        raise _NoPlan(f"an argument that is not a tensor: {type(expr).__name__}")

    def _outputs(self, expr) -> list[int]:
        from tvm import relax

        if isinstance(expr, relax.Tuple):
            return [number for field in expr.fields for number in self._outputs(field)]
        return [self._tensor(expr)]
