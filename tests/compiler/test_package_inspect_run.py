"""`edgefleet inspect` and `edgefleet run` on real compiled packages: valid, tampered, unsigned, foreign."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from compiler_testlib import CLASSES, assert_cli_error
from PIL import Image

from edgefleet.errors import BadInputError, PackageIntegrityError, TargetNotRunnableError, UnsafeArchiveError
from edgefleet.signing import create_signing_key, public_path

LABELS = ["cat", "dog", "bird", "fish"]


@pytest.fixture(scope="module")
def labelled(package_for, tmp_path_factory):
    labels = tmp_path_factory.mktemp("labels") / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return package_for("small_cnn", "x86_64", labels=labels)


def repack(
    package: Path,
    out: Path,
    *,
    drop: str | None = None,
    replace: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
) -> Path:
    """Rewrite a package's tar with a member dropped, replaced or added (what an attacker could do)."""
    replace, add = replace or {}, add or {}
    with tarfile.open(package) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            if member.name == drop:
                continue
            data = replace.get(member.name, src.extractfile(member).read())
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
        for name, data in add.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def read_member(package: Path, name: str) -> bytes:
    with tarfile.open(package) as tar:
        return tar.extractfile(name).read()


def png(path: Path, seed: int = 0, size: tuple[int, int] = (48, 64)) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


def test_inspect_valid_package(labelled, session_pub, session_key, cli):
    result = cli("inspect", labelled.package, "--trust", session_pub)
    assert result.code == 0, result.text
    assert "signature valid" in result.out and session_key.key_id in result.out and "small_cnn" in result.out
    as_json = cli("inspect", labelled.package, "--trust", session_pub, "--json")
    report = json.loads(as_json.out)
    assert (report["valid"], report["signer"], report["error"]) == (True, session_key.key_id, None)
    assert report["manifest"]["labels"] == LABELS and report["manifest"]["format_version"] == 2


def test_tampered_library_is_refused_by_inspect_and_run(labelled, session_pub, tmp_path, cli):
    library = bytearray(read_member(labelled.package, "model.so"))
    library[len(library) // 2] ^= 0xFF
    bad = repack(labelled.package, tmp_path / "bad.tar.gz", replace={"model.so": bytes(library)})
    result = cli("inspect", bad, "--trust", session_pub, "--json")
    assert result.code == PackageIntegrityError.exit_code
    report = json.loads(result.out)  # the manifest is still shown, with the verdict
    assert report["valid"] is False and "model.so does not match its sha256" in report["error"]["cause"]
    assert_cli_error(
        cli("run", bad, "--image", png(tmp_path / "f.png"), "--trust", session_pub),
        PackageIntegrityError,
        "model.so does not match its sha256",
    )


def test_tampered_manifest_is_refused(labelled, session_pub, tmp_path, cli):
    manifest = json.loads(read_member(labelled.package, "manifest.json"))
    manifest["labels"] = ["tampered"] * CLASSES
    bad = repack(labelled.package, tmp_path / "bad.tar.gz", replace={"manifest.json": json.dumps(manifest).encode()})
    assert_cli_error(cli("inspect", bad, "--trust", session_pub), PackageIntegrityError, "signature does not verify")
    assert_cli_error(
        cli("run", bad, "--image", png(tmp_path / "f.png"), "--trust", session_pub),
        PackageIntegrityError,
        "signature does not verify",
    )


def test_unsigned_package_is_refused(labelled, session_pub, tmp_path, cli):
    bad = repack(labelled.package, tmp_path / "unsigned.tar.gz", drop="manifest.sig")
    assert_cli_error(cli("inspect", bad, "--trust", session_pub), PackageIntegrityError, "unsigned")
    assert_cli_error(
        cli("run", bad, "--image", png(tmp_path / "f.png"), "--trust", session_pub), PackageIntegrityError, "unsigned"
    )


def test_extra_or_missing_files_are_refused(labelled, session_pub, tmp_path, cli):
    extra = repack(labelled.package, tmp_path / "extra.tar.gz", add={"evil.so": b"\x7fELF"})
    assert_cli_error(cli("inspect", extra, "--trust", session_pub), PackageIntegrityError, "does not list: evil.so")
    missing = repack(labelled.package, tmp_path / "missing.tar.gz", drop="model.so")
    assert_cli_error(
        cli("run", missing, "--image", png(tmp_path / "f.png"), "--trust", session_pub),
        PackageIntegrityError,
        "missing: model.so",
    )


def test_package_signed_by_an_unknown_key_is_refused(labelled, tmp_path, edgefleet_home, cli):
    create_signing_key()  # this machine's own key, not the one that signed the package
    assert_cli_error(cli("inspect", labelled.package), PackageIntegrityError, "does not verify against any trusted key")
    assert_cli_error(
        cli("run", labelled.package, "--image", png(tmp_path / "f.png")),
        PackageIntegrityError,
        "does not verify against any trusted key",
    )
    other = create_signing_key(tmp_path / "other.key")
    assert_cli_error(
        cli("inspect", labelled.package, "--trust", public_path(other.path)), PackageIntegrityError, "does not verify"
    )


def test_trusted_directory_is_used(labelled, session_pub, edgefleet_home, cli):
    (edgefleet_home / "trusted").mkdir(parents=True)
    shutil.copy(session_pub, edgefleet_home / "trusted" / "fleet.pub")
    assert cli("inspect", labelled.package).code == 0


def test_format_version_3_is_refused_clearly(labelled, session_pub, tmp_path, cli):
    manifest = json.loads(read_member(labelled.package, "manifest.json"))
    manifest["format_version"] = 3
    newer = repack(labelled.package, tmp_path / "v3.tar.gz", replace={"manifest.json": json.dumps(manifest).encode()})
    assert_cli_error(
        cli("inspect", newer, "--trust", session_pub),
        PackageIntegrityError,
        "package format version 3 is not supported",
        "upgrade edgefleet",
    )
    assert_cli_error(
        cli("run", newer, "--image", png(tmp_path / "f.png"), "--trust", session_pub),
        PackageIntegrityError,
        "format version 3",
    )


def test_not_a_package(tmp_path, session_pub, cli):
    (tmp_path / "x.tar.gz").write_bytes(b"not a tar")
    assert_cli_error(
        cli("inspect", tmp_path / "x.tar.gz", "--trust", session_pub), UnsafeArchiveError, "not a readable tar archive"
    )
    assert_cli_error(
        cli("inspect", tmp_path / "nope.tar.gz", "--trust", session_pub), PackageIntegrityError, "no package at"
    )
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    assert_cli_error(
        cli("inspect", tmp_path / "empty.tar.gz", "--trust", session_pub), PackageIntegrityError, "has no manifest.json"
    )


def test_run_prints_top_k_labels_that_match_onnxruntime(labelled, built_models, session_pub, tmp_path, cli):
    import onnxruntime

    from edgefleet.agent.preprocess import decode_image, preprocess

    image = png(tmp_path / "frame.png", seed=5)
    result = cli(
        "run", labelled.package, "--image", image, "--trust", session_pub, "--top-k", "3", "--repeat", "2", "--json"
    )
    assert result.code == 0, result.text
    out = json.loads(result.out)
    m = labelled.manifest
    x = preprocess(decode_image(image.read_bytes()), m.inputs[0], m.preprocessing)
    expected = onnxruntime.InferenceSession(str(built_models["small_cnn"]), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0][0]
    order = np.argsort(-expected)[:3]
    assert [p["label"] for p in out["predictions"]] == [LABELS[i] for i in order]
    np.testing.assert_allclose([p["score"] for p in out["predictions"]], expected[order], atol=1e-5)
    assert len(out["latency_ms"]) == 2 and out["median_ms"] > 0
    text = cli("run", labelled.package, "--image", image, "--trust", session_pub, "--top-k", "2")
    assert text.code == 0 and LABELS[order[0]] in text.out and "latency: median" in text.out


@pytest.mark.parametrize("image", ["empty", "garbage", "truncated", "missing"])
def test_run_on_malformed_image(image, labelled, session_pub, tmp_path, cli):
    path = tmp_path / "frame.png"
    good = png(tmp_path / "good.png").read_bytes()
    if image != "missing":
        path.write_bytes(
            {"empty": b"", "garbage": b"\x89PNG\r\n\x1a\nnot really", "truncated": good[: len(good) // 2]}[image]
        )
    expected = {
        "empty": "empty frame",
        "garbage": "undecodable frame",
        "truncated": "undecodable frame",
        "missing": "cannot read image",
    }[image]
    assert_cli_error(cli("run", labelled.package, "--image", path, "--trust", session_pub), BadInputError, expected)


def test_run_refuses_a_package_for_another_architecture(package_for, session_pub, tmp_path, cli):
    arm = package_for("squeezenet", "rasp4b", verify=False).package
    assert_cli_error(
        cli("run", arm, "--image", png(tmp_path / "f.png"), "--trust", session_pub),
        TargetNotRunnableError,
        "built for aarch64 (rasp4b)",
    )
