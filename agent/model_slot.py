"""The active model on a device, and the package store it comes from.

    <state>/packages/<name>-<version>/   an extracted, verified package (manifest.json, manifest.sig, model.so ...)
    <state>/packages/current             symlink to the active one (replaced atomically with rename)

Every load re-checks the manifest signature against the trusted keys and every file hash, so
a package altered on disk is refused. `reload()` swaps the in-memory (model, manifest) pair
atomically; on failure the old pair stays. The OTA update manager (agent/update.py) stages
packages with `stage()`, flips `current` with `point_current()` and then calls `reload()`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.errors import PackageIntegrityError
from edgefleet.package import SIGNATURE, Manifest, OpenedPackage, check_files, open_package, read_manifest_unverified
from edgefleet.signing import PublicKey, verify_signature

log = logging.getLogger("edgefleet.agent.model")


@dataclass(frozen=True)
class ActiveModel:
    model: Any  # TvmModel or TfliteModel: .run(list[np.ndarray]) -> list[np.ndarray]
    manifest: Manifest
    directory: Path | None
    library: str | None = None  # which of the package's libraries runs (agent/variants.py), for telemetry


def check_detection(manifest: Manifest) -> None:
    """Refuse, before loading, a detector whose head (or its options) this agent does not know:
    otherwise every frame would fail the same way."""
    if manifest.task == "detection" and manifest.detection is not None:
        from edgefleet.agent.detectors import head_config

        head_config(manifest.detection.head, manifest.detection.options)


def verify_extracted(directory: Path, trusted: list[PublicKey]) -> OpenedPackage:
    """Check an extracted package in place: signature over manifest.json and every file hash."""
    directory = Path(directory)
    manifest = read_manifest_unverified(directory)
    sig = directory / SIGNATURE
    if not sig.exists():
        raise PackageIntegrityError(f"{directory} has no {SIGNATURE}", "reinstall the package")
    signer = verify_signature((directory / "manifest.json").read_bytes(), sig.read_bytes(), trusted)
    check_files(manifest, directory)
    return OpenedPackage(manifest, directory, signer, owns_root=False)


class ModelSlot:
    def __init__(self, state_dir: Path, trusted_keys: list[PublicKey], role: str = "active") -> None:
        """`role`: what a loaded model is, in the log ("active"; the shadow slot's candidate is not)."""
        self.state_dir = Path(state_dir)
        self.role = role
        self.packages = self.state_dir / "packages"
        self.packages.mkdir(parents=True, exist_ok=True)
        self.trusted_keys = trusted_keys
        self._active: ActiveModel | None = None
        self._lock = threading.Lock()

    @property
    def current_link(self) -> Path:
        return self.packages / "current"

    @property
    def active(self) -> ActiveModel:
        """The (model, manifest) pair to use for one frame; read once per frame so both match."""
        active = self._active
        if active is None:
            raise PackageIntegrityError(
                "no model is loaded",
                "install one with `edgefleet agent install --package` or deploy one from the fleet",
            )
        return active

    @property
    def loaded(self) -> ActiveModel | None:
        """The active pair, or None before the first load."""
        return self._active

    @property
    def model(self) -> Any:
        return self.active.model

    @property
    def manifest(self) -> Manifest:
        return self.active.manifest

    def stage(self, package_path: Path) -> Path:
        """Verify and extract a package into packages/<name>-<version>/ (kept if already there)."""
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=self.packages) as tmp:
            opened = open_package(package_path, self.trusted_keys, dest=Path(tmp) / "pkg")
            final = self.packages / f"{opened.manifest.name}-{opened.manifest.version}"
            if final.exists():
                try:
                    verify_extracted(final, self.trusted_keys)
                    return final
                except PackageIntegrityError:
                    log.warning("replacing damaged package directory %s", final)
                    shutil.rmtree(final)
            os.rename(opened.root, final)
        return final

    def point_current(self, directory: Path) -> None:
        """Make `current` point at `directory` (a sibling under packages/), atomically."""
        tmp = self.packages / ".current.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(directory).name)
        os.replace(tmp, self.current_link)

    def current_dir(self) -> Path | None:
        link = self.current_link
        return link.resolve() if link.is_symlink() else None

    def reload(self) -> ActiveModel:
        """Load whatever `current` points at and swap it in; raises (keeping the old model) on failure."""
        from edgefleet.agent.runtime import load_model
        from edgefleet.agent.variants import select_library

        directory = self.current_dir()
        if directory is None:
            raise PackageIntegrityError(f"{self.current_link} does not exist", "install a package first")
        opened = verify_extracted(directory, self.trusted_keys)
        check_detection(opened.manifest)
        model = load_model(opened)
        library = select_library(opened).describe()  # the choice load_model made: same package, same CPU
        active = ActiveModel(model, opened.manifest, directory, library)
        with self._lock:
            self._active = active
        log.info("model %s %s %s, library %s", opened.manifest.name, opened.manifest.version, self.role, library)
        return active

    def install_initial(self, package_path: Path) -> ActiveModel:
        """First install on a device: stage, point `current` at it, and load it."""
        directory = self.stage(package_path)
        self.point_current(directory)
        return self.reload()

    def unload(self) -> None:
        """Forget the loaded model (a shadow model that stops); what is on disk stays."""
        with self._lock:
            self._active = None

    def load_plain(self, active: ActiveModel) -> None:
        """Use a model that is not a package (a plain .tflite from the config); updates do not apply."""
        with self._lock:
            self._active = active
