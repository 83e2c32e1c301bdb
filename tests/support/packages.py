"""Packages made bad on purpose, for the refusal tests of model and shadow installs."""

from __future__ import annotations

import tarfile
from pathlib import Path


def broken_copy(package: Path, case: str, work: Path) -> Path:
    """A copy of `package` that must be refused: "tampered" (the library's last 16 bytes zeroed, so
    its sha256 no longer matches the signed manifest) or "unsigned" (no manifest.sig)."""
    unpacked = work / f"{case}-unpacked"
    with tarfile.open(package) as tar:
        tar.extractall(unpacked, filter="data")
    if case == "tampered":
        library = unpacked / "model.so"
        library.write_bytes(library.read_bytes()[:-16] + b"\0" * 16)
    elif case == "unsigned":
        (unpacked / "manifest.sig").unlink()
    else:
        raise ValueError(f"unknown case {case!r}")
    out = work / f"{case}.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for f in unpacked.iterdir():
            tar.add(f, arcname=f.name)
    return out
