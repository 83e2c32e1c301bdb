"""int8 TFLite on x86: an `x86_64` package of a quantized model carries an AVX-512 VNNI library whose
dense convolutions run `vpdpbusd` (graph.dot_product_convs(unsigned=True), compiler/x86_intrin.py),
exact against LiteRT's reference kernels; the agent loads it where the CPU has avx512_vnni."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runtime_worker import open_tvm_model
from edgefleet.agent.variants import cpu_flags, select_library
from edgefleet.package import open_package

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "qemu_insn"))
from compiler_testlib import litert_reference  # noqa: E402  (tests/compiler is on sys.path)
from tflite_models import mobilenetv2_tflite  # noqa: E402  (benchmarks/qemu_insn, put on the path above)

VNNI = "model.x86-64-v4-vnni.so"
HAS_VNNI = "avx512_vnni" in cpu_flags()


def _dot_instructions(library: Path) -> int:
    """vpdpbusd instructions in an x86 shared library (binutils' objdump)."""
    listing = subprocess.run(["objdump", "-d", str(library)], check=True, capture_output=True, text=True).stdout
    return sum("vpdpbusd" in line for line in listing.splitlines())


pytestmark = pytest.mark.usefixtures("no_forced_library")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="binutils' objdump is not installed")
def test_int8_x86_64_package_has_a_vnni_library_with_vpdpbusd_exact_to_litert_reference(tmp_path, signing_key, cli):
    """MobileNetV2 int8 at 56x56 (rows of 28, 14 and 7 pixels, an RGB input of 3 channels)."""
    model = mobilenetv2_tflite(tmp_path / "mnv2_int8.tflite", size=56, int8=True)
    result = cli("compile", model, "--target", "x86_64", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as opened:
        listed = opened.variants()
        assert listed is not None
        assert [v.isa for v in listed.variants] == ["x86-64-v4-vnni", "x86-64-v4", "x86-64-v3"]
        vnni = listed.variants[0]
        assert vnni.library == VNNI and "avx512_vnni" in vnni.cpu_features
        assert "+avx512vnni" in vnni.tvm_target["mattr"]
        # Only the VNNI library has the instruction: the generic levels must run on CPUs without it.
        counts = {v.isa: _dot_instructions(opened.path(v.library)) for v in listed.variants}
        assert counts["x86-64-v4-vnni"] >= 20 and counts["x86-64-v4"] == counts["x86-64-v3"] == 0, counts
        if not HAS_VNNI:
            assert vnni.verification.status == "skipped" and "avx512_vnni" in vnni.verification.reason
            return
        assert vnni.verification.status == "passed" and vnni.verification.max_abs_diff == 0.0
        assert "reference kernels" in vnni.verification.reference
        assert select_library(opened).library == VNNI
        compiled = open_tvm_model(opened.path(VNNI))
        outputs = []
        for seed in range(3):
            x = np.random.default_rng(300 + seed).integers(-128, 128, (1, 56, 56, 3)).astype(np.int8)
            actual = compiled.run([x])[0]
            np.testing.assert_array_equal(actual, litert_reference(model, x))
            outputs.append(actual.tobytes())
        assert len(set(outputs)) == 3  # input-dependent outputs were compared


def test_float_models_get_no_vnni_library(tmp_path, signing_key, cli):
    """VNNI speeds up int8 dot products only: a float model's package keeps its two libraries."""
    model = mobilenetv2_tflite(tmp_path / "mnv2.tflite", size=32)
    result = cli("compile", model, "--target", "x86_64", "-o", tmp_path / "p.tar.gz", "--no-verify")
    assert result.code == 0, result.text
    with open_package(tmp_path / "p.tar.gz", [signing_key.public]) as opened:
        listed = opened.variants()
        assert listed is not None and [v.isa for v in listed.variants] == ["x86-64-v4", "x86-64-v3"]
