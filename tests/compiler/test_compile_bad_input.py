"""Every bad input through the real CLI: a distinct exit code, a one-line cause, a fix, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compiler_testlib import assert_cli_error, onnx_with_unsupported_ops, small_onnx_cnn, small_tflite_cnn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edgefleet.errors import (
    BuildError,
    CorruptModelError,
    DynamicShapeError,
    MissingToolError,
    ModelSourceError,
    SigningKeyError,
    UnknownTargetError,
    UnsupportedOperatorsError,
    UsageError,
)


def test_exit_codes_are_distinct():
    from edgefleet import errors

    codes = [
        cls.exit_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.EdgefleetError) and cls is not errors.EdgefleetError
    ]
    assert len(codes) == len(set(codes)) and 0 not in codes


def test_unsupported_operators_are_listed_all_at_once_with_counts(tmp_path, signing_key, cli):
    model = onnx_with_unsupported_ops(tmp_path / "odd.onnx")
    result = cli("compile", model, "--target", "x86_64", "-o", tmp_path / "p.tar.gz")
    assert_cli_error(
        result,
        UnsupportedOperatorsError,
        "2 operator type(s)",
        "ai.edgefleet.test::Mystery x3",
        "ai.edgefleet.test::Enigma x1",
    )
    assert not (tmp_path / "p.tar.gz").exists()
    check = cli("compile", model, "--check", "--json")
    assert check.code == UnsupportedOperatorsError.exit_code
    assert '"ai.edgefleet.test::Mystery": 3' in check.out and '"Relu": 1' in check.out


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_corrupt_or_truncated_model(fmt, damage, tmp_path, signing_key, cli):
    good = small_onnx_cnn(tmp_path / "good.onnx") if fmt == "onnx" else small_tflite_cnn(tmp_path / "good.tflite")
    data = good.read_bytes()
    bad = tmp_path / f"bad.{fmt}"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(2048), "empty": b""}[damage])
    result = cli("compile", bad, "--target", "x86_64")
    assert_cli_error(result, CorruptModelError, str(bad))


def test_dynamic_input_shape_needs_input_shape(tmp_path, signing_key, cli):
    model = small_onnx_cnn(tmp_path / "dyn.onnx", dynamic_batch=True, dynamic_size=True)
    result = cli("compile", model, "--target", "x86_64")
    assert_cli_error(result, DynamicShapeError, "input [?,3,?,?]", "--input-shape input:1,3,1,1")
    unknown = cli("compile", model, "--target", "x86_64", "--input-shape", "image:1,3,32,32")
    assert_cli_error(unknown, DynamicShapeError, "image", "the model's inputs are: input")
    malformed = cli("compile", model, "--target", "x86_64", "--input-shape", "input:1,x")
    assert_cli_error(malformed, UsageError, "NAME:D1,D2")
    fixed = cli(
        "compile",
        model,
        "--target",
        "x86_64",
        "--input-shape",
        "input:1,3,32,32",
        "-o",
        tmp_path / "p.tar.gz",
        "-q",
        "--json",
    )
    assert fixed.code == 0, fixed.text
    assert '"shape": [\n          1,\n          3,\n          32,\n          32\n        ]' in fixed.out


def test_dynamic_tflite_input_needs_input_shape(tmp_path, signing_key, cli):
    model = small_tflite_cnn(tmp_path / "dyn.tflite", dynamic_batch=True, dynamic_size=True)
    result = cli("compile", model, "--target", "x86_64")
    assert_cli_error(result, DynamicShapeError, "input [-1, -1, -1, 3]", "--input-shape input:1,16,16,3")


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_dynamic_batch_compiles_for_batch_one_with_a_notice(fmt, tmp_path, signing_key, cli):
    """Exporters mark the batch axis dynamic by default (torch dynamic_axes, Keras -1): batch 1, said so."""
    model = (
        small_onnx_cnn(tmp_path / "m.onnx", dynamic_batch=True)
        if fmt == "onnx"
        else small_tflite_cnn(tmp_path / "m.tflite", dynamic_batch=True)
    )
    result = cli("compile", model, "--target", "x86_64", "-o", tmp_path / "p.tar.gz")
    assert result.code == 0, result.text
    assert "dynamic batch axis: compiled for batch 1" in result.err
    from edgefleet.signing import public_path

    manifest = json.loads(
        cli("inspect", tmp_path / "p.tar.gz", "--trust", public_path(signing_key.path), "--json").out
    )["manifest"]
    assert manifest["inputs"][0]["shape"] == ([1, 3, 32, 32] if fmt == "onnx" else [1, 16, 16, 3])
    assert manifest["verification"]["status"] == "passed"


def test_unknown_target_suggests_close_names(tmp_path, signing_key, cli):
    model = small_onnx_cnn(tmp_path / "m.onnx")
    assert_cli_error(cli("compile", model, "--target", "rasp4"), UnknownTargetError, "unknown target 'rasp4'", "rasp4b")
    assert_cli_error(cli("compile", model, "--target", "jetson_xavir"), UnknownTargetError, "jetson_xavier")
    assert_cli_error(
        cli("compile", model, "--target", "os=linux,arch=mips"), UnknownTargetError, "arch=MIPS", "os=LINUX arch=ARM64"
    )
    assert_cli_error(
        cli("compile", model, "--target", '{"kind": "no-such-kind"}'), UnknownTargetError, "TVM rejects the target dict"
    )
    assert_cli_error(cli("compile", model), UsageError, "--target is required")


@pytest.mark.parametrize(
    ("target", "package"), [("rasp4b", "gcc-aarch64-linux-gnu"), ("rasp3b", "gcc-arm-linux-gnueabihf")]
)
def test_missing_cross_compiler_names_the_debian_package(target, package, tmp_path, signing_key, monkeypatch, cli):
    model = small_onnx_cnn(tmp_path / "m.onnx")
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH: the cross gcc is missing
    result = cli("compile", model, "--target", target)
    assert_cli_error(
        result, MissingToolError, f"target {target} needs the cross compiler", f"apt-get install {package}"
    )


def test_inferentia_without_neuron_compiler_says_what_to_install(tmp_path, signing_key, monkeypatch, cli):
    model = small_onnx_cnn(tmp_path / "m.onnx")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = cli("compile", model, "--target", "ml_inf1")
    assert_cli_error(
        result, MissingToolError, "AWS Neuron compiler `neuron-cc`", "https://pip.repos.neuron.amazonaws.com neuron-cc"
    )
    assert_cli_error(cli("compile", model, "--target", "ml_inf2"), MissingToolError, "neuronx-cc")


def test_inferentia_with_fake_neuron_compiler_is_detected(tmp_path, signing_key, monkeypatch, cli):
    """The real Neuron compiler cannot be installed here; a stand-in on PATH shows it is detected."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "neuron-cc"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = cli("compile", small_onnx_cnn(tmp_path / "m.onnx"), "--target", "ml_inf1")
    assert_cli_error(result, BuildError, "the Neuron compiler is installed", "neuronx-cc yourself")


def _rsa_key(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


@pytest.mark.parametrize("kind", ["missing", "garbage", "rsa", "encrypted"])
def test_bad_signing_key(kind, tmp_path, edgefleet_home, cli):
    model = small_onnx_cnn(tmp_path / "m.onnx")
    key = tmp_path / "signing.key"
    if kind == "garbage":
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    elif kind == "rsa":
        _rsa_key(key)
    elif kind == "encrypted":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            )
        )
    expected = {
        "missing": "no signing key at",
        "garbage": "not a readable unencrypted PEM private key",
        "rsa": "not an ed25519 key",
        "encrypted": "not a readable unencrypted PEM private key",
    }[kind]
    result = cli("compile", model, "--target", "x86_64", "--key", key, "-o", tmp_path / "p.tar.gz")
    assert_cli_error(result, SigningKeyError, expected, "edgefleet keys create")
    assert not (tmp_path / "p.tar.gz").exists()


def test_keys_create_refuses_to_overwrite(edgefleet_home, cli):
    first = cli("keys", "create")
    assert first.code == 0 and (edgefleet_home / "keys" / "signing.key").stat().st_mode & 0o777 == 0o600
    assert_cli_error(cli("keys", "create"), SigningKeyError, "already exists")
    assert cli("keys", "create", "--overwrite").code == 0


def test_missing_model_and_bad_options(tmp_path, signing_key, cli):
    model = small_onnx_cnn(tmp_path / "m.onnx")
    assert_cli_error(cli("compile", tmp_path / "nope.onnx", "--target", "x86_64"), ModelSourceError, "no model at")
    assert_cli_error(cli("compile", tmp_path, "--target", "x86_64"), ModelSourceError, "is a directory")
    (tmp_path / "model.pt").write_bytes(b"x")
    assert_cli_error(
        cli("compile", tmp_path / "model.pt", "--target", "x86_64"), CorruptModelError, "cannot tell the model format"
    )
    assert_cli_error(cli("compile", model, "--target", "x86_64", "--version", "v2"), UsageError, "--version 'v2'")
    assert_cli_error(
        cli("compile", model, "--target", "x86_64", "--name", "../evil"), UsageError, "not a valid package name"
    )
    assert_cli_error(
        cli("compile", model, "--target", "x86_64", "--mean", "0.5,0.5"), UsageError, "--mean has 2 values"
    )
    assert_cli_error(cli("compile", model, "--target", "x86_64", "--std", "0,1,1"), UsageError, "divide by zero")
    assert_cli_error(cli("compile", model, "--target", "x86_64", "--resize", "224"), UsageError, "--resize '224'")
    assert_cli_error(
        cli("compile", model, "--target", "x86_64", "--resize", "64x64"),
        UsageError,
        "does not match input input's 32x32",
    )
    assert_cli_error(
        cli("compile", model, "--target", "x86_64", "--layout", "NHWC"),
        UsageError,
        "channel axis holds 32",
        "--layout NCHW",
    )
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    assert_cli_error(
        cli("compile", model, "--target", "x86_64", "--labels", labels),
        UsageError,
        "3 labels but the model outputs 4 classes",
    )


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path, signing_key):
    """The installed console script, not just main(): exit code and stderr as a shell sees them."""
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "compile", str(bad), "--target", "rasp4b"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.returncode == CorruptModelError.exit_code, proc.stderr
    assert proc.stderr.count("error: ") == 1 and "fix: " in proc.stderr and "Traceback" not in proc.stderr
