"""The agent release: the camera agent's own code and runtime as one signed `.tar.gz` (format version 1).

What the fleet rolls out when the agent itself is updated over the air (docs/agent.md,
"Updating the agent over the air"). Same signing, hashing and version rules as model packages:

    manifest.json           AgentReleaseManifest below; manifest.sig signs its exact bytes
    manifest.sig            raw 64-byte ed25519 signature
    site/edgefleet/...      edgefleet's core and agent code (pure Python: what a device runs)
    runtime/runtime.json    the runtime bundle of `arch` (docs/runtime.md), optional:
    runtime/lib/*.so        without it the camera keeps the runtime it has

Every file other than the two manifest files is listed with its sha256 and size in
`manifest.files`; a reader refuses a release with a missing, extra or altered file. A release
is for one CPU architecture and declares the Python versions and the installed distributions
(numpy, pydantic, ...) its code needs: the camera refuses one it cannot run before switching.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import io
import json
import platform
import re
import shutil
import tarfile
from pathlib import Path
from typing import Final, Literal

from pydantic import Field, ValidationError, field_validator

from edgefleet.archive import safe_extract
from edgefleet.errors import PackageIntegrityError, TargetNotRunnableError, UsageError
from edgefleet.package import (
    MANIFEST,
    SIGNATURE,
    FileEntry,
    SignatureInfo,
    check_files,
    now_utc,
    parse_version,
    sha256_file,
)
from edgefleet.runtime_bundle import INFO_FILE, Bundle, canonical_arch, host_arch
from edgefleet.signing import PublicKey, SigningKey, verify_signature
from edgefleet.strict import Strict, first_error

FORMAT_VERSION: Final = 1
# The name agent releases carry in the fleet's registry and in jobs; no model package may use it.
RELEASE_NAME = "edgefleet-agent"
SITE, RUNTIME = "site", "runtime"


def _dotted(value: str) -> str:
    parse_version(value)
    return value


def _release_tuple(version: str) -> tuple[int, ...]:
    """ "2.6.4" -> (2, 6, 4); "43.0.1.post1" or "1.26.4rc1" -> their leading release numbers; () if none."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


class VersionRange(Strict):
    """min <= version < below, on dotted release numbers; `below` None means no upper bound."""

    min: str
    below: str | None = None

    @field_validator("min", "below")
    @classmethod
    def _check(cls, v: str | None) -> str | None:
        return None if v is None else _dotted(v)

    def contains(self, version: str) -> bool:
        have = _release_tuple(version)
        return (
            bool(have) and have >= parse_version(self.min) and (self.below is None or have < parse_version(self.below))
        )

    def describe(self) -> str:
        return f">={self.min}" + (f",<{self.below}" if self.below else "")


class Requirement(Strict):
    """An installed distribution the release's code imports (the camera's venv provides it)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    versions: VersionRange


class RuntimeRef(Strict):
    """The runtime bundle inside the release (runtime/), as its runtime.json names it."""

    key: str
    abi: int
    tvm_version: str


class AgentReleaseManifest(Strict):
    format_version: Literal[1] = FORMAT_VERSION
    kind: Literal["agent"] = "agent"
    version: str = Field(max_length=64)
    arch: str
    python: VersionRange
    requires: list[Requirement]
    runtime: RuntimeRef | None = None
    built_at: str
    files: dict[str, FileEntry]
    signature: SignatureInfo

    @field_validator("version")
    @classmethod
    def _check_version(cls, v: str) -> str:
        return _dotted(v)

    def to_bytes(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode()


def parse_release_manifest(data: bytes) -> AgentReleaseManifest:
    try:
        return AgentReleaseManifest.model_validate_json(data)
    except ValidationError as exc:
        first = first_error(exc)
        raise PackageIntegrityError(
            f"agent release {MANIFEST} is malformed at {first.where}: {first.msg}",
            "rebuild it with `edgefleet agent release build`",
        ) from None


# What the agent role imports, with the ranges pyproject.toml declares (its core and `agent` extra;
# tests/test_agent_release_requires.py fails when the two differ).
DEFAULT_REQUIRES = (
    ("pydantic", "2.6", "3"),
    ("cryptography", "42", None),
    ("click", "8.1", "9"),
    ("numpy", "1.26", "3"),
    ("pillow", "10", None),
    ("paho-mqtt", "2.0", "3"),
    ("psutil", "5.9", None),
    ("prometheus-client", "0.19", None),
)
DEFAULT_PYTHON = VersionRange(min="3.10", below="3.14")


# The packages a camera runs (images, Debian packages and agent releases ship their code); named,
# not imported, so the shared package stays free of components.
DEVICE_PACKAGES = ("edgefleet", "edgefleet.contracts", "edgefleet.agent")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, name  # this code runs from that package
    return Path(spec.submodule_search_locations[0])


def package_sources(packages: tuple[str, ...]) -> list[tuple[Path, str]]:
    """(file, path under a site-packages folder) for this checkout's code of `packages`: the first is
    `edgefleet` (its top-level modules only), the rest are installed whole.

    The native runtime's C++ source and .pyc are left out.
    """
    core = _package_dir(packages[0])
    files = [(entry, f"edgefleet/{entry.name}") for entry in sorted(core.glob("*.py"))]
    for name in packages[1:]:
        package = _package_dir(name)
        sub = name.replace(".", "/")
        files += [
            (f, f"{sub}/{f.relative_to(package)}")
            for f in sorted(package.rglob("*"))
            if f.is_file() and "__pycache__" not in f.parts and "native" not in f.relative_to(package).parts
        ]
    return files


def device_sources() -> list[tuple[Path, str]]:
    """The code a device runs: edgefleet's core and agent (what images and Debian packages install)."""
    return package_sources(DEVICE_PACKAGES)


def build_release(
    out: Path,
    version: str,
    key: SigningKey,
    *,
    arch: str | None = None,
    bundle: Bundle | None = None,
    code: list[tuple[Path, str]] | None = None,
) -> AgentReleaseManifest:
    """Write the signed release `out` of this checkout's device code (or `code`: (file, path under site/)) and `bundle`."""
    try:
        parse_version(version)
    except ValueError as exc:
        raise UsageError(
            f"agent release version: {exc}", "give a version newer than the cameras' agent, e.g. --version 0.3.0"
        ) from None
    arch = canonical_arch(arch or (bundle.info.arch if bundle else host_arch()))
    if bundle is not None and canonical_arch(bundle.info.arch) != arch:
        raise TargetNotRunnableError(
            f"the runtime bundle is for {bundle.info.arch}, the release for {arch}",
            f"build the bundle with `edgefleet runtime build --arch {arch}`",
        )
    files = {f"{SITE}/{name}": path for path, name in (code if code is not None else device_sources())}
    if bundle is not None:
        files[f"{RUNTIME}/{INFO_FILE}"] = bundle.path / INFO_FILE
        files |= {f"{RUNTIME}/lib/{name}": bundle.lib / name for name in bundle.info.libraries}
    manifest = AgentReleaseManifest(
        version=version,
        arch=arch,
        python=DEFAULT_PYTHON,
        requires=[Requirement(name=n, versions=VersionRange(min=lo, below=hi)) for n, lo, hi in DEFAULT_REQUIRES],
        runtime=RuntimeRef(key=bundle.info.key, abi=bundle.info.abi, tvm_version=bundle.info.tvm_version)
        if bundle
        else None,
        built_at=now_utc(),
        files={
            name: FileEntry(sha256=sha256_file(p), size=Path(p).stat().st_size) for name, p in sorted(files.items())
        },
        signature=SignatureInfo(key_id=key.key_id),
    )
    data = manifest.to_bytes()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for name, payload in ((MANIFEST, data), (SIGNATURE, key.sign(data))):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(payload), 0o644
            tar.addfile(info, io.BytesIO(payload))
        for name, path in sorted(files.items()):
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = info.mtime = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    tmp.replace(out)
    return manifest


def is_agent_release(archive: Path) -> bool:
    """Whether `archive` is an agent release rather than a model package: its first member, manifest.json, says kind "agent"."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile() or first.size > 1024 * 1024:
                return False
            handle = tar.extractfile(first)
            return handle is not None and json.loads(handle.read()).get("kind") == "agent"
    except (tarfile.TarError, OSError, EOFError, ValueError, AttributeError):
        return False  # the model package reader says what is wrong with it


def verify_release_dir(root: Path, trusted: list[PublicKey]) -> tuple[AgentReleaseManifest, str]:
    """(manifest, signer key id) of an unpacked release; PackageIntegrityError if unsigned, altered or incomplete."""
    root = Path(root)
    try:
        data, signature = (root / MANIFEST).read_bytes(), (root / SIGNATURE).read_bytes()
    except FileNotFoundError as exc:
        raise PackageIntegrityError(
            f"the agent release has no {Path(exc.filename).name} (unsigned or not an agent release)",
            "build it with `edgefleet agent release build`",
        ) from None
    signer = verify_signature(data, signature, trusted)
    manifest = parse_release_manifest(data)
    check_files(manifest, root)
    return manifest, signer


def unpack_release(archive: Path, dest: Path, trusted: list[PublicKey]) -> tuple[AgentReleaseManifest, str]:
    """Extract `archive` into `dest` (which must not exist) and verify it there; removes `dest` when refused."""
    try:
        safe_extract(archive, dest)
        return verify_release_dir(dest, trusted)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def compatibility_problems(manifest: AgentReleaseManifest) -> list[str]:
    """Why this camera cannot run the release (architecture, Python, installed distributions); empty when it can."""
    problems = []
    if canonical_arch(manifest.arch) != host_arch():
        problems.append(f"the release is for {manifest.arch}, this camera is {host_arch()}")
    python = platform.python_version()
    if not manifest.python.contains(python):
        problems.append(f"the release needs Python {manifest.python.describe()}, this camera runs {python}")
    for req in manifest.requires:
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"the release needs {req.name} {req.versions.describe()}, which is not installed")
            continue
        if not req.versions.contains(have):
            problems.append(f"the release needs {req.name} {req.versions.describe()}, this camera has {have}")
    return problems


@functools.cache  # read once: a rollback removes the release this process still runs from
def running_release() -> str | None:
    """The version of the release this code runs from (<release>/site/edgefleet/); None for an installed agent."""
    root = Path(__file__).resolve().parents[2]
    if (root / MANIFEST).is_file() and (root / SITE).is_dir():
        try:
            return parse_release_manifest((root / MANIFEST).read_bytes()).version
        except PackageIntegrityError:
            return None
    return None


def running_version() -> str:
    """The agent version a camera reports: its release's, else the installed package's."""
    from edgefleet import __version__

    return running_release() or __version__
