"""Compiled libraries run on the camera runtime in a child process, for callers that cannot load it.

A process that imported TVM's compiler (`edgefleet compile`, the conformance job, the tests)
holds TVM's own libtvm_runtime; the camera runtime cannot be loaded beside it. Verification,
drift baselines and benchmarks therefore run the library here, on exactly the runtime a
camera runs, natively or, with an emulator prefix, inside an ARM sysroot under QEMU.

Protocol on the child's stdin/stdout: frames of a 4-byte big-endian length and a payload. A
message is one JSON header frame, then one frame of raw bytes per array; the header's `arrays`
lists each array's dtype name and shape (not pickle or .npy: the two sides may run different
numpy versions, and .npy cannot carry ml_dtypes' float8/bfloat16 types).

    {"op": "load", "library": PATH, "device": "cpu"}      -> {"id": N, "load_s": S}
    {"op": "run", "id": N, "repeat": R} + inputs          -> {"run_ms": [...]} + outputs
    {"op": "free", "id": N}                               -> {}
    {"op": "threads", "count": N}                         -> {}
    {"op": "describe"}                                    -> {"machine": ..., "runtime": ...}
Every reply has "ok"; a failure is {"ok": false, "kind": ERROR CLASS, "error": ..., "fix": ...}.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edgefleet import errors
from edgefleet.agent.runtime import numpy_dtype
from edgefleet.errors import BuildError, EdgefleetError

_LENGTH = struct.Struct(">I")


def _write_frame(out: BinaryIO, payload: bytes) -> None:
    out.write(_LENGTH.pack(len(payload)) + payload)


def _read_frame(src: BinaryIO) -> bytes:
    head = src.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the other side closed the pipe")
    size = _LENGTH.unpack(head)[0]
    payload = src.read(size)
    if len(payload) < size:
        raise EOFError("the other side closed the pipe mid-message")
    return payload


def send(out: BinaryIO, header: dict, arrays: Sequence[np.ndarray] = ()) -> None:
    meta = [{"dtype": a.dtype.name, "shape": list(a.shape)} for a in arrays]
    _write_frame(out, json.dumps({**header, "arrays": meta}).encode())
    for array in arrays:
        _write_frame(out, np.ascontiguousarray(array).tobytes())
    out.flush()


def receive(src: BinaryIO) -> tuple[dict, list[np.ndarray]]:
    header = json.loads(_read_frame(src))
    arrays = [
        np.frombuffer(bytearray(_read_frame(src)), numpy_dtype(m["dtype"])).reshape(m["shape"])
        for m in header["arrays"]
    ]
    return header, arrays


# ---- the child ---------------------------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        self.models: dict[int, object] = {}
        self.next_id = 1

    def handle(self, header: dict, arrays: list[np.ndarray]) -> tuple[dict, list[np.ndarray]]:
        from edgefleet.agent import runtime

        op = header["op"]
        if op == "load":
            start = time.perf_counter()
            model = runtime.TvmModel(Path(header["library"]), header.get("device", "cpu"))
            model_id, self.next_id = self.next_id, self.next_id + 1
            self.models[model_id] = model
            return {"id": model_id, "load_s": time.perf_counter() - start}, []
        if op == "run":
            model = self.models[header["id"]]
            times, outputs = [], []
            for _ in range(max(1, int(header.get("repeat", 1)))):
                start = time.perf_counter()
                outputs = model.run(arrays)
                times.append((time.perf_counter() - start) * 1000)
            return {"run_ms": times}, outputs
        if op == "free":
            self.models.pop(header["id"], None)
            return {}, []
        if op == "threads":
            runtime.set_threads(int(header["count"]))
            return {}, []
        if op == "describe":
            bundle = runtime.find_bundle()
            return {
                "machine": platform.machine(),
                "runtime": str(bundle.path),
                "runtime_key": bundle.info.key,
                "runtime_info": bundle.info.describe(),
            }, []
        raise errors.UsageError(f"unknown worker operation {op!r}", "")


def serve(src: BinaryIO, out: BinaryIO) -> None:
    server = _Server()
    while True:
        try:
            header, arrays = receive(src)
        except EOFError:
            return
        try:
            reply, results = server.handle(header, arrays)
            send(out, {"ok": True, **reply}, results)
        except EdgefleetError as exc:
            send(out, {"ok": False, "kind": type(exc).__name__, "error": exc.cause, "fix": exc.fix})
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            send(
                out,
                {"ok": False, "kind": "BuildError", "error": f"{type(exc).__name__}: {exc}", "fix": "report the model"},
            )


def main() -> int:
    # Frames own stdout: anything printed by accident goes to stderr instead.
    out = sys.stdout.buffer
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, out)
    return 0


# ---- the parent --------------------------------------------------------------------------


class RuntimeWorker:
    """A child process that runs libraries on the camera runtime.

    `argv` starts a Python that can import edgefleet.agent (default: this interpreter); the
    cross module passes `qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11` and its env.
    """

    def __init__(
        self, argv: Sequence[str] | None = None, env: dict[str, str] | None = None, what: str = "the camera runtime"
    ) -> None:
        command = [*(argv or [sys.executable]), "-m", "edgefleet.agent.runtime_worker"]
        self.what = what
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or _native_env()
        )

    def call(self, header: dict, arrays: Sequence[np.ndarray] = ()) -> tuple[dict, list[np.ndarray]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            send(self.proc.stdin, header, arrays)
            reply, results = receive(self.proc.stdout)
        except (EOFError, BrokenPipeError):
            raise BuildError(
                f"{self.what} stopped (exit {self.proc.wait()}): {self._stderr_tail()}",
                "the library does not run on this runtime; report the model and target",
            ) from None
        if not reply["ok"]:
            kind = getattr(errors, reply["kind"], BuildError)
            raise kind(reply["error"], reply.get("fix", ""))
        return reply, results

    def _stderr_tail(self) -> str:
        assert self.proc.stderr is not None
        lines = [ln for ln in self.proc.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1][:300] if lines else "no output"

    def describe(self) -> dict:
        """The machine and the runtime bundle the worker runs on."""
        return self.call({"op": "describe"})[0]

    def load(self, library: Path, device: str = "cpu") -> WorkerModel:
        reply, _ = self.call({"op": "load", "library": str(Path(library).resolve()), "device": device})
        return WorkerModel(self, reply["id"], reply["load_s"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> RuntimeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkerModel:
    """TvmModel's interface (`run`) over a RuntimeWorker."""

    def __init__(self, worker: RuntimeWorker, model_id: int, load_s: float) -> None:
        self.worker, self.id, self.load_s = worker, model_id, load_s

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.timed_run(inputs, 1)[0]

    def timed_run(self, inputs: Sequence[np.ndarray], repeat: int) -> tuple[list[np.ndarray], list[float]]:
        reply, outputs = self.worker.call({"op": "run", "id": self.id, "repeat": repeat}, list(inputs))
        return outputs, reply["run_ms"]

    def __del__(self) -> None:
        # The worker outlives its models (it serves a whole conformance run): free the library.
        try:
            if self.worker.proc.poll() is None:
                self.worker.call({"op": "free", "id": self.id})
        except (EdgefleetError, OSError, ValueError):
            pass  # the worker is gone or closing: nothing left to free


def _native_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    # TVM sizes the worker's pool once, when the first model runs: a verification at one thread
    # first left a later `threads` op of 2 on that one thread (isa_variants --threads 2 after its
    # compile ran every package on one core). Sized to the CPUs, `ef_set_threads` uses fewer of it.
    env.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    return env


_shared: RuntimeWorker | None = None


def shared_worker() -> RuntimeWorker:
    """One native worker per process, started on first use and stopped at exit."""
    global _shared
    if _shared is None or _shared.proc.poll() is not None:
        _shared = RuntimeWorker()
        atexit.register(_shared.close)
    return _shared


def open_tvm_model(library: Path, device: str = "cpu"):
    """A model on the camera runtime: in this process when it can load there, else in the shared worker."""
    if "tvm" in sys.modules:
        return shared_worker().load(library, device)
    from edgefleet.agent.runtime import TvmModel

    return TvmModel(library, device)


if __name__ == "__main__":
    sys.exit(main())
