"""Real architectures (from the onnx wheel) and the tests' own models, compiled for every test target."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from edgefleet.compiler.targets import TARGETS
from edgefleet.errors import NumericsMismatchError
from edgefleet.package import open_package, sha256_file

# ELF e_machine values: what the exported library really is.
ELF_MACHINE = {"x86_64": 62, "aarch64": 183, "armv7": 40}
ELF_CLASS = {"x86_64": 2, "aarch64": 2, "armv7": 1}  # 64- or 32-bit


def elf_header(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return head[4], struct.unpack("<H", head[18:20])[0]


@pytest.mark.parametrize("target", ["x86_64", "rasp4b", "rasp3b", "jetson_xavier"])
@pytest.mark.parametrize("model", ["squeezenet", "resnet50", "small_cnn"])
def test_compile_for_target(model, target, package_for, built_models, session_key):
    # Numerics are checked where the package runs natively; ARM packages run under QEMU in
    # tests/cross, Jetson packages need the board.
    native = target == "x86_64"
    result = package_for(model, target, verify=native)
    m = result.manifest
    entry = TARGETS[target]
    assert (m.target.name, m.target.arch, m.target.device, m.target.tvm_target) == (
        target,
        entry.arch,
        entry.device,
        entry.tvm_target,
    )
    assert m.provenance.source_sha256 == sha256_file(built_models[model])
    assert m.provenance.source_format == "onnx"
    assert m.inputs[0].shape[0] == 1 and m.outputs, m
    assert set(result.timings) >= {"load", "import", "optimize", "build", "export", "sign"}
    with open_package(result.package, [session_key.public]) as opened:
        assert opened.signer == session_key.key_id
        elf_class, machine = elf_header(opened.library)
        assert (elf_class, machine) == (ELF_CLASS[entry.arch], ELF_MACHINE[entry.arch])
        if entry.device == "cuda":
            # No GPU or nvcc here: TVM embeds the CUDA kernels, compiled on the board.
            assert b"__global__" in opened.library.read_bytes()
    if native:
        v = m.verification
        assert (
            v.status == "passed"
            and v.reference.startswith("onnxruntime")
            and v.ran_on.startswith("native x86_64 (model.so), edgefleet runtime ")
        )
        assert v.max_abs_diff <= v.atol + v.rtol
    else:
        assert m.verification.status == "skipped"


def test_small_cnn_numerics_are_non_trivial_and_match_onnxruntime(package_for, built_models, session_key):
    import onnxruntime

    from edgefleet.agent.runtime_worker import open_tvm_model

    result = package_for("small_cnn", "x86_64")
    x = np.random.default_rng(42).random((1, 3, 32, 32), dtype=np.float32)
    expected = onnxruntime.InferenceSession(str(built_models["small_cnn"]), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    with open_package(result.package, [session_key.public]) as opened:
        actual = open_tvm_model(opened.library).run([x])[0]
    assert expected.std() > 0.01  # random weights: the classes really differ
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-4)
    assert result.manifest.verification.max_abs_diff < 1e-4


def test_numeric_mismatch_fails_the_compile_with_fake_reference(built_models, signing_key, tmp_path, monkeypatch, cli):
    """A reference runtime that disagrees (faked: onnxruntime's outputs shifted) must stop the compile."""
    from edgefleet.compiler.frontends import onnx as onnx_frontend

    real = onnx_frontend.reference_run
    monkeypatch.setattr(onnx_frontend, "reference_run", lambda path, feeds: [o + 0.1 for o in real(path, feeds)])
    out = tmp_path / "bad.tar.gz"
    result = cli("compile", built_models["small_cnn"], "--target", "x86_64", "-o", out, "-q")
    assert result.code == NumericsMismatchError.exit_code, result.text
    assert "max abs diff 0.1" in result.err and "--no-verify" in result.err
    assert not out.exists()
    # --no-verify skips the check and records why.
    result = cli("compile", built_models["small_cnn"], "--target", "x86_64", "-o", out, "-q", "--no-verify", "--json")
    assert result.code == 0, result.text
    manifest = json.loads(result.out)["manifest"]
    assert manifest["verification"] == {**manifest["verification"], "status": "skipped", "reason": "--no-verify"}


def test_compile_cli_writes_a_signed_package_with_every_option(built_models, signing_key, tmp_path, cli):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\nbird\nfish\n")  # blank lines are ignored
    out = tmp_path / "pkgs" / "cnn.tar.gz"
    result = cli(
        "compile",
        built_models["small_cnn"],
        "--target",
        "ml_c5",
        "-o",
        out,
        "--name",
        "door-cam",
        "--version",
        "2.1.0",
        "--labels",
        labels,
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--color-order",
        "BGR",
        "--resize",
        "32x32",
        "--scale",
        "0.00392156862745098",
        "--json",
    )
    assert result.code == 0, result.text
    payload = json.loads(result.out)
    m = payload["manifest"]
    assert payload["package"] == str(out) and out.is_file()
    assert (m["name"], m["version"], m["labels"], m["target"]["name"]) == (
        "door-cam",
        "2.1.0",
        ["cat", "dog", "bird", "fish"],
        "ml_c5",
    )
    assert m["preprocessing"] == {
        "resize": [32, 32],
        "interpolation": "bilinear",
        "color_order": "BGR",
        "layout": "NCHW",
        "scale": 0.00392156862745098,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resize_mode": "stretch",
        "pad_value": 114,
    }
    assert m["format_version"] == 2 and m["runtime"]["tvm_version"] == "0.27.0.post1"
    assert m["runtime"]["requires"] == {
        "arch": "x86_64",
        "tvm": "0.27",
        "tvm_ffi": "0.1",
        "device": "cpu",
        "cuda_sm": None,
        "cuda_version": None,
    }
    assert list(m["files"]) == ["model.so"] and m["signature"]["key_id"] == signing_key.key_id
    assert set(payload["timings"]) == {"load", "import", "optimize", "build", "export", "verify", "sign"}


def test_each_stage_reports_progress_and_time(built_models, signing_key, tmp_path, cli):
    result = cli("compile", built_models["small_cnn"], "--target", "x86_64", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    for stage in ("load", "import", "optimize", "build", "export", "verify", "sign"):
        assert re.search(rf"^  ok {stage}\s+\d+\.\d\d s", result.err, re.M), f"{stage} not timed in:\n{result.err}"
    assert "verified against onnxruntime" in result.out
