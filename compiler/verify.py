"""Numeric verification: run the compiled model and a reference runtime on the same inputs."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from edgefleet.compiler.targets import Target
from edgefleet.package import TensorSpec, Verification

DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3


def sample_inputs(
    specs: list[TensorSpec],
    seed: int = 0,
    ranges: dict[str, tuple[int, int]] | None = None,
) -> dict[str, np.ndarray]:
    """Deterministic inputs in each dtype's plausible range (images are [0, 1] floats or bytes).

    `ranges` bounds integer inputs (inclusive) where the graph uses them as indices
    (see `model_feeds`); other integer inputs take values in [-128, 255] clipped to their dtype.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f" or spec.dtype == "bfloat16":  # numpy knows bfloat16 (ml_dtypes) as kind "V"
            feeds[spec.name] = rng.random(spec.shape, dtype=np.float32).astype(dtype)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            low, high = (ranges or {}).get(spec.name, (max(info.min, -128), min(info.max, 255)))
            feeds[spec.name] = rng.integers(low, high + 1, size=spec.shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(spec.shape) > 0.5
        else:
            raise ValueError(f"no sample inputs for dtype {spec.dtype}")
    return feeds


def model_feeds(frontend: ModuleType, model_path: Path, specs: list[TensorSpec], seed: int = 0) -> dict:
    """`sample_inputs` with integer inputs bounded by the graph's use of them (Gather indices stay
    inside the gathered axis), so the reference runtime accepts them."""
    ranges = frontend.integer_input_ranges(model_path, specs) if hasattr(frontend, "integer_input_ranges") else {}
    return sample_inputs(specs, seed, ranges)


def compare(
    actual: list[np.ndarray], expected: list[np.ndarray], atol: float, rtol: float
) -> tuple[float, float, bool]:
    """Max abs and rel differences over all outputs, and whether all are within atol + rtol*|expected|."""
    if len(actual) != len(expected):
        return float("inf"), float("inf"), False
    max_abs = max_rel = 0.0
    ok = True
    for a, e in zip(actual, expected):
        a = np.asarray(a, dtype=np.float64)
        e = np.asarray(e, dtype=np.float64)
        if a.shape != e.shape:
            if a.size != e.size:
                return float("inf"), float("inf"), False
            a = a.reshape(e.shape)
        diff = np.abs(a - e)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(e), 1e-6)).max()))
            ok = ok and bool(np.all(diff <= atol + rtol * np.abs(e)))
    return max_abs, max_rel, ok


def verify_on(
    model, ran_on: str, frontend: ModuleType, model_path: Path, inputs: list[TensorSpec], atol: float, rtol: float
) -> Verification:
    """Run `model` (anything with `.run(list)`: the camera runtime, natively or emulated) and the reference on the same inputs."""
    feeds = model_feeds(frontend, model_path, inputs)
    try:
        expected = frontend.reference_run(model_path, feeds)
    except Exception as exc:  # the runtimes raise their own types; this is a fact about the model, not a crash
        reason = f"{frontend.reference_name()} refused the sample inputs: {str(exc).strip()[:300]}"
        return Verification(status="skipped", reason=reason)
    actual = model.run([feeds[s.name] for s in inputs])
    max_abs, max_rel, ok = compare(actual, expected, atol, rtol)
    return Verification(
        status="passed" if ok else "failed",
        reference=frontend.reference_name(),
        ran_on=ran_on,
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        atol=atol,
        rtol=rtol,
    )


def verify_native(
    library: Path, frontend: ModuleType, model_path: Path, inputs: list[TensorSpec], atol: float, rtol: float
) -> Verification:
    """Verify on this machine's camera runtime (the bundle cameras run), never on the compiler's TVM."""
    from edgefleet.agent.runtime_worker import shared_worker

    worker = shared_worker()
    runtime = worker.describe()
    return verify_on(
        worker.load(library),
        f"native x86_64 ({Path(library).name}), edgefleet runtime {runtime['runtime_key']}",
        frontend,
        model_path,
        inputs,
        atol,
        rtol,
    )


def skipped(target: Target, reason: str) -> Verification:
    return Verification(status="skipped", reason=reason)
