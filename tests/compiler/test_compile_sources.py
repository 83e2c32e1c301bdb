"""Model sources: SageMaker model.tar.gz (local and s3://), member choice, and unsafe archives."""

from __future__ import annotations

import io
import json
import socket
import tarfile
from pathlib import Path

import pytest
from compiler_testlib import assert_cli_error, small_onnx_cnn, small_tflite_cnn

from edgefleet.archive import ArchiveLimits, safe_extract
from edgefleet.compiler.source import fetch_model
from edgefleet.errors import ModelSourceError, UnsafeArchiveError
from edgefleet.package import sha256_file


def make_tar(path: Path, members: list[tuple[str, bytes | None, dict]]) -> Path:
    """members: (name, data or None, extra TarInfo attributes such as type/linkname)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, attrs in members:
            info = tarfile.TarInfo(name)
            for key, value in attrs.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


@pytest.fixture
def onnx_bytes(tmp_path) -> bytes:
    return small_onnx_cnn(tmp_path / "m.onnx").read_bytes()


def test_sagemaker_model_tar_compiles(tmp_path, onnx_bytes, signing_key, cli):
    archive = make_tar(
        tmp_path / "model.tar.gz", [("code/inference.py", b"print()\n", {}), ("model.onnx", onnx_bytes, {})]
    )
    result = cli("compile", archive, "--target", "x86_64", "-o", tmp_path / "p.tar.gz", "--json")
    assert result.code == 0, result.text
    m = json.loads(result.out)["manifest"]
    assert m["name"] == "model" and m["verification"]["status"] == "passed"
    assert m["provenance"] == {
        **m["provenance"],
        "source_uri": str(archive),
        "source_sha256": sha256_file(archive),
        "source_format": "onnx",
        "training_job": None,
    }


def test_training_output_preprocessing_and_labels_are_read_from_the_tar(tmp_path, onnx_bytes, signing_key, cli):
    # models/train.py writes preprocessing.json and labels.txt beside model.onnx; a compile
    # without flags takes them, and an explicit flag still wins.
    sidecar = {
        "format_version": 1,
        "labels": "labels.txt",
        "preprocessing": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "color_order": "BGR"},
    }
    archive = make_tar(
        tmp_path / "model.tar.gz",
        [
            ("model.onnx", onnx_bytes, {}),
            ("labels.txt", b"a\nb\nc\nd\n", {}),
            ("preprocessing.json", json.dumps(sidecar).encode(), {}),
        ],
    )
    result = cli(
        "compile", archive, "--target", "x86_64", "-o", tmp_path / "p.tar.gz", "--json", "--std", "0.5,0.5,0.5"
    )
    assert result.code == 0, result.text
    m = json.loads(result.out)["manifest"]
    assert m["labels"] == ["a", "b", "c", "d"]
    assert (m["preprocessing"]["mean"], m["preprocessing"]["std"], m["preprocessing"]["color_order"]) == (
        [0.5] * 3,
        [0.5] * 3,
        "BGR",
    )


def test_unreadable_training_sidecar_is_a_clear_error(tmp_path, onnx_bytes, signing_key, cli):
    archive = make_tar(
        tmp_path / "model.tar.gz", [("model.onnx", onnx_bytes, {}), ("preprocessing.json", b"{not json", {})]
    )
    result = cli("compile", archive, "--target", "x86_64", "-o", tmp_path / "p.tar.gz")
    assert_cli_error(result, ModelSourceError, "preprocessing.json is not a version-1 serving spec")


def test_tflite_inside_a_tar_defaults_to_nhwc(tmp_path, signing_key, cli):
    archive = make_tar(
        tmp_path / "model.tar.gz",
        [("export/classifier.tflite", small_tflite_cnn(tmp_path / "c.tflite").read_bytes(), {})],
    )
    result = cli("compile", archive, "--target", "x86_64", "-o", tmp_path / "p.tar.gz", "--json", "-q")
    assert result.code == 0, result.text
    m = json.loads(result.out)["manifest"]
    assert (m["name"], m["preprocessing"]["layout"], m["provenance"]["source_format"]) == (
        "classifier",
        "NHWC",
        "tflite",
    )


def test_tar_without_a_model(tmp_path, signing_key, cli):
    archive = make_tar(tmp_path / "model.tar.gz", [("weights.pt", b"\0" * 10, {}), ("README", b"hi", {})])
    assert_cli_error(
        cli("compile", archive, "--target", "x86_64"),
        ModelSourceError,
        "holds no .onnx or .tflite model",
        "README, weights.pt",
    )


def test_tar_with_several_models_needs_member(tmp_path, onnx_bytes, signing_key, cli):
    archive = make_tar(tmp_path / "model.tar.gz", [("a.onnx", onnx_bytes, {}), ("b/b.onnx", onnx_bytes, {})])
    assert_cli_error(
        cli("compile", archive, "--target", "x86_64"), ModelSourceError, "several models: a.onnx, b/b.onnx", "--member"
    )
    assert_cli_error(
        cli("compile", archive, "--target", "x86_64", "--member", "c.onnx"),
        ModelSourceError,
        "no member 'c.onnx'",
        "a.onnx, b/b.onnx",
    )
    chosen = cli(
        "compile", archive, "--target", "x86_64", "--member", "b/b.onnx", "-o", tmp_path / "p.tar.gz", "-q", "--json"
    )
    assert chosen.code == 0, chosen.text
    assert json.loads(chosen.out)["manifest"]["name"] == "b"


UNSAFE = {
    "absolute": ([("/etc/model.onnx", b"x", {})], "absolute path"),
    "dotdot": ([("models/../../model.onnx", b"x", {})], "climbs out with '..'"),
    "symlink-absolute": (
        [("model.onnx", None, {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"})],
        "outside the archive",
    ),
    "symlink-relative": (
        [("a/model.onnx", None, {"type": tarfile.SYMTYPE, "linkname": "../../secret"})],
        "outside the archive",
    ),
    "hardlink": ([("model.onnx", None, {"type": tarfile.LNKTYPE, "linkname": "../outside"})], "outside the archive"),
    "fifo": ([("model.onnx", None, {"type": tarfile.FIFOTYPE})], "special file"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_tar_is_refused_before_anything_is_written(case, tmp_path, signing_key, cli):
    members, message = UNSAFE[case]
    archive = make_tar(tmp_path / "model.tar.gz", [("ok.txt", b"fine", {}), *members])
    assert_cli_error(cli("compile", archive, "--target", "x86_64"), UnsafeArchiveError, message)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert not dest.exists()  # checked in full before the first byte is written


def test_oversized_members_and_archives_are_refused(tmp_path, onnx_bytes):
    archive = make_tar(tmp_path / "model.tar.gz", [("model.onnx", onnx_bytes, {}), ("notes.txt", b"n" * 100, {})])
    with pytest.raises(UnsafeArchiveError, match=r"member 'model.onnx' is \d+ bytes, over the 1000-byte cap"):
        fetch_model(str(archive), tmp_path / "w1", limits=ArchiveLimits(max_member_bytes=1000))
    with pytest.raises(UnsafeArchiveError, match="unpacks to more than"):
        fetch_model(str(archive), tmp_path / "w2", limits=ArchiveLimits(max_total_bytes=len(onnx_bytes) + 50))
    with pytest.raises(UnsafeArchiveError, match="more than 1 members"):
        fetch_model(str(archive), tmp_path / "w3", limits=ArchiveLimits(max_members=1))
    assert (
        fetch_model(str(archive), tmp_path / "w4", limits=ArchiveLimits(max_member_bytes=len(onnx_bytes))).path.name
        == "model.onnx"
    )


def test_truncated_tar_is_refused(tmp_path, onnx_bytes, signing_key, cli):
    archive = make_tar(tmp_path / "model.tar.gz", [("model.onnx", onnx_bytes, {})])
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert_cli_error(cli("compile", archive, "--target", "x86_64"), UnsafeArchiveError, "not a readable tar archive")


# --- s3:// ------------------------------------------------------------------------------------


@pytest.fixture
def moto_s3(monkeypatch):
    """moto in server mode on a free local port: boto3 talks real HTTP to it (AWS itself cannot run here)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3")
    client.create_bucket(Bucket="training-out")
    yield client
    server.stop()


def test_compile_from_moto_s3_recovers_the_training_job(tmp_path, onnx_bytes, signing_key, cli, moto_s3):
    archive = make_tar(tmp_path / "model.tar.gz", [("model.onnx", onnx_bytes, {})])
    key = "experiments/doorcam/doorcam-2026-11-27-01-02-03-456/output/model.tar.gz"
    moto_s3.upload_file(str(archive), "training-out", key)
    uri = f"s3://training-out/{key}"
    result = cli("compile", uri, "--target", "x86_64", "-o", tmp_path / "p.tar.gz", "--json", "-q")
    assert result.code == 0, result.text
    prov = json.loads(result.out)["manifest"]["provenance"]
    assert (prov["source_uri"], prov["source_sha256"], prov["training_job"]) == (
        uri,
        sha256_file(archive),
        "doorcam-2026-11-27-01-02-03-456",
    )


def test_moto_s3_object_over_the_cap_is_not_downloaded(tmp_path, moto_s3):
    moto_s3.put_object(Bucket="training-out", Key="big/output/model.tar.gz", Body=b"x" * 5000)
    with pytest.raises(ModelSourceError, match="is 5000 bytes, over the 4096-byte cap"):
        fetch_model("s3://training-out/big/output/model.tar.gz", tmp_path, limits=ArchiveLimits(max_total_bytes=4096))
    assert list(tmp_path.iterdir()) == []


def test_moto_s3_errors_are_model_source_errors(tmp_path, signing_key, cli, moto_s3):
    missing = cli("compile", "s3://training-out/jobs/j1/output/model.tar.gz", "--target", "x86_64")
    assert_cli_error(
        missing, ModelSourceError, "cannot download s3://training-out/jobs/j1/output/model.tar.gz", "AWS credentials"
    )
    assert_cli_error(
        cli("compile", "s3://no-such-bucket/m.onnx", "--target", "x86_64"), ModelSourceError, "cannot download"
    )
    assert_cli_error(
        cli("compile", "s3://bucket-only", "--target", "x86_64"), ModelSourceError, "is not s3://BUCKET/KEY"
    )
