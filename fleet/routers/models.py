"""Model groups and versions, approval, package upload and the signed package downloads jobs point at."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response

from edgefleet.contracts.rest import ApprovalBody, ModelGroupPage, ModelVersionOut, ModelVersionPage
from edgefleet.errors import BadInputError, NotFoundError, PermissionDeniedError
from edgefleet.fleet import registry
from edgefleet.fleet.body_limit import MAX_UPLOAD_BYTES
from edgefleet.fleet.db import Build
from edgefleet.fleet.routers.deps import ADMIN, DEFAULT_PAGE, OPERATOR, READ, FleetDep, Id, Limit, SessionDep

router = APIRouter(prefix="/api/v1")


@router.get("/models", dependencies=[READ], response_model=ModelGroupPage)
def list_models(fleet: FleetDep, limit: Limit = DEFAULT_PAGE, cursor: str | None = None) -> ModelGroupPage:
    return registry.list_groups(fleet, limit, cursor)


@router.get("/models/{group}/versions", dependencies=[READ], response_model=ModelVersionPage)
def list_versions(
    fleet: FleetDep, group: str, limit: Limit = DEFAULT_PAGE, cursor: str | None = None
) -> ModelVersionPage:
    return registry.list_versions(fleet, group, limit, cursor)


@router.get("/models/{group}/versions/{version}", dependencies=[READ], response_model=ModelVersionOut)
def get_version(fleet: FleetDep, group: str, version: str) -> ModelVersionOut:
    return registry.get_version(fleet, group, version)


@router.post("/models/{group}/versions/{version}/approval", dependencies=[ADMIN], response_model=ModelVersionOut)
def approve(fleet: FleetDep, group: str, version: str, body: ApprovalBody) -> ModelVersionOut:
    return registry.set_approval(fleet, group, version, body.state, body.note)


@router.post("/packages", dependencies=[OPERATOR], status_code=201, response_model=ModelVersionOut)
async def upload(fleet: FleetDep, request: Request) -> ModelVersionOut:
    """Upload a signed package (.tar.gz) as the raw request body."""
    fd, tmp = tempfile.mkstemp(prefix="edgefleet-upload-", suffix=".tar.gz")
    try:
        size = 0
        with os.fdopen(fd, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    raise BadInputError("the upload is larger than 2 GiB", "packages are capped at 2 GiB")
                fh.write(chunk)
        if size == 0:
            raise BadInputError("the request body is empty", "send the package file as the body")
        return await run_in_threadpool(registry.upload_package, fleet, Path(tmp))
    finally:
        os.unlink(tmp)


@router.get(
    "/builds/{build_id}/download",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the package",
        },
        307: {"description": "to the object store"},
    },
)
def download(
    fleet: FleetDep,
    s: SessionDep,
    build_id: Id,
    expires: int = Query(..., le=2**62),
    sig: str = Query(..., max_length=128),
) -> Response:
    """A build's package, for the link in a job (signed and expiring: no token)."""
    if not fleet.check_download(build_id, expires, sig):
        raise PermissionDeniedError("the download link is invalid or expired", "ask the fleet for a new job")
    build = s.get(Build, build_id)
    if build is None:
        raise NotFoundError(f"no build {build_id}", "")
    local = fleet.store.path(build.store_key)
    if local is None:
        return RedirectResponse(fleet.store.presigned_url(build.store_key, int(fleet.config.download_ttl_s)))
    return FileResponse(local, media_type="application/gzip", filename=Path(build.store_key).name)
