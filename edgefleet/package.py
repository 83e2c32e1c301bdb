"""The model package: one signed, self-describing `.tar.gz` (format version 2; version 1 is still read).

Layout (see docs/package-format.md):

    manifest.json   the Manifest below, UTF-8 JSON
    manifest.sig    raw 64-byte ed25519 signature over the exact bytes of manifest.json
    model.so        the compiled TVM library (runtime.kind == "tvm"), or
    model.tflite    a plain TFLite model (runtime.kind == "tflite")
    baseline.json   optional drift baseline
    variants.json   optional: CPU-specific builds of model.so (model.ISA.so), chosen by the agent at load

Every file other than the two manifest files is listed with its sha256 and size in
`manifest.files`; a reader refuses a package with a missing, extra or altered file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal, Protocol, cast

from pydantic import Field, ValidationError, field_validator

from edgefleet.archive import ArchiveLimits, check_member, safe_extract
from edgefleet.errors import EdgefleetError, PackageIntegrityError, UnsafeArchiveError
from edgefleet.signing import PublicKey, SigningKey, verify_signature
from edgefleet.strict import Strict, first_error

FORMAT_VERSION: Final = 2
# Version 1 lacks `runtime.requires`; readers derive it from the target and TVM versions.
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
# Every manifest field that ends up in a path (the fleet's store key <name>/<version>/<target>-..,
# the device's packages/<name>-<version>/, file names inside the package) is one plain name:
# no '/', no '\\', no leading '.', so no '..'; checked here, where a manifest enters.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
SafeName = Annotated[str, Field(pattern=NAME_PATTERN)]
MAX_MANIFEST_BYTES = 1024 * 1024
# Lists the CPU-specific libraries of a package. A member of its own, not a manifest field: agents that
# know one library (0.1.0, 0.2.0) refuse unknown manifest keys but load runtime.library from such a package.
VARIANTS = "variants.json"


def parse_version(version: str) -> tuple[int, ...]:
    """Package versions are dotted non-negative integers ("3", "1.2", "2.0.11"), ordered as tuples."""
    try:
        parts = tuple(int(p) for p in version.split("."))
    except ValueError:
        parts = ()
    if not parts or any(p < 0 for p in parts):
        raise ValueError(f"version {version!r} is not dotted integers like 1, 1.2 or 1.2.3")
    return parts


class TensorSpec(Strict):
    name: str
    shape: list[int]
    dtype: str


class Preprocessing(Strict):
    """How a camera frame becomes the model's input, exactly as training did it.

    Applied in this order: decode -> convert to `color_order` -> resize to `resize` (H, W)
    with `interpolation` -> cast to float32 -> multiply by `scale` -> subtract `mean` and
    divide by `std` (per channel, in `color_order`) -> arrange as `layout` -> add the batch
    axis -> cast to the input dtype.
    """

    resize: tuple[int, int] | None = None
    interpolation: Literal["bilinear", "nearest"] = "bilinear"
    color_order: Literal["RGB", "BGR", "GRAY"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    # "letterbox" keeps the aspect ratio and pads with `pad_value` (grey 114 as Ultralytics and
    # YOLOX train); detections are mapped back through the same geometry (agent/boxes.py).
    resize_mode: Literal["stretch", "letterbox"] = "stretch"
    pad_value: int = Field(114, ge=0, le=255)


class DetectionInfo(Strict):
    """How a detector's outputs become boxes (format 2, optional: packages without it use SSD).

    `head` names a decoder plugin in agent/detectors/; `options` is that plugin's config,
    validated by its config class when the package is loaded. The thresholds are the defaults
    the agent config's [model.detection] may override.
    """

    head: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    options: dict[str, Any] = Field(default_factory=dict)
    score_threshold: float = Field(0.25, ge=0, le=1)
    iou_threshold: float = Field(0.45, gt=0, le=1)
    max_detections: int = Field(100, ge=1, le=1000)


class TargetInfo(Strict):
    name: SafeName
    tvm_target: dict[str, Any] | None
    arch: str
    device: Literal["cpu", "cuda", "neuron"] = "cpu"


class RuntimeRequirement(Strict):
    """What a camera's runtime must offer to run a TVM package (format 2: `runtime.requires`).

    TVM executables run on the runtime of the same TVM minor version (the VM bytecode and the
    FFI calls change between minors), for the CPU architecture they were linked for, and
    CUDA code needs a runtime built with CUDA for a GPU of that SM.
    """

    arch: str
    tvm: str  # "0.27": major.minor of the TVM that compiled the package
    tvm_ffi: str  # "0.1": major.minor of the FFI ABI the library calls
    device: Literal["cpu", "cuda", "neuron"] = "cpu"
    cuda_sm: str | None = None  # "sm_87"
    cuda_version: str | None = None  # the CUDA toolkit that compiled the kernels, when known

    def describe(self) -> str:
        gpu = f", CUDA {self.cuda_version or 'any'} {self.cuda_sm or ''}".rstrip() if self.device == "cuda" else ""
        return f"{self.arch}, TVM {self.tvm}, TVM FFI {self.tvm_ffi}{gpu}"


def minor_version(version: str) -> str:
    """ "0.27.0.post1" -> "0.27"."""
    return ".".join(version.split(".")[:2])


def requirement_for(
    target: TargetInfo, tvm_version: str, tvm_ffi_version: str, cuda_version: str | None = None
) -> RuntimeRequirement:
    """The runtime a TVM package compiled for `target` with these TVM versions needs."""
    sm = (target.tvm_target or {}).get("arch") if target.device == "cuda" else None
    return RuntimeRequirement(
        arch=target.arch,
        tvm=minor_version(tvm_version),
        tvm_ffi=minor_version(tvm_ffi_version),
        device=target.device,
        cuda_sm=sm,
        cuda_version=cuda_version if target.device == "cuda" else None,
    )


class KernelFallback(Strict):
    """One kernel that kept TVM's plain form because an optimization step failed on it (compiler/build.py)."""

    kernel: str = Field(max_length=200)  # the TIR function, or for a layout step the operator it lowers
    step: Literal["layout", "schedule"]  # layout: stayed NCHW; schedule: left as written (unscheduled)
    reason: str = Field(max_length=500)  # TVM's message


class RuntimeInfo(Strict):
    kind: Literal["tvm", "tflite"]
    library: SafeName
    tvm_version: str | None = None
    tvm_ffi_version: str | None = None
    requires: RuntimeRequirement | None = None  # format 2; None for TFLite packages
    pipeline: str | None = None  # compiler/build.py: edgefleet-cpu, or tvm-default
    pipeline_fallback_reason: str | None = None
    kernel_fallbacks: list[KernelFallback] = Field(default_factory=list)  # per-kernel fallbacks inside edgefleet-cpu


class Provenance(Strict):
    source_uri: str
    source_sha256: str
    source_format: Literal["onnx", "tflite"]
    training_job: str | None = None
    compiler: str
    compiled_at: str


class Verification(Strict):
    status: Literal["passed", "failed", "skipped"]
    reference: str | None = None
    ran_on: str | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    atol: float | None = None
    rtol: float | None = None
    reason: str | None = None


class FileEntry(Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=2 * 1024**3)


class LibraryVariant(Strict):
    """One build of the model for a CPU level: the agent loads it when the CPU has `cpu_features`."""

    library: SafeName
    isa: SafeName  # x86-64-v3, x86-64-v4
    tvm_target: dict[str, Any]  # what it was built for
    cpu_features: list[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]]  # Linux /proc/cpuinfo flag names
    verification: Verification  # its own numeric check, on this library


class LibraryVariants(Strict):
    """variants.json: every library of the package, best first; `runtime.library` is the portable one."""

    format_version: Literal[1] = 1
    variants: list[LibraryVariant] = Field(min_length=1)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


class SignatureInfo(Strict):
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str


class Manifest(Strict):
    format_version: Literal[1, 2] = FORMAT_VERSION
    name: SafeName
    version: str = Field(max_length=64)
    target: TargetInfo
    runtime: RuntimeInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: Preprocessing
    task: Literal["classification", "detection", "other"] = "classification"
    labels: list[str] = Field(default_factory=list)
    detection: DetectionInfo | None = None
    provenance: Provenance
    verification: Verification
    baseline: SafeName | None = None
    tuning: dict[str, Any] | None = None
    files: dict[SafeName, FileEntry]
    signature: SignatureInfo

    @field_validator("version")
    @classmethod
    def _dotted(cls, v: str) -> str:
        parse_version(v)
        return v

    def runtime_requirement(self) -> RuntimeRequirement | None:
        """What this TVM package needs of a runtime (derived for format-1 packages); None for TFLite."""
        if self.runtime.kind != "tvm":
            return None
        if self.runtime.requires is not None:
            return self.runtime.requires
        return requirement_for(self.target, self.runtime.tvm_version or "", self.runtime.tvm_ffi_version or "")

    def to_bytes(self) -> bytes:
        data = self.model_dump(mode="json")
        if not self.runtime.kernel_fallbacks:
            # Agents before 0.2.0 refuse unknown keys: a package with nothing to report stays readable by them.
            del data["runtime"]["kernel_fallbacks"]
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now_utc() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_package(out: Path, manifest_fields: dict[str, Any], files: dict[str, Path], key: SigningKey) -> Manifest:
    """Hash `files`, complete and sign the manifest, and write the package to `out`.

    `manifest_fields` is every Manifest field except `files` and `signature`.
    """
    for name in files:
        if "/" in name or name in (MANIFEST, SIGNATURE):
            raise ValueError(f"bad package file name {name!r}")
    entries = {name: FileEntry(sha256=sha256_file(p), size=Path(p).stat().st_size) for name, p in files.items()}
    manifest = Manifest(**manifest_fields, files=entries, signature=SignatureInfo(key_id=key.key_id))
    data = manifest.to_bytes()
    signature = key.sign(data)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for name, payload in ((MANIFEST, data), (SIGNATURE, signature)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
        for name in sorted(files):
            info = tar.gettarinfo(str(files[name]), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            info.mtime = 0
            with open(files[name], "rb") as fh:
                tar.addfile(info, fh)
    tmp.replace(out)
    return manifest


class OpenedPackage:
    """An extracted, checked package. Use as a context manager to delete the extraction."""

    def __init__(self, manifest: Manifest, root: Path, signer: str | None, owns_root: bool) -> None:
        self.manifest = manifest
        self.root = root
        self.signer = signer
        self._owns_root = owns_root

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def library(self) -> Path:
        return self.root / self.manifest.runtime.library

    def variants(self) -> LibraryVariants | None:
        """The package's CPU-specific libraries (variants.json), checked against the manifest; None without."""
        if VARIANTS not in self.manifest.files:
            return None
        try:
            listed = LibraryVariants.model_validate_json(self.path(VARIANTS).read_bytes())
        except ValidationError as exc:
            first = first_error(exc)
            raise PackageIntegrityError(
                f"{VARIANTS} is malformed at {first.where}: {first.msg}", "rebuild the package with `edgefleet compile`"
            ) from None
        names = [v.library for v in listed.variants]
        unlisted = sorted(set(names) - set(self.manifest.files))
        if unlisted or self.manifest.runtime.library not in names:
            raise PackageIntegrityError(
                f"{VARIANTS} names libraries the manifest does not list ({', '.join(unlisted)}) "
                f"or omits {self.manifest.runtime.library}",
                "rebuild the package with `edgefleet compile`",
            )
        return listed

    def close(self) -> None:
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> OpenedPackage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest_unverified(root: Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise PackageIntegrityError(
            f"the package has no {MANIFEST}",
            "this is not an edgefleet model package; build one with `edgefleet compile`",
        )
    return parse_manifest(path.read_bytes())


def parse_manifest(data: bytes) -> Manifest:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageIntegrityError(f"{MANIFEST} is not valid JSON ({exc})", "rebuild the package") from None
    if isinstance(raw, dict) and raw.get("format_version") not in (None, *READABLE_FORMAT_VERSIONS):
        raise PackageIntegrityError(
            f"package format version {raw.get('format_version')} is not supported (this edgefleet reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))})",
            "upgrade edgefleet on this machine",
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = first_error(exc)
        raise PackageIntegrityError(
            f"{MANIFEST} is malformed at {first.where}: {first.msg}", "rebuild the package with `edgefleet compile`"
        ) from None


class Listed(Protocol):
    """A manifest of files: a model package's or an agent release's."""

    @property
    def files(self) -> dict[str, FileEntry]: ...


def check_files(manifest: Listed, root: Path) -> None:
    """Every listed file present with its hash; nothing else present."""
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()} - {MANIFEST, SIGNATURE}
    missing = sorted(set(manifest.files) - present)
    extra = sorted(present - set(manifest.files))
    if missing:
        raise PackageIntegrityError(
            f"package files missing: {', '.join(missing)}", "the package is incomplete; download or rebuild it"
        )
    if extra:
        raise PackageIntegrityError(
            f"package holds files the manifest does not list: {', '.join(extra)}", "the package was altered; rebuild it"
        )
    for name, entry in manifest.files.items():
        path = root / name
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise PackageIntegrityError(
                f"{name} does not match its sha256 in the manifest (tampered or corrupt)",
                "download or rebuild the package",
            )


# Before the manifest (and, when a signature is required, manifest.sig) has been read, at most
# this many bytes are decompressed; write_package puts both first, so a real package needs ~0.
PRE_MANIFEST_BYTES = 16 * 1024 * 1024
TAR_OVERHEAD_BYTES = 1024  # per member: a 512-byte header and at most 511 bytes of padding
TAR_END_BYTES = 20 * 1024  # end-of-archive blocks and record padding


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Capped:
    """A read-only stream that refuses to deliver more than `cap` bytes (decompressed)."""

    def __init__(self, raw: _Reader, cap: int, path: Path) -> None:
        self.raw, self.cap, self.count, self.path = raw, cap, 0, path
        self.what = "before a signed manifest.json (write_package puts manifest.json and manifest.sig first)"

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n >= 0 else self.cap - self.count + 1)
        self.count += len(data)
        if self.count > self.cap:
            raise UnsafeArchiveError(
                f"{self.path} unpacks to more than {self.cap} bytes {self.what}",
                "the package is malformed or a decompression bomb; rebuild it",
            )
        return data


def _stream(path: Path) -> tuple[_Reader, IO[bytes]]:
    raw = open(path, "rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    raw.seek(0)
    return raw, raw


def scan_package(path: Path, trusted: list[PublicKey] | None, *, strict: bool = True) -> Manifest:
    """Read the package as a stream and write nothing: check the signature (when `trusted`) and that
    every member is a file the manifest declares, with its declared size, before any data is unpacked.

    Decompression is capped: PRE_MANIFEST_BYTES until the manifest is known, then the declared
    sizes plus tar overhead, so a gzip bomb is refused after reading at most that much.
    `strict=False` (inspect) only enforces the caps and leaves the per-member report to check_files.
    """
    stream, raw = _stream(path)
    capped = _Capped(stream, PRE_MANIFEST_BYTES, path)
    manifest: Manifest | None = None
    blobs: dict[str, bytes] = {}
    seen: set[str] = set()
    try:
        # tarfile's stream mode only calls read(), all _Capped offers.
        with raw, tarfile.open(fileobj=cast(IO[bytes], capped), mode="r|") as tar:
            for member in tar:
                check_member(member, path)
                if member.name in (MANIFEST, SIGNATURE) and manifest is None:
                    blobs[member.name] = _small_member(tar, member)
                    manifest = _arm(blobs, trusted, capped)
                    continue
                if manifest is not None and strict:
                    _check_declared(manifest, member)
                seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UnsafeArchiveError(
            f"{path} is not a readable tar archive ({exc})", "check that the file is complete and is a .tar or .tar.gz"
        ) from None
    if MANIFEST not in blobs:
        raise PackageIntegrityError(
            f"the package has no {MANIFEST}",
            "this is not an edgefleet model package; build one with `edgefleet compile`",
        )
    if manifest is None:
        raise PackageIntegrityError(
            "the package is unsigned (no manifest.sig)", "sign it by compiling with a signing key"
        )
    missing = sorted(set(manifest.files) - seen)
    if strict and missing:
        raise PackageIntegrityError(
            f"package files missing: {', '.join(missing)}", "the package is incomplete; download or rebuild it"
        )
    return manifest


def _small_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    cap = MAX_MANIFEST_BYTES if member.name == MANIFEST else 64
    if not member.isfile() or member.size > cap:
        raise PackageIntegrityError(
            f"{member.name} is {member.size} bytes, over its {cap}-byte cap",
            "rebuild the package with `edgefleet compile`",
        )
    handle = tar.extractfile(member)
    assert handle is not None  # a regular file (checked above)
    return handle.read()


def _arm(blobs: dict[str, bytes], trusted: list[PublicKey] | None, capped: _Capped) -> Manifest | None:
    """Once the manifest (and its signature, if one is required) is read: verify, then cap the rest."""
    if MANIFEST not in blobs or (trusted is not None and SIGNATURE not in blobs):
        return None
    if trusted is not None:
        try:
            verify_signature(blobs[MANIFEST], blobs[SIGNATURE], trusted)
        except PackageIntegrityError:
            parse_manifest(blobs[MANIFEST])  # a newer format version is the clearer reason, if it is one
            raise
    manifest = parse_manifest(blobs[MANIFEST])
    declared = sum(e.size for e in manifest.files.values())
    declared += TAR_OVERHEAD_BYTES * (len(manifest.files) + 2) + TAR_END_BYTES
    slack = 0 if trusted is not None else PRE_MANIFEST_BYTES  # inspect reports extra members, not stops at them
    capped.cap = capped.count + declared + slack + 64  # + the signature, if it comes after the manifest
    capped.what = "while its manifest declares less"
    return manifest


def _check_declared(manifest: Manifest, member: tarfile.TarInfo) -> None:
    entry = manifest.files.get(member.name)
    if entry is None and member.name not in (MANIFEST, SIGNATURE):
        raise PackageIntegrityError(
            f"package holds files the manifest does not list: {member.name}", "the package was altered; rebuild it"
        )
    if entry is not None and (not member.isfile() or member.size != entry.size):
        raise PackageIntegrityError(
            f"{member.name} does not match its size in the manifest "
            f"({member.size} bytes, declared {entry.size}: tampered or corrupt)",
            "download or rebuild the package",
        )


@dataclass
class InspectReport:
    """What `edgefleet inspect` shows: the manifest as written, and whether the package checks out."""

    manifest: Manifest
    signer: str | None
    error: EdgefleetError | None

    @property
    def valid(self) -> bool:
        return self.error is None


def inspect_package(path: Path, trusted: list[PublicKey], *, limits: ArchiveLimits = ArchiveLimits()) -> InspectReport:
    """Read a package's manifest even when the package fails its checks, then run the checks.

    Raises only when there is no manifest to show (not a package, unsafe archive, unreadable or
    unsupported manifest); a bad signature or file hash comes back in `error`.
    """
    path = Path(path)
    if not path.is_file():
        raise PackageIntegrityError(f"no package at {path}", "check the path")
    scan_package(path, None, strict=False)  # bounds what extraction can write
    with tempfile.TemporaryDirectory(prefix="edgefleet-inspect-") as tmp:
        root = Path(tmp)
        safe_extract(path, root, limits)
        manifest = read_manifest_unverified(root)
        try:
            sig = root / SIGNATURE
            if not sig.exists():
                raise PackageIntegrityError(
                    "the package is unsigned (no manifest.sig)", "sign it by compiling with a signing key"
                )
            signer = verify_signature((root / MANIFEST).read_bytes(), sig.read_bytes(), trusted)
            check_files(manifest, root)
        except EdgefleetError as exc:
            return InspectReport(manifest, None, exc)
    return InspectReport(manifest, signer, None)


def open_package(
    path: Path,
    trusted: list[PublicKey] | None,
    *,
    dest: Path | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
) -> OpenedPackage:
    """Extract `path` safely, check the signature against `trusted` and every file hash.

    `trusted=None` skips the signature check (for `inspect` of a package from elsewhere);
    everything a device loads goes through a non-empty trusted list.
    """
    path = Path(path)
    if not path.is_file():
        raise PackageIntegrityError(f"no package at {path}", "check the path")
    scan_package(path, trusted)  # signature and declared sizes, before anything is written
    owns = dest is None
    root = Path(tempfile.mkdtemp(prefix="edgefleet-pkg-")) if dest is None else Path(dest)
    try:
        safe_extract(path, root, limits)
        manifest = read_manifest_unverified(root)
        signer = None
        if trusted is not None:
            sig = root / SIGNATURE
            if not sig.exists():
                raise PackageIntegrityError(
                    "the package is unsigned (no manifest.sig)", "sign it by compiling with a signing key"
                )
            signer = verify_signature((root / MANIFEST).read_bytes(), sig.read_bytes(), trusted)
        check_files(manifest, root)
        return OpenedPackage(manifest, root, signer, owns)
    except BaseException:
        if owns:
            shutil.rmtree(root, ignore_errors=True)
        raise
