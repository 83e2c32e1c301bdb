"""Malicious packages (uploads to the fleet) and malicious jobs (a compromised fleet or MQTT path
sending the agent's update machine whatever it likes), with real signed packages, the real
registry and the real update machine downloading over HTTP."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from tests_fleet_util import h

from edgefleet.signing import create_signing_key, load_signing_key

BOMB_BYTES = 256 * 1024**2


def members(package: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(package) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def repack(out: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], level: int = 6) -> Path:
    """Write a .tar.gz from (header, data) pairs; data None streams header.size zero bytes (a bomb)."""
    with gzip.open(out, "wb", compresslevel=level) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, data in entries:
            if data is None:
                tar.addfile(info, _Zeros(info.size))
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def resigned(
    package: Path, out: Path, key_path: Path, change=None, extra: list | None = None, bomb: str | None = None
) -> Path:
    """The package with its manifest changed by `change(dict)` and signed again with `key_path`."""
    key = load_signing_key(key_path)
    entries = members(package)
    manifest = json.loads(dict((m.name, d) for m, d in entries)["manifest.json"])
    if change:
        change(manifest)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    out_entries = []
    for m, d in entries:
        if m.name == "manifest.json":
            d = data
        elif m.name == "manifest.sig":
            d = key.sign(data)
        elif m.name == bomb:
            m.size = BOMB_BYTES
            d = None
        out_entries.append((m, d))
    return repack(out, out_entries + (extra or []))


def info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.linkname = kind, link
    return i


def _set(path: str, value):
    def change(manifest: dict) -> None:
        *parents, leaf = path.split(".")
        node = manifest
        for p in parents:
            node = node[p]
        node[leaf] = value

    return change


def _rename_file(manifest: dict) -> None:
    manifest["files"]["../evil.so"] = manifest["files"].pop("model.so")


# (row id, how the upload is made from the good v1 package, words the refusal must contain)
UPLOADS = [
    (
        "signed-target-name-traversal",
        lambda p, k, t: resigned(p, t, k, _set("target.name", "../../../../tmp/escape")),
        "target.name",
    ),
    ("signed-model-name-traversal", lambda p, k, t: resigned(p, t, k, _set("name", "../escape")), "name"),
    ("signed-version-traversal", lambda p, k, t: resigned(p, t, k, _set("version", "1/../../x")), "version"),
    ("signed-file-name-traversal", lambda p, k, t: resigned(p, t, k, _rename_file), "files"),
    (
        "signed-library-outside-package",
        lambda p, k, t: resigned(p, t, k, _set("runtime.library", "/etc/passwd")),
        "runtime.library",
    ),
    (
        "untrusted-signer",
        lambda p, k, t: resigned(p, t, create_signing_key(t.parent / "rogue.key").path),
        "does not verify",
    ),
    (
        "unsigned-gzip-bomb",
        lambda p, k, t: repack(
            t, [(m, d) for m, d in members(p) if m.name == "manifest.json"] + [(_sized("model.so"), None)]
        ),
        "before a signed",
    ),
    (
        "signed-manifest-then-oversize-member",
        lambda p, k, t: resigned(p, t, k, bomb="model.so"),
        "does not match its size",
    ),
    (
        "bomb-before-the-manifest",
        lambda p, k, t: repack(t, [(_sized("model.so"), None)] + members(p)),
        "before a signed",
    ),
    (
        "undeclared-extra-member",
        lambda p, k, t: resigned(p, t, k, extra=[(info("evil.so"), b"\x7fELF")]),
        "does not list: evil.so",
    ),
    (
        "symlink-out-of-the-package",
        lambda p, k, t: resigned(p, t, k, extra=[(info("model.link", tarfile.SYMTYPE, "../../../etc/passwd"), b"")]),
        "outside the archive",
    ),
    ("huge-manifest", lambda p, k, t: repack(t, [(info("manifest.json"), b" " * (2 * 1024**2))]), "over its"),
    ("not-a-tar", lambda p, k, t: _write(t, b"\x1f\x8b" + bytes(100)), "not a readable tar"),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _sized(name: str) -> tarfile.TarInfo:
    i = info(name)
    i.size = BOMB_BYTES
    return i


@pytest.mark.parametrize("make, words", [r[1:] for r in UPLOADS], ids=[r[0] for r in UPLOADS])
def test_malicious_uploads_are_refused_before_anything_is_unpacked(api, fleet, tiny_packages, tmp_path, make, words):
    bad = make(tiny_packages["v1"], tiny_packages["key"], tmp_path / "bad.tar.gz")
    started = time.monotonic()
    r = api.post("/api/v1/packages", content=bad.read_bytes(), headers=h(api, "operator"))
    elapsed = time.monotonic() - started
    assert r.status_code == 400 and words in r.json()["error"], r.json()
    assert elapsed < 5, f"refusing took {elapsed:.1f} s: something was decompressed"
    assert api.get("/api/v1/models", headers=h(api, "read-only")).json()["items"] == []
    store = fleet.config.data_dir
    assert not list(store.rglob("*escape*")) and not list(tmp_path.parent.rglob("escape*"))


def test_a_gzip_bomb_writes_nothing(tiny_packages, tmp_path):
    """Hole 7: the library path the fleet and the agent share; the destination stays empty."""
    from edgefleet.errors import EdgefleetError
    from edgefleet.package import open_package
    from edgefleet.signing import load_public_key, public_path

    bomb = resigned(tiny_packages["v1"], tmp_path / "bomb.tar.gz", tiny_packages["key"], bomb="model.so")
    dest = tmp_path / "dest"
    with pytest.raises(EdgefleetError, match="does not match its size"):
        open_package(bomb, [load_public_key(public_path(tiny_packages["key"]))], dest=dest)
    assert not dest.exists() or not any(dest.rglob("*"))
    assert bomb.stat().st_size < 2 * 1024**2


# ---- malicious jobs from a compromised fleet --------------------------------------------------------


def _pkg(field: str, value):
    return lambda job: job["package"].__setitem__(field, value)


def _top(field: str, value):
    return lambda job: job.__setitem__(field, value)


# (row id, package offered, version, change to the job, expected result of handle_notify, words in the last update)
JOBS = [
    ("job-id-traversal", "v2", "2", _top("job", "../../../etc/cron.d/x"), None, None),
    ("job-id-with-slash", "v2", "2", _top("job", "a/b"), None, None),
    ("package-name-traversal", "v2", "2", _pkg("name", "../../x"), None, None),
    ("version-traversal", "v2", "2", _pkg("version", "2/../../x"), None, None),
    ("negative-size", "v2", "2", _pkg("size", -1), None, None),
    ("size-as-bool", "v2", "2", _pkg("size", True), None, None),
    ("size-10TiB", "v2", "2", _pkg("size", 10 * 1024**4), None, None),
    ("unknown-kind", "v2", "2", _top("kind", "exec"), None, None),
    ("schema-2", "v2", "2", _top("schema", 2), None, None),
    ("local-file-url", "v2", "2", _pkg("url", "file:///etc/passwd"), None, None),
    (
        "server-sends-more-than-declared",
        "v2",
        "2",
        lambda job: job["package"].__setitem__("size", job["package"]["size"] - 100),
        "failed",
        "larger than",
    ),
    (
        "truncated-download",
        "v2",
        "2",
        lambda job: job["package"].__setitem__("size", job["package"]["size"] + 100),
        "failed",
        "downloaded",
    ),
    ("wrong-sha256", "v2", "2", _pkg("sha256", "0" * 64), "failed", "sha256"),
    ("older-version-replayed", "v1", "1", None, "failed", "not newer"),
    ("rollback-authorized-for-another-device", "v1", "1", "other-device", "failed", "not newer"),
    ("untrusted-signer", "rogue", "2", None, "failed", "does not verify"),
    ("gzip-bomb-matching-sha-and-size", "bomb", "2", None, "failed", "does not match its size"),
]


@pytest.mark.parametrize("offered, version, change, result, words", [r[1:] for r in JOBS], ids=[r[0] for r in JOBS])
def test_malicious_jobs_leave_the_working_model(
    device, tiny_packages, tmp_path, offered, version, change, result, words
):
    if offered == "rogue":
        device.packages["rogue"] = resigned(
            tiny_packages["v2"], tmp_path / "rogue.tar.gz", create_signing_key(tmp_path / "rogue.key").path
        )
    if offered == "bomb":
        device.packages["bomb"] = resigned(
            tiny_packages["v2"], tmp_path / "bomb.tar.gz", tiny_packages["key"], bomb="model.so"
        )
    if offered in ("v1",):
        assert device.manager.handle_notify(device.job("up", "v2", "2")) == "committed"
    job = device.job("attack", offered, version)
    if change == "other-device":
        job |= {"kind": "rollback", "rollback_authorization": device.authorization("attack", "1", device="cam-9")}
    elif change:
        change(job)
    assert device.manager.handle_notify(job) == result
    if words:
        assert words in device.published[-1][1].get("detail", "") + device.published[-1][1].get("error", ""), (
            device.published[-1]
        )
    assert device.slot.manifest.version == ("2" if offered == "v1" else "1"), "the working model stays"
    state = device.state
    assert not list(state.parent.rglob("x")) and not (Path("/etc/cron.d/x").exists())
    assert sum(f.stat().st_size for f in state.rglob("*") if f.is_file()) < 50 * 1024**2


def test_truncated_download_reports_the_real_byte_count(device, tiny_packages):
    """Hole 8: was always 'downloaded 0 bytes'."""
    job = device.job("short", "v2", "2")
    real = job["package"]["size"]
    job["package"]["size"] = real + 100
    assert device.manager.handle_notify(job) == "failed"
    assert f"downloaded {real} bytes, expected {real + 100}" in json.dumps(device.published[-1][1])


def test_sha_of_bomb_is_what_a_compromised_fleet_would_send(tiny_packages, tmp_path):
    """The bomb row above is honest: its job carries the bomb's own sha256 and size, so only the
    signed manifest's declared sizes stop it."""
    bomb = resigned(tiny_packages["v2"], tmp_path / "bomb.tar.gz", tiny_packages["key"], bomb="model.so")
    assert len(hashlib.sha256(bomb.read_bytes()).hexdigest()) == 64 and bomb.stat().st_size < 2 * 1024**2
