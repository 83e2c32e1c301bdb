"""The model package format v1 (edgefleet/package.py), without compiling: write, open, and refuse."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefleet.errors import PackageIntegrityError
from edgefleet.package import (
    MANIFEST,
    SIGNATURE,
    VARIANTS,
    KernelFallback,
    LibraryVariant,
    LibraryVariants,
    Manifest,
    inspect_package,
    open_package,
    parse_version,
    write_package,
)
from edgefleet.signing import create_signing_key


def fields(**overrides) -> dict:
    base = dict(
        name="door-cam",
        version="1.2.0",
        target=dict(name="x86_64", tvm_target={"kind": "llvm"}, arch="x86_64"),
        runtime=dict(kind="tvm", library="model.so", tvm_version="0.27.0.post1"),
        inputs=[dict(name="input", shape=[1, 3, 8, 8], dtype="float32")],
        outputs=[dict(name="output_0", shape=[1, 2], dtype="float32")],
        preprocessing=dict(),
        labels=["no", "yes"],
        provenance=dict(
            source_uri="m.onnx",
            source_sha256="0" * 64,
            source_format="onnx",
            compiler="edgefleet test",
            compiled_at="2026-11-27T00:00:00+00:00",
        ),
        verification=dict(status="skipped", reason="test"),
    )
    return {**base, **overrides}


@pytest.fixture
def package(tmp_path, signing_key) -> Path:
    lib = tmp_path / "model.so"
    lib.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    baseline = tmp_path / "baseline.json"
    baseline.write_text('{"version": 1}')
    write_package(
        tmp_path / "pkg.tar.gz",
        fields(baseline="baseline.json"),
        {"model.so": lib, "baseline.json": baseline},
        signing_key,
    )
    return tmp_path / "pkg.tar.gz"


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def rewrite(path: Path, out: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def test_roundtrip(package, signing_key):
    files = members(package)
    assert list(files)[:2] == [MANIFEST, SIGNATURE] and len(files[SIGNATURE]) == 64
    raw = json.loads(files[MANIFEST])
    assert raw["format_version"] == 2 and raw["signature"] == {"algorithm": "ed25519", "key_id": signing_key.key_id}
    assert set(raw["files"]) == {"model.so", "baseline.json"} and raw["files"]["model.so"]["size"] == 4 + 256 * 40
    with open_package(package, [signing_key.public]) as opened:
        assert opened.signer == signing_key.key_id
        assert opened.library.read_bytes().startswith(b"\x7fELF")
        assert opened.manifest.preprocessing.layout == "NCHW" and opened.manifest.labels == ["no", "yes"]
        root = opened.root
    assert not root.exists()  # the extraction is removed on close


def test_manifest_bytes_are_canonical(package):
    data = members(package)[MANIFEST]
    assert data == Manifest.model_validate_json(data).to_bytes()


def test_kernel_fallbacks_are_written_only_when_there_are_some(package):
    """Agents before 0.2.0 refuse unknown manifest keys: a package without fallbacks must not carry the key."""
    manifest = Manifest.model_validate_json(members(package)[MANIFEST])
    assert "kernel_fallbacks" not in json.loads(manifest.to_bytes())["runtime"]
    fell_back = manifest.runtime.model_copy(
        update={"kernel_fallbacks": [KernelFallback(kernel="conv2d", step="layout", reason="r")]}
    )
    written = json.loads(manifest.model_copy(update={"runtime": fell_back}).to_bytes())["runtime"]
    assert written["kernel_fallbacks"] == [{"kernel": "conv2d", "step": "layout", "reason": "r"}]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.update({"model.so": f["model.so"][:-1] + b"!"}), "model.so does not match its sha256"),
        (lambda f: f.pop("baseline.json"), "package files missing: baseline.json"),
        (lambda f: f.update({"extra.bin": b"x"}), "does not list: extra.bin"),
        (lambda f: f.pop(SIGNATURE), "unsigned"),
        (lambda f: f.update({SIGNATURE: bytes(64)}), "does not verify"),
        (lambda f: f.update({MANIFEST: f[MANIFEST].replace(b'"1.2.0"', b'"9.9.9"')}), "does not verify"),
    ],
)
def test_altered_packages_are_refused(change, message, package, signing_key, tmp_path):
    files = members(package)
    change(files)
    bad = rewrite(package, tmp_path / "bad.tar.gz", files)
    with pytest.raises(PackageIntegrityError, match=message):
        open_package(bad, [signing_key.public])
    report = inspect_package(bad, [signing_key.public])  # inspect still shows the manifest
    assert report.manifest.name == "door-cam" and not report.valid and message in report.error.cause


def test_untrusted_signer_and_empty_trust(package, tmp_path):
    other = create_signing_key(tmp_path / "other.key")
    with pytest.raises(PackageIntegrityError, match="does not verify against any trusted key"):
        open_package(package, [other.public])
    with pytest.raises(PackageIntegrityError, match="no trusted public keys"):
        open_package(package, [])


def test_trust_none_skips_only_the_signature(package, tmp_path):
    with open_package(package, None) as opened:
        assert opened.signer is None
    files = members(package)
    files["model.so"] += b"x"
    with pytest.raises(PackageIntegrityError, match="does not match"):
        open_package(rewrite(package, tmp_path / "bad.tar.gz", files), None)


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (lambda m: {**m, "format_version": 3}, "package format version 3 is not supported"),
        (lambda m: {**m, "surprise": 1}, "malformed at surprise"),
        (lambda m: {k: v for k, v in m.items() if k != "inputs"}, "malformed at inputs"),
        (lambda m: {**m, "version": "one"}, "malformed at version"),
    ],
)
def test_manifest_problems_are_clear(manifest, message, package, tmp_path):
    files = members(package)
    files[MANIFEST] = json.dumps(manifest(json.loads(files[MANIFEST]))).encode()
    with pytest.raises(PackageIntegrityError, match=message):
        inspect_package(rewrite(package, tmp_path / "bad.tar.gz", files), [])


def test_manifest_not_json(package, tmp_path):
    files = members(package)
    files[MANIFEST] = b"{not json"
    with pytest.raises(PackageIntegrityError, match="not valid JSON"):
        open_package(rewrite(package, tmp_path / "bad.tar.gz", files), None)


def test_write_package_refuses_bad_file_names_and_fields(tmp_path, signing_key):
    lib = tmp_path / "model.so"
    lib.write_bytes(b"x")
    for name in ("../model.so", MANIFEST, "a/b.so"):
        with pytest.raises(ValueError, match="bad package file name"):
            write_package(tmp_path / "p.tar.gz", fields(), {name: lib}, signing_key)
    with pytest.raises(ValidationError):
        write_package(tmp_path / "p.tar.gz", fields(name="no spaces allowed"), {"model.so": lib}, signing_key)
    assert not (tmp_path / "p.tar.gz").exists()


def test_versions_order_as_integer_tuples():
    assert parse_version("1.10") > parse_version("1.9") > parse_version("1")
    for bad in ("", "1.", "v1", "1.-2", "1.x"):
        with pytest.raises(ValueError):
            parse_version(bad)


@pytest.mark.parametrize(
    ("libraries", "message"),
    [
        (["model.x86-64-v4.so", "model.so"], "names libraries the manifest does not list \\(model.x86-64-v4.so\\)"),
        (["model.other.so"], "or omits model.so"),
    ],
)
def test_variants_json_must_match_the_manifest(libraries, message, tmp_path, signing_key):
    """A signed variants.json that names a library the package lacks, or leaves out runtime.library, is refused."""
    lib = tmp_path / "model.so"
    lib.write_bytes(b"\x7fELF")
    other = tmp_path / "model.other.so"
    other.write_bytes(b"\x7fELF!")
    listed = LibraryVariants(
        variants=[
            LibraryVariant(
                library=name,
                isa="x86-64-v3",
                tvm_target={"kind": "llvm"},
                cpu_features=["avx2"],
                verification=dict(status="skipped", reason="test"),
            )
            for name in libraries
        ]
    )
    index = tmp_path / VARIANTS
    index.write_bytes(listed.to_bytes())
    files = {"model.so": lib, "model.other.so": other, VARIANTS: index}
    write_package(tmp_path / "pkg.tar.gz", fields(), files, signing_key)
    with open_package(tmp_path / "pkg.tar.gz", [signing_key.public]) as opened:
        with pytest.raises(PackageIntegrityError, match=message):
            opened.variants()
