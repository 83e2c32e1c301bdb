"""ONNX's backend conformance suite run through edgefleet's compile path.

`EdgefleetBackend` is an `onnx.backend.base.Backend`: `prepare` checks the model the way
`edgefleet compile` does (operator check, import rewrites, input shapes), `run` builds it for the
x86_64 target with the same `optimize` / `build_with_fallback` functions, loads the library with the
agent's runtime (in the runtime worker) and executes it. Dynamic inputs get the shapes of the data they are run on,
as `--input-shape` would give them.

`run_suite` classifies every test case that ships in the onnx wheel as
  passed       outputs match ONNX's expected ones (the runner's own comparison and tolerances)
  wrong        the compiled model ran and gave a different answer: the state to eliminate
  unsupported  refused before building with an UnsupportedOperatorsError (a clear message)
  error        TVM failed to build or run it (BuildError, a crash, a timeout)
and writes them as JSON (format below), one record per case.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import re
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.errors import EdgefleetError, UnsupportedOperatorsError

RESULTS_FORMAT = 1
TARGET = "x86_64"
# Kinds of test data in the onnx wheel that run offline; "light" and "real" are whole networks
# (covered by the compiler's own model tests) and "real" needs downloads.
KINDS = ("node", "simple", "pytorch-converted", "pytorch-operator")
OUTCOMES = ("passed", "wrong", "unsupported", "error")

# Operator families vision models use (the "vision subset").
VISION_FAMILIES: dict[str, tuple[str, ...]] = {
    "conv": ("Conv", "ConvTranspose"),
    "pooling": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "MaxUnpool"),
    "normalization": ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization", "LRN"),
    "gemm/matmul": ("Gemm", "MatMul"),
    "elementwise": (
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "Pow",
        "Sqrt",
        "Exp",
        "Log",
        "Neg",
        "Abs",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Round",
        "Clip",
        "Where",
        "Equal",
        "Greater",
        "Less",
        "Not",
        "Cast",
    ),
    "shape": (
        "Concat",
        "Reshape",
        "Transpose",
        "Slice",
        "Gather",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Split",
        "Expand",
        "Shape",
        "Tile",
        "Identity",
        "DepthToSpace",
        "SpaceToDepth",
    ),
    "resize": ("Resize", "Upsample"),
    "pad": ("Pad",),
    "softmax": ("Softmax", "LogSoftmax"),
    "activations": (
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Tanh",
        "Elu",
        "Selu",
        "Celu",
        "Softplus",
        "Softsign",
        "Mish",
        "Gelu",
        "ThresholdedRelu",
    ),
    "topk/argmax": ("TopK", "ArgMax", "ArgMin"),
    "nms": ("NonMaxSuppression", "RoiAlign"),
}
VISION_OPS = {op: family for family, ops in VISION_FAMILIES.items() for op in ops}


@dataclass
class CaseResult:
    name: str
    kind: str
    operator: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0
    bound_inputs: list[str] = field(default_factory=list)  # inputs compiled as constants (--constant-input)
    pipeline: str = ""  # compiler/build.py's PIPELINE_*: tvm-default when edgefleet's CPU pipeline fell back
    kernel_fallbacks: list[str] = field(default_factory=list)  # "kernel (step)": kernels that fell back alone


class EdgefleetRep:
    """A prepared model: compiled once per set of input shapes (and bound values), run with the Relax VM."""

    def __init__(self, model, plain: bool = False) -> None:
        self.model = model
        self.plain = plain
        self._compiled: dict[tuple, CompiledCase] = {}
        self.last: CompiledCase | None = None

    def run(self, inputs, **kwargs) -> list[np.ndarray]:
        arrays = [np.asarray(x) for x in (inputs.values() if isinstance(inputs, dict) else inputs)]
        bound = set() if self.plain else _parameter_input_indices(self.model)
        key = tuple((a.shape, str(a.dtype), a.tobytes() if i in bound else None) for i, a in enumerate(arrays))
        if key not in self._compiled:
            self._compiled[key] = compile_for_inputs(self.model, arrays, plain=self.plain)
        self.last = self._compiled[key]
        return self.last.run(arrays)


@dataclass
class CompiledCase:
    """A compiled test model: the graph inputs bound at compile time are left out when it runs."""

    model: object  # a model on the camera runtime (agent.runtime_worker)
    bound: list[str]  # graph inputs given as --constant-input would give them
    pipeline: str  # compiler/build.py's PIPELINE_*
    kernel_fallbacks: list[str]  # CaseResult.kernel_fallbacks
    kept: list[bool]  # per graph input: still a run-time input

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self.model.run([a for a, keep in zip(arrays, self.kept) if keep])


def _parameter_input_indices(model) -> set[int]:
    from edgefleet.compiler.frontends import onnx as frontend
    from edgefleet.compiler.frontends.onnx.params import parameter_inputs

    needed = parameter_inputs(model)
    return {i for i, inp in enumerate(frontend._real_inputs(model)) if inp.name in needed}


def _backend_class():
    from onnx.backend.base import Backend

    class EdgefleetBackend(Backend):
        """onnx.backend entry point: `EdgefleetBackend.run_model(model, inputs)`."""

        @classmethod
        def supports_device(cls, device: str) -> bool:
            return device == "CPU"

        @classmethod
        def prepare(cls, model, device: str = "CPU", plain: bool = False, **kwargs) -> EdgefleetRep:
            """plain=True skips edgefleet's checks and rewrites: TVM's importer as it ships."""
            if not plain:
                check_model(model)
            return EdgefleetRep(model, plain)

        @classmethod
        def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
            raise NotImplementedError("edgefleet compiles whole models; use run_model")

    return EdgefleetBackend


def __getattr__(name: str):
    # onnx is imported lazily so `import edgefleet.compiler.conformance` stays cheap.
    if name == "EdgefleetBackend":
        return _backend_class()
    raise AttributeError(name)


def check_model(model) -> None:
    """What `edgefleet compile` checks before importing: operators and their attributes."""
    from edgefleet.compiler.compile import OperatorReport, unsupported_error
    from edgefleet.compiler.frontends import onnx as frontend

    report = OperatorReport("onnx", frontend.operators(model), frontend.unsupported(model))
    if not report.ok:
        raise unsupported_error(report, model.graph.name or "model")


def compile_for_inputs(model, arrays: list[np.ndarray], plain: bool = False) -> CompiledCase:
    """Import, optimize, build and export `model` for x86_64 with inputs shaped like `arrays`.

    Inputs that set values TVM needs at compile time (compiler/frontends/onnx/params.py: axes, scales,
    k, pads given as graph inputs) are bound to the case's values, as `--constant-input`
    does; the rest stay run-time inputs with the shapes of the data, as `--input-shape` gives.
    """
    from edgefleet.agent.runtime_worker import open_tvm_model
    from edgefleet.compiler.build import build_with_fallback, optimize
    from edgefleet.compiler.frontends import onnx as frontend
    from edgefleet.compiler.frontends.onnx.params import bind_inputs
    from edgefleet.compiler.targets import resolve_target
    from edgefleet.progress import Stages

    target = resolve_target(TARGET)
    names = [i.name for i in frontend._real_inputs(model)]
    if len(names) != len(arrays):
        raise UnsupportedOperatorsError(
            f"the model has {len(names)} inputs but {len(arrays)} were given (optional inputs)",
            "give every graph input",
        )
    bound_at = set() if plain else _parameter_input_indices(model)
    if bound_at:
        model = bind_inputs(model, {names[i]: arrays[i] for i in sorted(bound_at)})
    kept = [i not in bound_at for i in range(len(names))]
    inputs = frontend.input_specs(model, {n: list(a.shape) for n, a, keep in zip(names, arrays, kept) if keep})
    try:
        mod = (frontend.plain_import if plain else frontend.to_relax)(model, inputs)
    except EdgefleetError:
        raise
    except Exception as exc:  # the same wrapping as compile_model's import stage
        raise UnsupportedOperatorsError(
            f"TVM's onnx importer failed: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__}",
            "see docs/operators.md",
        ) from None
    stages = Stages(quiet=True)
    optimized = optimize(mod, target, 0, stages)
    with tempfile.TemporaryDirectory(prefix="edgefleet-conformance-") as tmp:
        library = Path(tmp) / "model.so"
        built = build_with_fallback(mod, optimized, target, library, stages)
        fallbacks = [f"{k.kernel} ({k.step})" for k in built.kernel_fallbacks]
        return CompiledCase(
            open_tvm_model(library), [names[i] for i in sorted(bound_at)], built.pipeline, fallbacks, kept
        )


# --- the suite -------------------------------------------------------------------------------

_SCHEMA_NAMES: list[str] = []


def case_operator(name: str, model) -> str:
    """The operator a test case is about: the single node's type, else the name's operator."""
    ops = {n.op_type for n in model.graph.node}
    if len(model.graph.node) == 1:
        return model.graph.node[0].op_type
    if not _SCHEMA_NAMES:
        import onnx.defs

        _SCHEMA_NAMES.extend(sorted({s.name for s in onnx.defs.get_all_schemas_with_history()}, key=len, reverse=True))
    stem = name.removeprefix("test_").replace("_", "").lower()
    for op in _SCHEMA_NAMES:
        if stem.startswith(op.lower()) and (op in ops or "expanded" in name or len(op) > 3):
            return op
    return "+".join(sorted(ops)) if len(ops) <= 2 else "model"


def _load_dir_case(model_dir: str):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.path.join(model_dir, "model.onnx"))
    data_sets = []
    for ds in sorted(Path(model_dir).glob("test_data_set_*")):
        ins = [
            numpy_helper.to_array(onnx.load_tensor(str(p)))
            for p in sorted(ds.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        ]
        outs = [
            numpy_helper.to_array(onnx.load_tensor(str(p)))
            for p in sorted(ds.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        ]
        data_sets.append((ins, outs))
    return model, data_sets


def list_cases(kinds: Iterable[str] = KINDS) -> dict:
    """name -> onnx TestCase, for every offline test case of the given kinds."""
    import warnings

    from onnx.backend.test.loader import load_model_tests

    cases = {}
    for kind in kinds:
        with warnings.catch_warnings():
            # onnx's case generators overflow on purpose (saturating-cast cases).
            warnings.simplefilter("ignore", RuntimeWarning)
            loaded = load_model_tests(kind=kind)
        for case in loaded:
            if case.model_dir is None and case.model is None:
                continue  # needs a download
            cases[case.name] = case
    return cases


def run_case(case, plain: bool = False) -> CaseResult:
    """Run one onnx TestCase through EdgefleetBackend and classify the outcome."""
    from onnx.backend.test.runner import Runner, _normalize_tensor

    start = time.perf_counter()
    if case.model is not None:
        model, data_sets = case.model, case.data_sets
    else:
        model, data_sets = _load_dir_case(case.model_dir)
    operator = case_operator(case.name, model)

    rep = None

    def result(outcome: str, detail: str = "") -> CaseResult:
        compiled = rep.last if rep is not None else None
        return CaseResult(
            case.name,
            case.kind,
            operator,
            outcome,
            detail[:400],
            round(time.perf_counter() - start, 3),
            compiled.bound if compiled else [],
            compiled.pipeline if compiled else "",
            compiled.kernel_fallbacks if compiled else [],
        )

    try:
        rep = _backend_class().prepare(model, plain=plain)
    except UnsupportedOperatorsError as exc:
        return result("unsupported", exc.cause)
    for inputs, expected in data_sets:
        inputs = [_normalize_tensor(x) for x in inputs]
        expected = [_normalize_tensor(x) if not isinstance(x, list) else x for x in expected]
        try:
            outputs = rep.run(inputs)
        except UnsupportedOperatorsError as exc:
            return result("unsupported", exc.cause)
        except EdgefleetError as exc:
            return result("error", f"{type(exc).__name__}: {exc.cause}")
        except Exception as exc:  # TVM's runtime raises many types
            text = str(exc).strip().splitlines()
            return result("error", f"{type(exc).__name__}: {text[-1] if text else ''}")
        try:
            Runner.assert_similar_outputs(expected, outputs, rtol=case.rtol, atol=case.atol)
        except Exception as exc:  # any mismatch, of values, shapes or kinds of output (e.g. a list for a sequence)
            return result("wrong", " ".join(f"{type(exc).__name__}: {exc}".split())[:400])
    return result("passed")


def _worker(kinds: tuple[str, ...], plain: bool, todo, done) -> None:
    import warnings

    warnings.simplefilter("ignore")
    cases = list_cases(kinds)
    while True:
        name = todo.get()
        if name is None:
            return
        done.put(asdict(run_case(cases[name], plain)))


def run_suite(
    names: list[str],
    *,
    workers: int = 1,
    kinds: tuple[str, ...] = KINDS,
    plain: bool = False,
    timeout_s: float = 120.0,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run the named cases in `workers` subprocesses; a crash or timeout fails only its case."""
    ctx = multiprocessing.get_context("spawn")
    pending: "queue.Queue[str]" = queue.Queue()
    for n in names:
        pending.put(n)
    results: list[CaseResult] = []
    retried: set[str] = set()
    lock = threading.Lock()

    def drive() -> None:
        proc = None
        todo = done = None
        while True:
            try:
                name = pending.get_nowait()
            except queue.Empty:
                break
            if proc is None or not proc.is_alive():
                todo, done = ctx.Queue(), ctx.Queue()
                proc = ctx.Process(target=_worker, args=(kinds, plain, todo, done), daemon=True)
                proc.start()
            todo.put(name)
            start = time.monotonic()
            # The first case of a worker also pays for importing TVM and loading the cases.
            while True:
                try:
                    res = CaseResult(**done.get(timeout=1.0))
                    break
                except queue.Empty:
                    if not proc.is_alive():
                        res = CaseResult(
                            name, "?", "?", "error", f"the build or run crashed the process (exit code {proc.exitcode})"
                        )
                        proc = None
                        if name not in retried:  # once more in a fresh process: a crash must repeat to count
                            retried.add(name)
                            pending.put(name)
                            res = None
                        break
                    if time.monotonic() - start > timeout_s + 30:
                        proc.kill()
                        proc.join()
                        res = CaseResult(name, "?", "?", "error", f"timed out after {timeout_s:.0f} s")
                        proc = None
                        break
            if res is None:
                continue
            with lock:
                results.append(res)
                if on_result:
                    on_result(res)
        if proc is not None and proc.is_alive():
            todo.put(None)
            proc.join(timeout=10)

    threads = [threading.Thread(target=drive) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results, key=lambda r: r.name)


def family(operator: str) -> str:
    return VISION_OPS.get(operator, "other")


def summarize(results: list[CaseResult], key: Callable[[CaseResult], str] = lambda r: r.operator) -> dict[str, Counter]:
    table: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        table[key(r)][r.outcome] += 1
    return dict(table)


def format_table(table: dict[str, Counter]) -> str:
    lines = [f"{'operator':32} {'cases':>5} " + " ".join(f"{o:>11}" for o in OUTCOMES)]
    total: Counter = Counter()
    for name in sorted(table):
        row = table[name]
        total.update(row)
        lines.append(f"{name:32} {sum(row.values()):5} " + " ".join(f"{row[o]:11}" for o in OUTCOMES))
    lines.append(f"{'TOTAL':32} {sum(total.values()):5} " + " ".join(f"{total[o]:11}" for o in OUTCOMES))
    return "\n".join(lines)


def save_results(path: Path, results: list[CaseResult], **meta) -> None:
    """Results JSON: {"format": 1, "tvm": ..., "onnx": ..., "cases": [CaseResult...]}."""
    from importlib.metadata import version

    doc = {
        "format": RESULTS_FORMAT,
        "tvm": version("apache-tvm"),
        "onnx": version("onnx"),
        **meta,
        "cases": [asdict(r) for r in results],
    }
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def load_results(path: Path) -> list[CaseResult]:
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: results format {doc.get('format')}, expected {RESULTS_FORMAT}")
    return [CaseResult(**c) for c in doc["cases"]]


def vision_case(name: str, operator: str) -> bool:
    """A case about a vision operator (its _expanded variants test other operators)."""
    return operator in VISION_OPS and not re.search(r"_expanded", name)


def vision_case_names(cases: dict | None = None) -> list[str]:
    cases = cases if cases is not None else list_cases()
    names = []
    for name, case in cases.items():
        model = case.model if case.model is not None else _load_dir_case(case.model_dir)[0]
        if vision_case(name, case_operator(name, model)):
            names.append(name)
    return sorted(names)


def read_pass_list(path: Path) -> list[str]:
    """Pass list: one case name a line; `#` starts a comment."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line]


def write_pass_list(path: Path, results: list[CaseResult], header: str) -> None:
    names = sorted(r.name for r in results if r.outcome == "passed")
    Path(path).write_text("".join(f"# {line}\n" for line in header.splitlines()) + "".join(f"{n}\n" for n in names))
