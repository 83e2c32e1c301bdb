"""The image's one layer, written from a small fake sysroot: merged /usr and what TRIM leaves out (no docker, no QEMU)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from types import SimpleNamespace

import edgefleet.cross.image as image


def _file(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_the_layer_writes_a_merged_usr_once_and_leaves_out_what_the_agent_never_reads(tmp_path, monkeypatch):
    root = tmp_path / "sysroot" / "root"
    for tree in ("usr/", ""):  # a `dpkg -x` tree: the same files under /lib and /usr/lib
        _file(root / f"{tree}lib/aarch64-linux-gnu/libc.so.6", b"libc")
        _file(root / f"{tree}bin/dash", b"dash")
    _file(root / "lib/aarch64-linux-gnu/libonly.so.1", b"only under /lib")
    (root / "lib/aarch64-linux-gnu/libonly.so").symlink_to("libonly.so.1")
    _file(root / "usr/lib/python3/dist-packages/numpy/__init__.py")
    left_out = [
        "usr/lib/python3/dist-packages/numpy/core/tests/test_umath.py",
        "usr/lib/python3.11/dist-packages/numpy/core/_multiarray_umath.so",
        "usr/lib/apt/methods/http",
        "usr/bin/dpkg-deb",
        "usr/lib/aarch64-linux-gnu/libgnutls.so.30",
        "usr/lib/aarch64-linux-gnu/security/pam_unix.so",
        "lib/aarch64-linux-gnu/security/pam_env.so",  # trimmed under its /usr name too
    ]
    for name in left_out:
        _file(root / name)
    _file(root / "usr/share/doc/libc6/copyright")
    (tmp_path / "sysroot" / "site").mkdir()
    _file(tmp_path / "bundle" / "lib" / "libedgefleet_runtime.so")
    monkeypatch.setattr(image, "find_bundle", lambda arch: SimpleNamespace(path=tmp_path / "bundle"))
    sysroot = SimpleNamespace(
        root=root, site=tmp_path / "sysroot" / "site", arch=SimpleNamespace(target_arch="aarch64")
    )

    image._write_layer(sysroot, tmp_path / "layer.tar")
    with tarfile.open(tmp_path / "layer.tar") as tar:
        members = [(m.name.removeprefix("./"), m) for m in tar.getmembers()]
    names = [name for name, _ in members]
    entries = dict(members)
    for top in ("lib", "bin"):
        assert entries[top].issym() and entries[top].linkname == f"usr/{top}"
    assert names.count("usr/lib/aarch64-linux-gnu/libc.so.6") == 1 and names.count("usr/bin/dash") == 1
    assert not [n for n in names if n.startswith(("lib/", "bin/"))]
    assert entries["usr/lib/aarch64-linux-gnu/libonly.so.1"].isreg()
    assert entries["usr/lib/aarch64-linux-gnu/libonly.so"].linkname == "libonly.so.1"
    assert "usr/lib/python3/dist-packages/numpy/__init__.py" in names
    assert "usr/share/doc/libc6/copyright" in names
    assert "opt/edgefleet/runtime/lib/libedgefleet_runtime.so" in names
    assert not [n for n in names if any(n == left or n.startswith(left + "/") for left in left_out)]
    assert "usr/lib/aarch64-linux-gnu/security/pam_env.so" not in names
