"""The model registry: groups, versions with approval states and lineage, builds per target.

Answers are the API's response models (ModelGroupOut, ModelVersionOut in edgefleet/contracts/rest.py).

A model version is `(group, version)`; uploading a signed package adds the build for the
package's target to the version named by its manifest (name = group). Approval states and
their allowed changes are SageMaker Model Registry's: PendingManualApproval -> Approved or
Rejected, and an approved version can be rejected (and re-approved) later.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.agent_release import RELEASE_NAME, is_agent_release, unpack_release
from edgefleet.contracts.rest import BuildOut, Lineage, ModelGroupOut, ModelGroupPage, ModelVersionOut, ModelVersionPage
from edgefleet.errors import BadInputError, ConflictError, InvalidTransitionError, NotFoundError
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Build, ModelGroup, ModelVersion
from edgefleet.fleet.paging import MAX_PAGE, keyset
from edgefleet.package import open_package, parse_version, sha256_file

PENDING, APPROVED, REJECTED = "PendingManualApproval", "Approved", "Rejected"
APPROVAL_TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({APPROVED, REJECTED}),
    APPROVED: frozenset({REJECTED}),
    REJECTED: frozenset({APPROVED}),
}


def build_out(b: Build) -> BuildOut:
    return BuildOut(
        id=b.id,
        target=b.target,
        arch=b.arch,
        sha256=b.sha256,
        size=b.size,
        signer=b.signer,
        created_at=b.created_at,
    )


def version_out(s: Session, v: ModelVersion) -> ModelVersionOut:
    group = s.get(ModelGroup, v.group_id)
    builds = s.scalars(select(Build).where(Build.model_version_id == v.id).order_by(Build.target)).all()
    return ModelVersionOut(
        id=v.id,
        group=group.name,
        version=v.version,
        approval=v.approval,
        approval_note=v.approval_note,
        lineage=Lineage(source_uri=v.source_uri, source_sha256=v.source_sha256, training_job=v.training_job),
        builds=[build_out(b) for b in builds],
        created_at=v.created_at,
    )


def upload_package(fleet: Fleet, path: Path) -> ModelVersionOut:
    """Verify `path` (a model package or an agent release) against the fleet's trusted keys, store it, and register its build."""
    if is_agent_release(path):
        return upload_agent_release(fleet, path)
    extract = Path(tempfile.mkdtemp(prefix="edgefleet-upload-"))
    try:
        with open_package(path, fleet.trusted, dest=extract / "pkg") as opened:
            m = opened.manifest
            signer = opened.signer or ""
    finally:
        shutil.rmtree(extract, ignore_errors=True)
    if m.name == RELEASE_NAME:
        raise ConflictError(
            f"the model name {RELEASE_NAME!r} is reserved for agent releases", "give the model another name"
        )
    source = (m.provenance.source_uri, m.provenance.source_sha256, m.provenance.training_job)
    return _register(
        fleet, path, m.name, m.version, m.target.name, m.target.arch, signer, m.model_dump(mode="json"), source
    )


def agent_target(arch: str) -> str:
    """The build target an agent release for `arch` is registered under; devices pick it by the arch they report."""
    return f"agent-{arch}"


def upload_agent_release(fleet: Fleet, path: Path) -> ModelVersionOut:
    """Register an agent release as version VERSION of the group `edgefleet-agent`, one build per architecture.

    Its source is the code it ships: builds of one version for several architectures share it.
    """
    extract = Path(tempfile.mkdtemp(prefix="edgefleet-upload-"))
    try:
        m, signer = unpack_release(path, extract / "release", fleet.trusted)
    finally:
        shutil.rmtree(extract, ignore_errors=True)
    code = hashlib.sha256(
        "".join(f"{n}:{e.sha256}\n" for n, e in sorted(m.files.items()) if n.startswith("site/")).encode()
    ).hexdigest()
    source = (f"edgefleet agent {m.version}", code, None)
    return _register(
        fleet, path, RELEASE_NAME, m.version, agent_target(m.arch), m.arch, signer, m.model_dump(mode="json"), source
    )


def _register(
    fleet: Fleet,
    path: Path,
    name: str,
    version_name: str,
    target: str,
    arch: str,
    signer: str,
    manifest: dict,
    source: tuple,
) -> ModelVersionOut:
    """Store a verified archive and add its build to (name, version), creating them if new."""
    source_uri, source_sha256, training_job = source
    sha = sha256_file(path)
    key = f"{name}/{version_name}/{target}-{sha[:12]}.tar.gz"
    with fleet.lock, fleet.writer() as s, s.begin():
        group = s.scalar(select(ModelGroup).where(ModelGroup.name == name))
        if group is None:
            group = ModelGroup(name=name)
            s.add(group)
            s.flush()
        version = s.scalar(
            select(ModelVersion).where(ModelVersion.group_id == group.id, ModelVersion.version == version_name)
        )
        if version is None:
            version = ModelVersion(
                group_id=group.id,
                version=version_name,
                source_uri=source_uri,
                source_sha256=source_sha256,
                training_job=training_job,
            )
            s.add(version)
            s.flush()
        elif version.source_sha256 != source_sha256:
            raise ConflictError(
                f"{name} {version_name} is registered from another source ({version.source_sha256[:12]}, this upload {source_sha256[:12]})",
                "give it a new version; one version is one source built for several targets",
            )
        if s.scalar(select(Build).where(Build.model_version_id == version.id, Build.target == target)):
            raise ConflictError(
                f"{name} {version_name} already has a build for target {target}", "upload it as a new version"
            )
        fleet.store.put(key, path)
        s.add(
            Build(
                model_version_id=version.id,
                target=target,
                arch=arch,
                sha256=sha,
                size=Path(path).stat().st_size,
                store_key=key,
                signer=signer,
                manifest=manifest,
            )
        )
        s.flush()
        return version_out(s, version)


def get_version_row(s: Session, group: str, version: str) -> ModelVersion:
    row = s.scalar(
        select(ModelVersion)
        .join(ModelGroup, ModelGroup.id == ModelVersion.group_id)
        .where(ModelGroup.name == group, ModelVersion.version == version)
    )
    if row is None:
        raise NotFoundError(f"no model version {group} {version}", "list them with `edgefleet fleet models list`")
    return row


def list_groups(fleet: Fleet, limit: int = MAX_PAGE, cursor: str | None = None) -> ModelGroupPage:
    with fleet.session() as s:
        groups, after = keyset(s, select(ModelGroup), ModelGroup.name, limit, cursor)
        out = []
        for g in groups:
            versions = s.scalars(select(ModelVersion.version).where(ModelVersion.group_id == g.id)).all()
            latest = max(versions, key=parse_version, default=None)
            out.append(ModelGroupOut(name=g.name, description=g.description, versions=len(versions), latest=latest))
        return ModelGroupPage(items=out, next=after)


def list_versions(fleet: Fleet, group: str, limit: int = MAX_PAGE, cursor: str | None = None) -> ModelVersionPage:
    """A page of a group's versions in version order (sorted here: a group holds few versions)."""
    with fleet.session() as s:
        g = s.scalar(select(ModelGroup).where(ModelGroup.name == group))
        if g is None:
            raise NotFoundError(f"no model group {group!r}", "upload a package with `edgefleet fleet models upload`")
        rows = sorted(
            s.scalars(select(ModelVersion).where(ModelVersion.group_id == g.id)), key=lambda v: parse_version(v.version)
        )
        start = 0
        if cursor is not None:
            start = next((i + 1 for i, v in enumerate(rows) if v.version == cursor), -1)
            if start < 0:
                raise BadInputError(
                    f"cursor {cursor[:40]!r} is not a version of {group}", "pass the `next` of the previous page"
                )
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return ModelVersionPage(items=[version_out(s, v) for v in page], next=page[-1].version if more else None)


def get_version(fleet: Fleet, group: str, version: str) -> ModelVersionOut:
    with fleet.session() as s:
        return version_out(s, get_version_row(s, group, version))


def set_approval(fleet: Fleet, group: str, version: str, approval: str, note: str = "") -> ModelVersionOut:
    if approval not in APPROVAL_TRANSITIONS:
        raise InvalidTransitionError(
            f"unknown approval state {approval!r}", f"use one of {', '.join(APPROVAL_TRANSITIONS)}"
        )
    with fleet.lock, fleet.writer() as s, s.begin():
        row = get_version_row(s, group, version)
        if approval not in APPROVAL_TRANSITIONS[row.approval]:
            raise InvalidTransitionError(
                f"{group} {version} is {row.approval}; it cannot become {approval}",
                "see the approval states in docs/fleet.md",
            )
        row.approval = approval
        row.approval_note = note
        return version_out(s, row)
