"""The fleet's REST API (FastAPI; OpenAPI at /docs and /openapi.json), version 1 under /api/v1.

Every request but /healthz, /api/v1/enroll (which carries its one-time token) and signed
package downloads needs `Authorization: Bearer <token>` with a scope that covers it. Errors
are JSON `{"error": cause, "fix": fix}` with a 4xx status; bad input never yields a 500.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from edgefleet.errors import BadInputError, ConflictError, EdgefleetError, InvalidTransitionError, NotFoundError, PermissionDeniedError, ServiceError
from edgefleet.fleet import auth, devices, drift_service, registry, rollouts
from edgefleet.fleet.body_limit import MAX_UPLOAD_BYTES, BodyLimit
from edgefleet.fleet.dashboard import mount_dashboard
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Build, Counter
from edgefleet.fleet.ingest import Ingest

# Ids are bounded so that an absurd number is a 422, not a database overflow.
Id = Annotated[int, PathParam(ge=1, le=2**62)]
STATUS = {NotFoundError: 404, ConflictError: 409, InvalidTransitionError: 409, PermissionDeniedError: 403, ServiceError: 503}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApprovalBody(Body):
    state: str
    note: str = ""


class DevicePatch(Body):
    group: str | None = None
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)


class EnrollmentTokenBody(Body):
    device_id: str
    target: str
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class EnrollBody(Body):
    token: str
    device_id: str
    csr: str


class RolloutBody(Body):
    group: str
    version: str
    selection: dict[str, Any] = Field(default_factory=dict)
    plan: dict[str, Any] = Field(default_factory=dict)


class ControlBody(Body):
    reason: str = ""


class TokenBody(Body):
    name: str = Field(min_length=1, max_length=128)
    scope: str


def create_app(fleet: Fleet, ingest: Ingest | None = None) -> FastAPI:
    app = FastAPI(title="edgefleet fleet", version="1", description="Model registry, devices and over-the-air rollouts for edge camera fleets.")
    app.add_middleware(BodyLimit)  # request size limits per endpoint (fleet/body_limit.py)

    @app.exception_handler(EdgefleetError)
    async def _edgefleet_error(request: Request, exc: EdgefleetError) -> JSONResponse:
        status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)
        if isinstance(exc, PermissionDeniedError) and "no API token" in exc.cause:
            status = 401
        return JSONResponse({"error": exc.cause, "fix": exc.fix}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg')}", "fix": "see /docs for the request schema"}, status_code=422)

    def scope(needed: str):
        def check(authorization: str | None = Header(None)) -> str:
            token = authorization[7:] if authorization and authorization.lower().startswith("bearer ") else None
            return auth.authorize(fleet, token, needed)

        return Depends(check)

    read, operator, admin = scope("read-only"), scope("operator"), scope("admin")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/v1/metrics", dependencies=[read])
    def metrics() -> dict:
        with fleet.session() as s:
            persisted = {c.name: c.value for c in s.scalars(select(Counter))}
        return {"mqtt": (ingest.stats() if ingest else {}), "persisted": persisted}

    # ---- models --------------------------------------------------------------------------

    @app.get("/api/v1/models", dependencies=[read])
    def list_models() -> list[dict]:
        return registry.list_groups(fleet)

    @app.get("/api/v1/models/{group}/versions", dependencies=[read])
    def list_versions(group: str) -> list[dict]:
        return registry.list_versions(fleet, group)

    @app.get("/api/v1/models/{group}/versions/{version}", dependencies=[read])
    def get_version(group: str, version: str) -> dict:
        return registry.get_version(fleet, group, version)

    @app.post("/api/v1/packages", dependencies=[operator], status_code=201)
    async def upload(request: Request) -> dict:
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

    @app.post("/api/v1/models/{group}/versions/{version}/approval", dependencies=[admin])
    def approve(group: str, version: str, body: ApprovalBody) -> dict:
        return registry.set_approval(fleet, group, version, body.state, body.note)

    @app.get("/api/v1/builds/{build_id}/download")
    def download(build_id: Id, expires: int = Query(..., le=2**62), sig: str = Query(..., max_length=128)):
        if not fleet.check_download(build_id, expires, sig):
            raise PermissionDeniedError("the download link is invalid or expired", "ask the fleet for a new job")
        with fleet.session() as s:
            build = s.get(Build, build_id)
        if build is None:
            raise NotFoundError(f"no build {build_id}", "")
        local = fleet.store.path(build.store_key)
        if local is None:
            return RedirectResponse(fleet.store.presigned_url(build.store_key, int(fleet.config.download_ttl_s)))
        return FileResponse(local, media_type="application/gzip", filename=Path(build.store_key).name)

    # ---- devices -------------------------------------------------------------------------

    @app.get("/api/v1/devices", dependencies=[read])
    def list_devices(group: str | None = None, tag: str | None = None, status: str | None = None) -> list[dict]:
        return devices.list_devices(fleet, group, tag, status)

    @app.get("/api/v1/devices/{device_id}", dependencies=[read])
    def get_device(device_id: str) -> dict:
        return devices.get_device(fleet, device_id)

    @app.patch("/api/v1/devices/{device_id}", dependencies=[operator])
    def patch_device(device_id: str, body: DevicePatch) -> dict:
        return devices.update_device(fleet, device_id, body.group, body.add_tags, body.remove_tags)

    @app.post("/api/v1/enrollment-tokens", dependencies=[admin], status_code=201)
    def enrollment_token(body: EnrollmentTokenBody) -> dict:
        return {"device_id": body.device_id, "token": devices.create_enrollment_token(fleet, body.device_id, body.target, body.group, body.tags)}

    @app.post("/api/v1/enroll")
    def enroll(body: EnrollBody) -> dict:
        return devices.enroll(fleet, body.token, body.device_id, body.csr)

    # ---- rollouts ------------------------------------------------------------------------

    @app.get("/api/v1/rollouts", dependencies=[read])
    def list_rollouts(state: str | None = None) -> list[dict]:
        return rollouts.list_rollouts(fleet, state)

    @app.post("/api/v1/rollouts", dependencies=[operator], status_code=201)
    def create_rollout(body: RolloutBody) -> dict:
        return rollouts.create_rollout(fleet, body.group, body.version, body.selection, body.plan)

    @app.get("/api/v1/rollouts/{rollout_id}", dependencies=[read])
    def get_rollout(rollout_id: Id) -> dict:
        return rollouts.get_rollout(fleet, rollout_id)

    @app.get("/api/v1/rollouts/{rollout_id}/events", dependencies=[read])
    def get_events(rollout_id: Id) -> list[dict]:
        return rollouts.rollout_events(fleet, rollout_id)

    @app.post("/api/v1/rollouts/{rollout_id}/{action}", dependencies=[operator])
    def control(rollout_id: Id, action: str, body: ControlBody | None = None) -> dict:
        return rollouts.control(fleet, rollout_id, action, body.reason if body else "")

    # ---- tokens --------------------------------------------------------------------------

    @app.post("/api/v1/tokens", dependencies=[admin], status_code=201)
    def create_token(body: TokenBody) -> dict:
        return {"name": body.name, "scope": body.scope, "token": auth.create_token(fleet, body.name, body.scope)}

    @app.delete("/api/v1/tokens/{name}", dependencies=[admin])
    def revoke_token(name: str) -> dict:
        n = auth.revoke_token(fleet, name)
        if not n:
            raise NotFoundError(f"no active token named {name!r}", "")
        return {"revoked": n}

    drift_service.add_routes(app, fleet, ingest.drift if ingest else None)  # /api/v1/drift*, /api/v1/telemetry (docs/drift.md)
    mount_dashboard(app)  # /dashboard (docs/dashboard.md)
    return app
