"""A generic x86_64 package carries one library per ISA level (x86-64-v3 as model.so, x86-64-v4 beside it),
each verified against ONNX Runtime where this CPU runs it; the agent loads the best one the CPU has
(agent/variants.py), falls back to the portable one, and agents that know one library still read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from support.old_agent import old_agent_site
from test_package_inspect_run import png, read_member, repack  # tests/compiler is on sys.path

from edgefleet.agent.variants import FLAGS_ENV, FORCE_ENV, cpu_flags, force_library, select_library
from edgefleet.errors import PackageIntegrityError, TargetNotRunnableError, UsageError
from edgefleet.package import VARIANTS, LibraryVariants, open_package

V4 = "model.x86-64-v4.so"
HAS_AVX512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= cpu_flags()


@pytest.fixture(scope="module")
def generic(package_for):
    return package_for("small_cnn", "x86_64")


pytestmark = pytest.mark.usefixtures("no_forced_library")


def test_x86_64_package_lists_each_library_with_its_isa_features_hash_and_verification(generic):
    listed = LibraryVariants.model_validate_json(read_member(generic.package, VARIANTS))
    assert [(v.isa, v.library) for v in listed.variants] == [("x86-64-v4", V4), ("x86-64-v3", "model.so")]
    v4, v3 = listed.variants
    assert {"avx512f", "avx512bw", "avx512vl"} <= set(v4.cpu_features) and "avx512f" not in v3.cpu_features
    assert {"avx2", "fma"} <= set(v3.cpu_features) and v4.tvm_target["mcpu"] == "x86-64-v4"
    manifest = generic.manifest
    assert manifest.runtime.library == "model.so" and {"model.so", V4, VARIANTS} <= set(manifest.files)
    assert manifest.verification.status == "passed" and "(model.so)" in manifest.verification.ran_on
    assert v3.verification == manifest.verification
    if HAS_AVX512:
        assert v4.verification.status == "passed" and f"({V4})" in v4.verification.ran_on
    else:
        assert v4.verification.status == "skipped" and "this CPU lacks" in v4.verification.reason


@pytest.mark.skipif(not HAS_AVX512, reason="this CPU has no AVX-512")
def test_agent_picks_the_avx512_library_on_this_cpu_and_run_says_so(generic, session_pub, tmp_path, cli):
    with open_package(generic.package, None) as opened:
        choice = select_library(opened)
    assert (choice.library, choice.isa, choice.why) == (V4, "x86-64-v4", "best this CPU runs")
    image = png(tmp_path / "frame.png")
    result = cli("run", generic.package, "--image", image, "--trust", session_pub, "--repeat", "1", "--json")
    assert result.code == 0, result.text
    assert json.loads(result.out)["library"] == f"{V4} (x86-64-v4, best this CPU runs)"


def _run(cli, generic, session_pub, tmp_path) -> dict:
    result = cli(
        "run",
        generic.package,
        "--image",
        png(tmp_path / "frame.png"),
        "--trust",
        session_pub,
        "--repeat",
        "1",
        "--json",
    )
    assert result.code == 0, result.text
    return json.loads(result.out)


def test_portable_library_when_forced_by_env_or_config(generic, session_pub, tmp_path, cli, monkeypatch):
    force_library("model.so")  # [runtime] library in the agent config, by member name
    assert _run(cli, generic, session_pub, tmp_path)["library"] == "model.so (x86-64-v3, forced by [runtime] library)"
    monkeypatch.setenv(FORCE_ENV, "x86-64-v3")  # the environment, by ISA level, wins over the config
    assert _run(cli, generic, session_pub, tmp_path)["library"] == f"model.so (x86-64-v3, forced by {FORCE_ENV})"
    monkeypatch.setenv(FORCE_ENV, "x86-64-v9")
    with open_package(generic.package, None) as opened, pytest.raises(UsageError, match="x86-64-v9.*not a library"):
        select_library(opened)


def test_portable_library_on_a_simulated_cpu_without_avx512_flags(generic, session_pub, tmp_path, cli, monkeypatch):
    """EDGEFLEET_CPU_FLAGS stands in for /proc/cpuinfo: this CPU's flags less avx512f, as on an AVX2-only CPU."""
    monkeypatch.setenv(FLAGS_ENV, " ".join(sorted(cpu_flags() - {"avx512f"})))
    out = _run(cli, generic, session_pub, tmp_path)
    assert out["library"] == "model.so (x86-64-v3, best this CPU runs)" and out["predictions"]


def test_simulated_cpu_without_avx2_flags_is_refused_before_loading(generic, monkeypatch):
    monkeypatch.setenv(FLAGS_ENV, "sse4_1,sse4_2,ssse3,popcnt,cx16")
    with open_package(generic.package, None) as opened, pytest.raises(TargetNotRunnableError, match="lacks .*avx2"):
        select_library(opened)


@pytest.mark.parametrize("member", [V4, VARIANTS])
def test_tampered_variant_is_refused_by_its_hash(generic, session_pub, tmp_path, member):
    from edgefleet.signing import load_public_key

    data = read_member(generic.package, member)
    bad = repack(generic.package, tmp_path / "bad.tar.gz", replace={member: data[:-2] + b"!!"})
    with pytest.raises(PackageIntegrityError, match=f"{member} does not match its sha256"):
        open_package(bad, [load_public_key(session_pub)])


def test_agent_0_1_0_reads_the_package_and_loads_the_portable_library(generic, session_pub, tmp_path):
    """Agent 0.1.0's own package reader (tests/fleet/data) checks the signature and every hash, and names model.so."""
    site = old_agent_site(tmp_path)
    script = (
        "import sys; from pathlib import Path; from edgefleet.package import open_package; "
        "from edgefleet.signing import load_public_key; "
        "p = open_package(Path(sys.argv[1]), [load_public_key(Path(sys.argv[2]))]); "
        "print(p.manifest.runtime.library, p.library.stat().st_size, sorted(p.manifest.files))"
    )
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONSAFEPATH="1")
    done = subprocess.run(
        [sys.executable, "-c", script, str(generic.package), str(session_pub)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    library, size, files = done.stdout.split(" ", 2)
    assert library == "model.so" and int(size) == generic.manifest.files["model.so"].size and V4 in files
