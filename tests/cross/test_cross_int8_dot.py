"""int8 convolutions on SDOT for dot-product targets (rasp5), exact against LiteRT's reference kernels under QEMU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.compiler.compile import compile_model
from edgefleet.cross.verify import run_library_emulated
from edgefleet.package import open_package

pytestmark = pytest.mark.qemu

_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(_ROOT / "tests" / "compiler"), str(_ROOT / "benchmarks" / "qemu_insn")]
from compiler_testlib import litert_reference  # noqa: E402  (tests/compiler, put on the path above)
from tflite_models import mobilenetv2_tflite  # noqa: E402  (benchmarks/qemu_insn, put on the path above)


def _disassembly(library: Path) -> str:
    """An AArch64 shared library's disassembly (binutils comes with the cross compiler)."""
    return subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", str(library)], check=True, capture_output=True, text=True
    ).stdout


def _instructions(library: Path, *mnemonics: str) -> int:
    """How many of these instructions an AArch64 shared library holds."""
    return sum(1 for line in _disassembly(library).splitlines() if any(f"\t{m}\t" in line for m in mnemonics))


def _lane_multiplies(library: Path) -> int:
    """Widening multiply-adds by one 16-bit lane (`smlal v.4s, w.4h, a.h[k]`) in an AArch64 shared library."""
    return len(re.findall(r"\tsmlal2?\tv\d+\.4s, v\d+\.[48]h, v\d+\.h\[[0-7]\]", _disassembly(library)))


def _sdot_lanes(library: Path) -> int:
    """SDOTs by one 32-bit lane of the input vector (`sdot v.4s, w.16b, a.4b[k]`) in an AArch64 shared library."""
    return len(re.findall(r"\tsdot\tv\d+\.4s, v\d+\.16b, v\d+\.4b\[[0-3]\]", _disassembly(library)))


def _calls_in_sdot_functions(library: Path) -> dict[str, int]:
    """Indirect calls (`blr`: TVM's backend API, such as its workspace allocator) per function holding an SDOT."""
    listing = _disassembly(library)
    calls: dict[str, int] = {}
    sdot: set[str] = set()
    function = ""
    for line in listing.splitlines():
        if line.endswith(">:"):
            function = line.split("<", 1)[1][:-2]
        elif "\tblr\t" in line:
            calls[function] = calls.get(function, 0) + 1
        elif "\tsdot\t" in line:
            sdot.add(function)
    return {f: calls.get(f, 0) for f in sdot}


def test_int8_packages_run_sdot_on_rasp5_lanes_on_rasp4b_and_equal_litert_reference_kernels(
    arm64_sysroot, cross_key, tmp_path
):
    """A full-integer MobileNetV2 for rasp5 (Cortex-A76, +dotprod), 56x56 (rows of 28, 14 and 7 pixels: the
    tiles that split the channels): its dense convolutions run on raw int8 operands with SDOT, and its
    outputs still equal LiteRT's reference kernels bit for bit, in compile's own verification under
    QEMU and on further inputs; its rescale runs on SQRDMULH (graph.sqrdmulh_rescales), and its SDOT
    kernels allocate no workspaces (compiler/arm_intrin.py) and, where a pixel's input channels are an
    8- or 16-byte vector, multiply its 4-byte groups by lane (`sdot v.4s, w.16b, a.4b[k]`). rasp4b (no
    dot product) multiplies its int16 operands by lane instead (`smlal v.4s, w.4h, a.h[k]`, arm_intrin's
    smull-by-lane intrinsic) and equals the reference kernels exactly too, in verification and on the
    same further inputs. On
    both the rescale runs on SQRDMULH and its rounding division by a power of two as SRSHL
    (graph.rounding_shifts)."""
    model = mobilenetv2_tflite(tmp_path / "mnv2_int8.tflite", size=56, int8=True)
    built = {
        target: compile_model(
            str(model),
            target,
            output=tmp_path / f"{target}.tar.gz",
            name="mnv2",
            version="1",
            key=cross_key.path,
            quiet=True,
        )
        for target in ("rasp5", "rasp4b")
    }
    for target, package in built.items():
        v = package.manifest.verification
        assert v.status == "passed" and v.max_abs_diff == 0.0, (target, v)
        assert "qemu-aarch64" in v.ran_on and "reference kernels" in v.reference, (target, v)
        assert package.manifest.runtime.kernel_fallbacks == [], target

    feeds = [np.random.default_rng(seed).integers(-128, 128, (1, 56, 56, 3)).astype(np.int8) for seed in (1, 2)]
    with open_package(built["rasp5"].package, None) as rasp5, open_package(built["rasp4b"].package, None) as rasp4b:
        # Dense convolutions with 16 or more input channels: 4 output-channel groups x the unrolled pixels each.
        assert _instructions(rasp5.library, "sdot", "udot") >= 100
        assert _instructions(rasp5.library, "sqrdmulh") >= 100  # the rescale on int32 lanes
        assert _instructions(rasp4b.library, "sdot", "udot") == 0
        # The rounding division after SQRDMULH as one rounding shift (graph.rounding_shifts); both run
        # on rasp4b too (ARMv8.0 AdvSIMD, no dot product needed).
        assert _instructions(rasp5.library, "srshl") >= 100 and _instructions(rasp4b.library, "srshl") >= 100
        assert _instructions(rasp4b.library, "sqrdmulh") >= 100
        # 8 lanes x 4 output-channel groups x the pixels of a tile, for each of ~20 dense convolutions.
        assert _lane_multiplies(rasp4b.library) >= 20 * 8 * 4 * 4
        assert _lane_multiplies(rasp5.library) < _lane_multiplies(rasp4b.library) / 4
        # rasp5's stride-one SDOT convolutions take each 4 input bytes of a pixel as a lane of its
        # loaded input vector (schedules._dot_lane): 4 output groups x the tile's pixels x 2-4 lanes each.
        assert _sdot_lanes(rasp5.library) >= 20 * 4 * 4 * 2
        # No workspace allocated and freed around each SDOT tile row (13 calls per kernel before): one
        # call, the parallel launch; a padded convolution two launches and its padded input's workspace.
        calls = _calls_in_sdot_functions(rasp5.library)
        assert len(calls) >= 15 and max(calls.values()) <= 4 and sorted(calls.values())[-2] <= 1, calls
        outputs = [run_library_emulated(arm64_sysroot, rasp5.library, [x]).outputs[0] for x in feeds]
        lanes = [run_library_emulated(arm64_sysroot, rasp4b.library, [x]).outputs[0] for x in feeds]
    for x, actual, by_lane in zip(feeds, outputs, lanes, strict=True):
        np.testing.assert_array_equal(actual, litert_reference(model, x))
        np.testing.assert_array_equal(by_lane, litert_reference(model, x))
    assert outputs[0].tobytes() != outputs[1].tobytes() and len(np.unique(outputs[0])) > 5  # input-dependent
