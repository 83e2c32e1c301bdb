"""The camera runtime: TVM's runtime built from source, loaded through edgefleet's C ABI.

The bundles themselves are built once per machine by `scripts/setup.sh` (x86_64) and the cross
fixtures (aarch64, armv7), cached by input hash; these tests use them and build nothing but
the failures they provoke.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.cli import assert_cli_error
from support.old_agent import old_agent_site

from edgefleet.cross import runtime_build
from edgefleet.cross.runtime_build import TOOLCHAINS, build_runtime
from edgefleet.errors import MissingToolError, PackageIntegrityError, TargetNotRunnableError, UsageError
from edgefleet.package import RuntimeRequirement, TargetInfo, requirement_for
from edgefleet.runtime_bundle import (
    BUNDLE_ENV,
    CACHE_ENV,
    CudaInfo,
    check_runs,
    find_bundle,
    read_bundle,
    requirement_problems,
)
from edgefleet.signing import public_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cross"))
from tinycnn import write_tiny_cnn  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def host_bundle():
    return find_bundle()


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    from edgefleet.compiler.compile import compile_model
    from edgefleet.signing import create_signing_key

    tmp = tmp_path_factory.mktemp("runtime-pkg")
    key = create_signing_key(tmp / "signing.key")
    model = write_tiny_cnn(tmp / "tiny.onnx")
    result = compile_model(
        str(model), "x86_64", output=tmp / "tiny.tar.gz", name="tiny", version="1", key=key.path, quiet=True
    )
    return result, model, key


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_host_bundle_is_the_runtime_alone(host_bundle):
    info = host_bundle.info
    assert info.arch == "x86_64" and info.tvm_version == "0.27.0.post1" and info.tvm_ffi_version == "0.1.14.post0"
    assert set(info.libraries) == {
        "libedgefleet_runtime.so",
        "libtvm_runtime.so",
        "libtvm_runtime_extra.so",
        "libtvm_ffi.so",
    }
    size = sum((host_bundle.lib / name).stat().st_size for name in info.libraries)
    assert size < 10e6, size  # the compiler library alone is ~250 MB
    assert not (host_bundle.lib / "libtvm_compiler.so").exists()


def test_a_package_runs_in_a_process_that_never_imports_tvm(tiny_package):
    """What a camera does: the agent's load_model, no TVM Python package, outputs equal to onnxruntime's."""
    result, model, key = tiny_package
    code = f"""
import json, sys, numpy as np
from edgefleet.agent.runtime import load_model
from edgefleet.package import open_package
from edgefleet.signing import load_public_key
x = np.random.default_rng(5).random((1, 3, 32, 32), dtype=np.float32)
with open_package({str(result.package)!r}, [load_public_key({str(public_path(key.path))!r})]) as opened:
    model = load_model(opened)
    out = model.run([x])[0]
print(json.dumps({{"type": type(model).__name__, "out": out.tolist(), "tvm": "tvm" in sys.modules, "tvm_ffi": "tvm_ffi" in sys.modules}}))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["type"] == "TvmModel" and not report["tvm"] and not report["tvm_ffi"]
    import onnxruntime as ort

    x = np.random.default_rng(5).random((1, 3, 32, 32), dtype=np.float32)
    expected = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
    np.testing.assert_allclose(np.array(report["out"], np.float32), expected, atol=1e-5)
    assert float(np.ptp(expected)) > 0.01  # outputs that depend on the input, not a constant


def test_importing_the_compiler_after_the_runtime_is_refused_with_a_reason(tiny_package):
    result, _, _ = tiny_package
    code = f"""
from edgefleet.agent.runtime import TvmModel
from edgefleet.package import open_package
with open_package({str(result.package)!r}, None) as opened:
    TvmModel(opened.library)
try:
    import tvm
except ImportError as exc:
    print("refused:", exc)
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert "refused: tvm cannot be imported: this process runs models on the camera runtime" in proc.stdout


def test_verification_runs_on_the_camera_runtime(tiny_package, host_bundle):
    v = tiny_package[0].manifest.verification
    assert v.status == "passed" and v.ran_on == f"native x86_64 (model.so), edgefleet runtime {host_bundle.info.key}"


def test_a_corrupt_bundle_is_refused_naming_the_library(tiny_package, host_bundle, tmp_path, cli):
    bad = tmp_path / "bundle"
    shutil.copytree(host_bundle.path, bad, ignore=shutil.ignore_patterns("logs"))
    lib = bad / "lib" / "libtvm_runtime.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(PackageIntegrityError) as err:
        read_bundle(bad)
    assert "lib/libtvm_runtime.so is altered" in err.value.cause and "--force" in err.value.fix
    result, _, key = tiny_package
    image = tmp_path / "frame.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "run",
            str(result.package),
            "--image",
            str(image),
            "--trust",
            str(public_path(key.path)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, BUNDLE_ENV: str(bad)},
    )
    assert proc.returncode == PackageIntegrityError.exit_code, proc.stderr
    assert "libtvm_runtime.so is altered" in proc.stderr and "Traceback" not in proc.stderr


def test_runtime_show_names_the_bundle(cli, host_bundle):
    result = cli("runtime", "show", "--json")
    assert result.code == 0, result.text
    shown = json.loads(result.out)
    assert (
        shown["path"] == str(host_bundle.path)
        and shown["arch"] == "x86_64"
        and shown["glibc"] == host_bundle.info.glibc
    )


def _bundle_info(**changes):
    base = {
        "abi": 1,
        "arch": "aarch64",
        "tvm_version": "0.27.0.post1",
        "tvm_ffi_version": "0.1.14.post0",
        "glibc": "2.34",
        "libraries": {},
        "key": "k",
        "built_at": "t",
        "toolchain": "g++",
    }
    from edgefleet.runtime_bundle import RuntimeBundleInfo

    return RuntimeBundleInfo(**{**base, **changes})


NEED = RuntimeRequirement(arch="aarch64", tvm="0.27", tvm_ffi="0.1")
CUDA_NEED = RuntimeRequirement(
    arch="aarch64", tvm="0.27", tvm_ffi="0.1", device="cuda", cuda_sm="sm_87", cuda_version="12.6"
)
ORIN = CudaInfo(version="12.6", sms=["sm_87"])


@pytest.mark.parametrize(
    ("need", "have", "problem"),
    [
        (NEED, _bundle_info(), None),
        (NEED, _bundle_info(arch="armv7"), "architecture aarch64 vs armv7"),
        (NEED, _bundle_info(tvm_version="0.28.0"), "TVM 0.27 vs 0.28"),
        (NEED, _bundle_info(tvm_ffi_version="0.2.0"), "TVM FFI 0.1 vs 0.2"),
        (CUDA_NEED, _bundle_info(), "CUDA needed, the runtime has none"),
        (CUDA_NEED, _bundle_info(cuda=CudaInfo(version="12.6", sms=["sm_72"])), "GPU sm_87 vs sm_72"),
        (CUDA_NEED, _bundle_info(cuda=CudaInfo(version="11.4", sms=["sm_87"])), "CUDA 12.6 vs 11.4"),
        (CUDA_NEED, _bundle_info(cuda=ORIN), None),
        (NEED.model_copy(update={"device": "neuron"}), _bundle_info(), "device neuron has no edgefleet runtime"),
    ],
)
def test_requirement_checks(need, have, problem):
    problems = requirement_problems(need, have)
    assert problems == ([] if problem is None else [problem])


def test_a_refusal_names_both_sides(host_bundle):
    need = RuntimeRequirement(arch="x86_64", tvm="0.26", tvm_ffi="0.1")
    with pytest.raises(TargetNotRunnableError) as err:
        check_runs(need, host_bundle, "package cam 3 (x86_64)")
    assert "package cam 3 (x86_64) needs a runtime for x86_64, TVM 0.26, TVM FFI 0.1" in err.value.cause
    assert "is x86_64, TVM 0.27, TVM FFI 0.1, no CUDA: TVM 0.26 vs 0.27" in err.value.cause


def test_the_agent_refuses_a_package_for_another_tvm_before_loading_it(tiny_package, tmp_path):
    """A package whose manifest needs another runtime is refused from the manifest, naming both sides."""
    from edgefleet.agent.runtime import check_runnable
    from edgefleet.package import open_package

    with open_package(tiny_package[0].package, None) as opened:
        manifest = opened.manifest
    runtime = manifest.runtime.model_copy(
        update={"requires": manifest.runtime.requires.model_copy(update={"tvm": "0.30"})}
    )
    with pytest.raises(TargetNotRunnableError) as err:
        check_runnable(manifest.model_copy(update={"runtime": runtime}))
    assert "TVM 0.30 vs 0.27" in err.value.cause


def test_format_1_packages_get_their_requirement_derived():
    target = TargetInfo(name="jetson_orin", tvm_target={"kind": "cuda", "arch": "sm_87"}, arch="aarch64", device="cuda")
    need = requirement_for(target, "0.27.0.post1", "0.1.14.post0")
    assert need == RuntimeRequirement(arch="aarch64", tvm="0.27", tvm_ffi="0.1", device="cuda", cuda_sm="sm_87")


def _left_in(cache: Path) -> list[str]:
    """What a build left in its cache, but the lock file it held."""
    return sorted(p.name for p in cache.iterdir() if p.name != runtime_build.BUILD_LOCK)


def test_a_missing_cross_compiler_names_its_debian_package_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(MissingToolError) as err:
        build_runtime("armhf", quiet=True)
    assert (
        "arm-linux-gnueabihf-gcc" in err.value.cause
        and err.value.fix == f"apt-get install {TOOLCHAINS['armv7'].debian}"
    )
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_wrong_tvm_source_is_refused_with_both_hashes_and_nothing_is_left(tmp_path, monkeypatch, cli):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    fake = tmp_path / "tvm.tar.gz"
    fake.write_bytes(b"not the release")
    result = cli("runtime", "build", "--arch", "x86_64", "--tvm-source", fake, "-q")
    assert_cli_error(result, UsageError, "the pinned TVM source release has 221a3143")
    assert _left_in(tmp_path / "cache") == []


def test_a_failing_step_keeps_its_log_and_leaves_no_bundle(tmp_path, monkeypatch):
    """A compiler that fails mid-build: the error names the step and its log; no half-built bundle remains."""
    sources = find_bundle().path.parent / "sources"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    shutil.copytree(sources, tmp_path / "cache" / "sources")  # the pinned tvm-ffi sdist, downloaded once
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("gcc", "g++"):
        script = bin_dir / f"arm-linux-gnueabihf-{tool}"
        script.write_text("#!/bin/sh\necho 'cc1plus: fatal error: out of memory' >&2\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    from edgefleet.errors import BuildError

    with pytest.raises(BuildError) as err:
        build_runtime("armv7", quiet=True)
    assert "runtime build step `configure` for armv7" in err.value.cause
    assert (tmp_path / "cache" / "armv7.failed" / "logs" / "configure.log").is_file()
    assert _left_in(tmp_path / "cache") == ["armv7.failed", "sources"]


def test_a_tvm_ffi_edit_that_no_longer_applies_stops_the_build_naming_it(tmp_path, monkeypatch):
    """A tvm-ffi whose source moved on: the build stops at `unpack` instead of building it unedited."""
    sources = find_bundle().path.parent / "sources"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    shutil.copytree(sources, tmp_path / "cache" / "sources")
    monkeypatch.setattr(runtime_build, "FFI_EDITS", (("src/ffi/extra/library_module.cc", "no such code", "x"),))
    from edgefleet.errors import BuildError

    with pytest.raises(BuildError) as err:
        build_runtime("x86_64", quiet=True)
    assert "step `unpack` for x86_64 cannot edit tvm-ffi's src/ffi/extra/library_module.cc" in err.value.cause
    assert _left_in(tmp_path / "cache") == ["sources", "x86_64.failed"]


def test_a_second_build_is_a_cache_hit():
    first = build_runtime("x86_64", quiet=True)
    again = build_runtime("x86_64", quiet=True)
    assert again.path == first.path and again.info.built_at == first.info.built_at


def test_a_runtime_for_an_older_agent_speaks_its_c_abi_and_this_agent_passes_it_by(tmp_path, monkeypatch, cli):
    """Agent 0.1.0's shim (C ABI 1) built against the same TVM libraries, as for cameras still on it."""
    old = old_agent_site(tmp_path) / "edgefleet" / "agent" / "native"
    own = find_bundle()
    bundle = build_runtime("x86_64", quiet=True, abi_source=old)
    assert bundle.info.abi == 1 and bundle.path != own.path
    # In a process of its own: this one has the TVM wheel's libraries loaded.
    ask = "import ctypes, sys; print(ctypes.CDLL(sys.argv[1]).ef_abi_version())"
    said = subprocess.run([sys.executable, "-c", ask, bundle.lib / "libedgefleet_runtime.so"], capture_output=True)
    assert said.stdout == b"1\n", said
    assert find_bundle().path == own.path  # the cache holds both; this agent takes its own ABI's
    monkeypatch.setenv(BUNDLE_ENV, str(bundle.path))
    with pytest.raises(TargetNotRunnableError, match=r"\(ABI 1\); this agent needs x86_64 \(ABI 3\)"):
        find_bundle()
    (tmp_path / "empty").mkdir()
    result = cli("runtime", "build", "--arch", "x86_64", "--abi-source", tmp_path / "empty", "-q")
    assert_cli_error(result, UsageError, "holds no edgefleet C ABI: no `#define EF_ABI_VERSION`")


def test_vm_helpers_that_tvm_implements_in_python_run_on_the_camera_runtime(tmp_path):
    """relax.run.nonzero is a Python function in the TVM wheel; cameras get it from the C ABI library."""
    import onnx
    from onnx import TensorProto, helper

    from edgefleet.compiler.compile import compile_model
    from edgefleet.signing import create_signing_key

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2, "n"])
    model = helper.make_model(
        helper.make_graph([helper.make_node("NonZero", ["x"], ["y"])], "nz", [x], [y]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    onnx.save(model, tmp_path / "nz.onnx")
    key = create_signing_key(tmp_path / "k.key")
    pkg = compile_model(
        str(tmp_path / "nz.onnx"), "x86_64", output=tmp_path / "nz.tar.gz", key=key.path, verify=False, quiet=True
    ).package
    value = np.array([[0.0, -0.0, 2.5], [np.nan, 0.0, -1.0]], np.float32)  # -0.0 is zero, NaN is not (numpy's rules)
    code = f"""
import json, numpy as np
from edgefleet.agent.runtime import load_model
from edgefleet.package import open_package
with open_package({str(pkg)!r}, None) as opened:
    print(json.dumps(load_model(opened).run([np.array({value.tolist()!r}, np.float32)])[0].tolist()))
"""
    proc = _python(code.replace("nan", "float('nan')"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == np.stack(np.nonzero(value)).tolist() == [[0, 1, 1], [2, 0, 2]]


def test_loading_a_model_keeps_one_copy_of_its_weights(tmp_path):
    """The weights live in model.so; TVM's loader copies them once (the build edits tvm-ffi's
    second copy away), then into the VM's tensors.

    The C ABI library drops the mapped file's pages before the tensors are made and hands the
    loader's copy back (docs/runtime.md): after the load, the weights are in memory once, and at
    the load's peak twice, not four times.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgefleet.compiler.compile import compile_model
    from edgefleet.signing import create_signing_key

    rng = np.random.default_rng(3)
    weight = rng.normal(0, 0.05, (4096, 1024)).astype(np.float32)  # 16 MiB
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "big.onnx")
    key = create_signing_key(tmp_path / "k.key")
    pkg = compile_model(
        str(tmp_path / "big.onnx"), "x86_64", output=tmp_path / "big.tar.gz", key=key.path, verify=False, quiet=True
    ).package
    x = rng.random((1, 1024), dtype=np.float32)
    code = f"""
import json, re, numpy as np
from edgefleet.agent.runtime import TvmModel, _Runtime
from edgefleet.package import open_package
def kib(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
with open_package({str(pkg)!r}, None) as opened:
    _Runtime.get()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS: the peak of the load alone
    before = kib("VmRSS")
    model = TvmModel(opened.library)
    print(json.dumps({{"grew": kib("VmRSS") - before, "peak": kib("VmHWM") - before,
                      "y": model.run([np.array({x.tolist()!r}, np.float32)])[0].tolist()}}))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    weights_kib = weight.nbytes / 1024
    assert report["grew"] < 1.5 * weights_kib, report["grew"]  # was 2x: the mapped pages stayed
    assert report["peak"] < 2.5 * weights_kib, report["peak"]  # was 4x; 3x without the tvm-ffi edit
    np.testing.assert_allclose(np.array(report["y"], np.float32), x @ weight.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("spin", "expected"), [(False, ["0", "0"]), (True, ["300000", "5000"])])
def test_the_agents_runtime_settings_apply_before_the_workers_start(tiny_package, spin, expected):
    """[runtime] of the agent config reaches the camera runtime before its workers start: spinning
    off sets TVM_THREAD_POOL_SPIN_COUNT=0 and EDGEFLEET_POOL_SPIN=0 (over the environment's), on
    leaves them; a pool of 2 runs the model; changing spinning or the pool once the runtime runs
    is refused with a reason."""
    result, _, key = tiny_package
    code = f"""
import json, os, numpy as np
from edgefleet.agent.config import RuntimeConfig
from edgefleet.agent import runtime
from edgefleet.errors import UsageError
from edgefleet.package import open_package
from edgefleet.signing import load_public_key
runtime.configure_pool(RuntimeConfig(threads=2, spin={spin}))
with open_package({str(result.package)!r}, [load_public_key({str(public_path(key.path))!r})]) as opened:
    runtime.load_model(opened).run([np.zeros((1, 3, 32, 32), np.float32)])
runtime.configure_pool(RuntimeConfig(threads=1, spin={spin}))
refused = []
for change in ({{"spin": {not spin}}}, {{"pool": "tvm"}}):
    try:
        runtime.configure_pool(RuntimeConfig(threads=1, spin={spin}).model_copy(update=change))
        refused.append("")
    except UsageError as exc:
        refused.append(str(exc))
spins = [os.environ.get(name) for name in ("TVM_THREAD_POOL_SPIN_COUNT", "EDGEFLEET_POOL_SPIN")]
print(json.dumps({{"spin": spins, "refused": refused}}))
"""
    proc = _python(code, {"TVM_THREAD_POOL_SPIN_COUNT": "300000", "EDGEFLEET_POOL_SPIN": "5000"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["spin"] == expected
    assert "spinning cannot change" in report["refused"][0]
    assert "pool cannot change" in report["refused"][1]


@pytest.mark.parametrize(("threads", "workers"), [(1, 0), (2, 1)])
def test_the_configured_threads_run_a_model_on_any_thread(tiny_package, threads, workers):
    """`threads` holds on the thread that runs the model, not only the one that loaded it (TVM keeps
    a pool per thread), and on a 2-core machine without SMT two threads start a worker: TVM sized
    its pools from half the CPUs there (one), so `threads = 2` ran on one core."""
    result, _, key = tiny_package
    code = f"""
import json, os, threading, numpy as np
os.environ.pop("TVM_NUM_THREADS", None)
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])  # two CPUs, as on this project's CI
from edgefleet.agent.config import RuntimeConfig
from edgefleet.agent import runtime
from edgefleet.package import open_package
from edgefleet.signing import load_public_key
runtime.configure_pool(RuntimeConfig(threads={threads}))
x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
with open_package({str(result.package)!r}, [load_public_key({str(public_path(key.path))!r})]) as opened:
    model = runtime.load_model(opened)
    here = model.run([x])[0]
    seen = {{}}
    def elsewhere():
        before = len(os.listdir("/proc/self/task"))
        seen["y"] = model.run([x])[0]
        seen["workers"] = len(os.listdir("/proc/self/task")) - before
    t = threading.Thread(target=elsewhere)
    t.start(); t.join()
print(json.dumps({{"workers": seen["workers"], "same": bool(np.array_equal(here, seen["y"]))}}))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == {"workers": workers, "same": True}, report


def test_the_host_worker_runs_two_threads_after_a_one_thread_run(tiny_package):
    """The host's runtime worker (compile verification, `edgefleet bench`, the benchmarks) runs a
    model at one thread, then at two: the second run has a pool worker. TVM sizes a process's pool
    once, at its first run, so without TVM_NUM_THREADS a 2-CPU machine got a pool of one and every
    later `threads` of 2 ran on one core. Compared with a worker whose pool is held at one; both
    on TVM's pool (`[runtime] pool = "tvm"`), which is what TVM_NUM_THREADS sizes."""
    from edgefleet.agent.runtime_worker import RuntimeWorker, _native_env
    from edgefleet.package import open_package
    from edgefleet.signing import load_public_key

    result, _, key = tiny_package
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    tasks = {}
    with open_package(result.package, [load_public_key(public_path(key.path))]) as opened:
        tvm_pool = {**_native_env(), "EDGEFLEET_POOL": "tvm"}
        for case, env in (("native", tvm_pool), ("one", {**tvm_pool, "TVM_NUM_THREADS": "1"})):
            worker = RuntimeWorker(env=env)
            try:
                os.sched_setaffinity(worker.proc.pid, sorted(os.sched_getaffinity(0))[:2])  # as on CI
                model = worker.load(opened.library)
                for count in (1, 2):
                    worker.call({"op": "threads", "count": count})
                    model.timed_run([x], 1)
                tasks[case] = len(os.listdir(f"/proc/{worker.proc.pid}/task"))
            finally:
                worker.close()
    assert tasks["native"] == tasks["one"] + 1, tasks


@pytest.fixture(scope="module")
def parallel_double(tmp_path_factory):
    """A library whose one kernel is a parallel loop of 64 (y = 2x) that asserts, inside the loop,
    that every input is below 100: a task's failure is input-dependent."""
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R
    from tvm.script import tirx as T

    @I.ir_module
    class Double:
        @T.prim_func
        def double(x: T.Buffer((64,), "float32"), y: T.Buffer((64,), "float32")):
            for i in T.parallel(64):
                assert x[i] < T.float32(100), "an input of 100 or more"
                y[i] = x[i] * T.float32(2)

        @R.function
        def main(x: R.Tensor((64,), "float32")):
            return R.call_tir(Double.double, (x,), R.Tensor((64,), "float32"))

    path = tmp_path_factory.mktemp("pool") / "double.so"
    tvm.compile(Double, target="llvm").export_library(str(path))
    return path


def _pool_run(
    code: str, pool: str = "edgefleet", threads: int = 2, env: dict[str, str] | None = None, spin: bool = False
) -> dict:
    """Run `code` on the camera runtime with `pool` at `threads` (and `spin`, in `env`); `tasks()`
    reads the pool's counters on the calling thread (by the caller, by workers); the code prints
    `report`."""
    prelude = f"""
import ctypes, json, os, numpy as np
from edgefleet.agent import runtime
from edgefleet.agent.config import RuntimeConfig
runtime.configure_pool(RuntimeConfig(threads={threads}, pool={pool!r}, spin={spin!r}))
def tasks():
    caller, workers = ctypes.c_int64(), ctypes.c_int64()
    ok = runtime._Runtime.get().api.ef_pool_tasks(ctypes.byref(caller), ctypes.byref(workers))
    return [caller.value, workers.value] if ok == 0 else None
report = {{}}
"""
    proc = _python(prelude + code + "\nprint(json.dumps(report))", env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_edgefleets_pool_at_two_threads_computes_what_one_thread_and_tvms_pool_compute(tmp_path):
    """Convolutions large enough to run parallel (over PARALLEL_MIN_WORK): edgefleet's pool at two
    threads gives the outputs of one thread and of TVM's pool bit for bit, on inputs whose outputs
    differ, and its workers ran some of the tasks."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgefleet.compiler.compile import compile_model
    from edgefleet.signing import create_signing_key

    rng = np.random.default_rng(5)
    weights = [rng.normal(0, 0.2, shape).astype(np.float32) for shape in ((16, 3, 3, 3), (32, 16, 3, 3))]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 64, 64])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "convs.onnx")
    key = create_signing_key(tmp_path / "k.key")
    library = tmp_path / "convs.so"
    pkg = compile_model(
        str(tmp_path / "convs.onnx"), "x86_64", output=tmp_path / "convs.tar.gz", key=key.path, verify=False, quiet=True
    ).package
    from edgefleet.package import open_package

    with open_package(pkg, None) as opened:
        shutil.copy(opened.library, library)
    code = f"""
import hashlib
model = runtime.TvmModel({str(library)!r})
outputs = [model.run([np.random.default_rng(seed).random((1, 3, 64, 64), dtype=np.float32)])[0] for seed in range(3) for _ in range(10)]
report["digests"] = [hashlib.sha256(y.tobytes()).hexdigest() for y in outputs]
report["tasks"] = tasks()
"""
    # Edgefleet's workers spinning through every run, never, or as each model's runs choose (the default).
    run_spins = {"always": {"EDGEFLEET_POOL_RUN_SPIN": "1"}, "never": {"EDGEFLEET_POOL_RUN_SPIN": "0"}, "chosen": {}}
    runs = {
        (pool, threads, spin): _pool_run(code, pool, threads, run_spins[spin])
        for pool, threads, spin in (
            ("edgefleet", 1, "chosen"),
            ("edgefleet", 2, "chosen"),
            ("edgefleet", 2, "always"),
            ("edgefleet", 2, "never"),
            ("tvm", 2, "chosen"),
        )
    }
    digests = {case: run["digests"] for case, run in runs.items()}
    two = ("edgefleet", 2, "chosen")
    assert len(set(digests[two][::10])) == 3  # the inputs give different outputs
    assert all(d == digests[("edgefleet", 1, "chosen")] for d in digests.values())
    assert all(runs[("edgefleet", 2, spin)]["tasks"][1] > 0 for spin in run_spins), runs
    assert runs[("edgefleet", 1, "chosen")]["tasks"] is None and runs[("tvm", 2, "chosen")]["tasks"] is None


@pytest.mark.parametrize("between_runs", [False, True], ids=["through runs only", "control: between runs too"])
def test_workers_spinning_through_a_run_sleep_once_it_ends(parallel_double, between_runs):
    """EDGEFLEET_POOL_RUN_SPIN=1 keeps the idle workers spinning through every run, and the spin
    ends with the run: between runs the process uses no CPU. The control also spins between runs
    (`[runtime] spin` with a spin count of seconds) and is seen using it."""
    code = f"""
import time
model = runtime.TvmModel({str(parallel_double)!r})
for _ in range(20):
    model.run([np.arange(64, dtype=np.float32)])
start = time.process_time()
time.sleep(0.5)
report["cpu"] = time.process_time() - start
"""
    env = {"EDGEFLEET_POOL_RUN_SPIN": "1", **({"EDGEFLEET_POOL_SPIN": "200000000"} if between_runs else {})}
    report = _pool_run(code, env=env, spin=between_runs)
    assert (report["cpu"] > 0.2) if between_runs else (report["cpu"] < 0.05), report


def test_the_caller_runs_every_task_while_the_worker_is_held_back(parallel_double):
    """One CPU, the calling thread at real-time priority: the pool's worker cannot run until the
    caller sleeps. The launch completes with all 8 tasks (2 threads x 4) run by the caller; a pool
    that gives each worker its share waits for the worker forever."""
    code = f"""
os.sched_setaffinity(0, {{sorted(os.sched_getaffinity(0))[0]}})  # before the pool starts: its worker inherits it
model = runtime.TvmModel({str(parallel_double)!r})
x = np.arange(64, dtype=np.float32)
model.run([x])
before = tasks()
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
except PermissionError:
    report["skip"] = "no permission for SCHED_FIFO"
else:
    y = model.run([x])[0]
    after = tasks()
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    report.update(exact=bool(np.array_equal(y, 2 * x)), caller=after[0] - before[0], workers=after[1] - before[1])
"""
    report = _pool_run(code)
    if "skip" in report:
        pytest.skip(report["skip"])
    assert report == {"exact": True, "caller": 8, "workers": 0}, report


def test_a_failing_parallel_task_fails_the_run_with_its_error(parallel_double):
    """A task's error (on whichever thread ran it) is the run's error, and the pool runs on."""
    code = f"""
from edgefleet.errors import BadInputError
model = runtime.TvmModel({str(parallel_double)!r})
bad = np.arange(64, dtype=np.float32)
bad[45] = 100
try:
    model.run([bad])
    report["error"] = None
except BadInputError as exc:
    report["error"] = str(exc)
report["after"] = model.run([np.ones(64, np.float32)])[0].tolist()
"""
    report = _pool_run(code)
    assert "an input of 100 or more" in report["error"], report
    assert report["after"] == [2.0] * 64


def test_a_pool_made_and_dropped_at_once_stops_its_worker():
    """A pool of 2 replaced before its worker thread first ran: the worker took the destructor's
    post for the pool's start and waited for another, and the destructor's join with it (it hung
    every time within 2000 switches on the shim before, and the agent's settings test under load)."""
    code = """
from edgefleet.agent import runtime
api = runtime._Runtime.get().api
for _ in range(2000):
    assert api.ef_set_threads(2) == 0 and api.ef_set_threads(1) == 0
print("stopped")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["stopped"]


def test_a_model_keeps_its_run_arguments_until_the_inputs_change(parallel_double):
    """The C arguments of ef_model_run are built once per signature of inputs (shapes, dtypes) and
    kept: a run with other inputs builds them anew (here refused by the model), the next right one
    again, and every run reads its own input's data."""
    code = f"""
from edgefleet.errors import BadInputError
model = runtime.TvmModel({str(parallel_double)!r})
x = np.arange(64, dtype=np.float32)
first = model.run([x])[0]
kept = model._arguments
second = model.run([x + 1])[0]
report["kept"] = model._arguments is kept
try:
    model.run([np.ones(32, np.float32)])
except BadInputError as exc:
    report["other"] = str(exc)[:200]
report["rebuilt"] = model._arguments is not kept
report["runs"] = [first.tolist(), second.tolist(), model.run([x])[0].tolist()]
"""
    report = _pool_run(code, threads=1)
    x = np.arange(64, dtype=np.float32)
    assert report["kept"] and report["rebuilt"], report
    assert "the model failed to run" in report["other"], report
    assert report["runs"] == [(2 * x).tolist(), (2 * x + 2).tolist(), (2 * x).tolist()]


def _exported(library: Path) -> set[str]:
    nm = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}


def test_cpu_libraries_hold_the_vm_compiled_and_bytecode_ones_still_run(tiny_package, tmp_path, monkeypatch):
    """A CPU library holds the VM's `main` as machine code (TVM's exec_mode "compiled": the
    function __vmtir__main) instead of bytecode; a library built as before (bytecode, as in the
    packages in the field) runs on the same runtime with the same outputs."""
    from edgefleet.compiler import build
    from edgefleet.compiler.compile import compile_model
    from edgefleet.package import open_package

    result, model, key = tiny_package
    monkeypatch.setattr(build, "_exec_mode", lambda target: "bytecode")
    before = compile_model(
        str(model), "x86_64", output=tmp_path / "before.tar.gz", name="tiny", version="1", key=key.path, quiet=True
    )
    with open_package(result.package, None) as now, open_package(before.package, None) as old:
        assert "__tvm_ffi___vmtir__main" in _exported(now.library)
        assert "__tvm_ffi___vmtir__main" not in _exported(old.library)
        code = f"""
import json, numpy as np
from edgefleet.agent.runtime import TvmModel
x = np.random.default_rng(3).random((1, 3, 32, 32), dtype=np.float32)
print(json.dumps([TvmModel(p).run([x])[0].tolist() for p in ({str(now.library)!r}, {str(old.library)!r})]))
"""
        proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    compiled, bytecode = json.loads(proc.stdout.splitlines()[-1])
    assert compiled == bytecode
    assert float(np.ptp(np.array(compiled))) > 0.01  # outputs that depend on the input, not a constant


def test_a_large_input_is_written_into_the_tensor_of_the_last_run(tmp_path):
    """A 1 MiB input (over malloc's mmap threshold) is copied into the tensor the last run used: a
    new tensor per run was mapped, faulted in page by page and unmapped every run (256 minor page
    faults per run here). The output (16 values) depends on each run's input."""
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R
    from tvm.script import tirx as T

    @I.ir_module
    class Head:
        @T.prim_func
        def head(x: T.Buffer((262144,), "float32"), y: T.Buffer((16,), "float32")):
            for i in range(16):
                y[i] = x[i * 16384] * T.float32(2)

        @R.function
        def main(x: R.Tensor((262144,), "float32")):
            return R.call_tir(Head.head, (x,), R.Tensor((16,), "float32"))

    library = tmp_path / "head.so"
    tvm.compile(Head, target="llvm").export_library(str(library))
    code = f"""
import resource
from edgefleet.agent.runtime import TvmModel
model = TvmModel({str(library)!r})
xs = [np.full(262144, k, np.float32) for k in range(20)]
model.run([xs[0]])
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
report["heads"] = [model.run([x])[0].tolist() for x in xs]
report["faults_per_run"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(xs)
"""
    report = _pool_run(code, threads=1)
    assert report["heads"] == [[2.0 * k] * 16 for k in range(20)]
    assert report["faults_per_run"] < 32, report["faults_per_run"]  # 256 pages when mapped anew


def test_a_run_copies_its_outputs_in_its_one_c_call_while_their_shapes_stay(tmp_path):
    """After the first run, ef_model_run copies the outputs into fresh arrays it is handed (of the
    last run's shapes): no per-output calls. An output of another shape than the last run's is read
    one by one again, and every run returns its own arrays."""
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R
    from tvm.script import tirx as T

    @I.ir_module
    class Double:
        @T.prim_func
        def double(var_x: T.handle, var_y: T.handle):
            n = T.int64()
            x = T.match_buffer(var_x, (n,), "float32")
            y = T.match_buffer(var_y, (n,), "float32")
            for i in range(n):
                y[i] = x[i] * T.float32(2)

        @R.function
        def main(x: R.Tensor(("n",), "float32")):
            n = T.int64()
            return R.call_tir(Double.double, (x,), R.Tensor((n,), "float32"))

    library = tmp_path / "double.so"
    tvm.compile(Double, target="llvm").export_library(str(library))
    code = f"""
from edgefleet.agent.runtime import TvmModel
api = runtime._Runtime.get().api
model = TvmModel({str(library)!r})
calls = []
def counted(name):
    original = getattr(api, name)
    return lambda *args: calls.append(name) or original(*args)
outs, counts = [], []
for n in (64, 64, 64, 32, 32):
    before = len(calls)
    outs.append(model.run([np.arange(n, dtype=np.float32) + len(outs)]))
    counts.append(len(calls) - before)
    if len(outs) == 1:
        api.ef_model_output, api.ef_model_output_copy = counted("ef_model_output"), counted("ef_model_output_copy")
report["counts"] = counts[1:]
report["outs"] = [o[0].tolist() for o in outs]
report["shared"] = any(np.shares_memory(a[0], b[0]) for i, a in enumerate(outs) for b in outs[i + 1 :])
"""
    report = _pool_run(code, threads=1)
    assert report["counts"] == [0, 0, 2, 0], report["counts"]  # the shape change: one output, read in two calls
    assert report["outs"] == [(2 * (np.arange(n) + k)).tolist() for k, n in enumerate((64, 64, 64, 32, 32))]
    assert not report["shared"]


def test_x86_kernels_are_built_without_argument_checks_and_main_still_checks_the_inputs(tiny_package):
    """x86 CPU libraries hold no kernel argument checks (their messages, e.g. "Mismatched type on
    argument", are gone); the VM's `main` still refuses an input of the wrong shape or dtype. ARM
    builds keep the checks."""
    from edgefleet.compiler.build import _tir_config
    from edgefleet.compiler.targets import resolve_target
    from edgefleet.package import open_package

    result, _, _ = tiny_package
    with open_package(result.package, None) as pkg:
        assert b"on argument #" not in pkg.library.read_bytes()
        code = f"""
from edgefleet.agent.runtime import TvmModel
from edgefleet.errors import BadInputError
model = TvmModel({str(pkg.library)!r})
report["refused"] = []
for x in (np.zeros((1, 3, 32, 31), np.float32), np.zeros((1, 3, 32, 32), np.float64)):
    try:
        model.run([x])
    except BadInputError as exc:
        report["refused"].append("param=" in str(exc))
"""
        report = _pool_run(code, threads=1)
    assert report["refused"] == [True, True], report
    assert _tir_config(resolve_target("rasp4b")) == {} and _tir_config(resolve_target("armv7")) == {}


def test_a_static_model_runs_on_its_plan_bit_for_bit_what_the_vm_computes(tiny_package):
    """compile_model gives a static model a run plan (compiler/static_plan.py): the camera runtime
    runs it without the VM and computes exactly what the VM computes with the same library, input
    after input; an input the plan does not fit goes to the VM, whose checks refuse it, and the
    plan runs on after it."""
    from edgefleet.package import open_package

    result, _, _ = tiny_package
    with open_package(result.package, None) as pkg:
        code = f"""
from edgefleet.agent.runtime import TvmModel
from edgefleet.errors import BadInputError
planned, vm = TvmModel({str(pkg.library)!r}), TvmModel({str(pkg.library)!r})
report["executors"] = [planned.use_plan(True), vm.use_plan(False)]
rng = np.random.default_rng(3)
xs = [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(4)]
report["same"] = [all(np.array_equal(p, q) for p, q in zip(planned.run([x]), vm.run([x]))) for x in xs]
report["differ"] = not np.array_equal(planned.run([xs[0]])[0], planned.run([xs[1]])[0])
try:
    planned.run([np.zeros((1, 3, 32, 31), np.float32)])
    report["refused"] = False
except BadInputError as exc:
    report["refused"] = "param=" in str(exc)
report["after"] = np.array_equal(planned.run([xs[2]])[0], vm.run([xs[2]])[0])
"""
        report = _pool_run(code, threads=1)
    assert report == {"executors": [True, False], "same": [True] * 4, "differ": True, "refused": True, "after": True}
