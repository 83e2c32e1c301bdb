"""Alert events and their snapshots: listed and read with a token whose scope covers
`alerts.read_scope`; uploaded by the camera that took them, signed with its own certificate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response

from edgefleet.contracts.mqtt import MAX_SNAPSHOT_BYTES
from edgefleet.contracts.rest import AlertEventOut, AlertEventPage, SnapshotStored
from edgefleet.errors import BadInputError, NotFoundError
from edgefleet.fleet import alert_events, auth
from edgefleet.fleet.routers.deps import DEFAULT_PAGE, FleetDep, Id, Limit, bearer_token

router = APIRouter(prefix="/api/v1")
Sha256 = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$")]


def alerts_reader(fleet: FleetDep, authorization: Annotated[str | None, Header()] = None) -> str:
    """Pictures of people: the scope that reads them is the fleet's choice (alerts.read_scope)."""
    return auth.authorize(fleet, bearer_token(authorization), fleet.config.alerts.read_scope)


READER = Depends(alerts_reader)


@router.get("/alerts", dependencies=[READER], response_model=AlertEventPage)
def list_alerts(
    fleet: FleetDep,
    device: str | None = None,
    label: str | None = None,
    since: Annotated[float | None, Query(description="received at or after (epoch seconds)")] = None,
    until: Annotated[float | None, Query(description="received before (epoch seconds)")] = None,
    model_version: str | None = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: str | None = None,
) -> AlertEventPage:
    """Alert events, newest first, one page at a time."""
    return alert_events.list_events(
        fleet,
        device=device,
        label=label,
        since=since,
        until=until,
        model_version=model_version,
        limit=limit,
        cursor=cursor,
    )


@router.get("/alerts/{event_id}", dependencies=[READER], response_model=AlertEventOut)
def get_alert(fleet: FleetDep, event_id: Id) -> AlertEventOut:
    return alert_events.event_out(alert_events.get_event(fleet, event_id))


@router.get(
    "/alerts/{event_id}/snapshot",
    dependencies=[READER],
    response_class=FileResponse,
    responses={
        200: {
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the snapshot",
        },
        307: {"description": "to S3"},
    },
)
def get_snapshot(fleet: FleetDep, event_id: Id) -> Response:
    """The alert's JPEG, once the camera uploaded it."""
    row = alert_events.get_event(fleet, event_id)
    if row.snapshot_key is None:
        why = "names no snapshot" if row.snapshot_sha256 is None else "has no snapshot uploaded yet"
        raise NotFoundError(f"alert event {event_id} {why}", "cameras send snapshots when [snapshots] is enabled")
    local = fleet.store.path(row.snapshot_key)
    if local is None:
        return RedirectResponse(fleet.store.presigned_url(row.snapshot_key, 300))
    return FileResponse(local, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.put("/devices/{device_id}/snapshots/{sha256}", status_code=201, response_model=SnapshotStored)
async def put_snapshot(fleet: FleetDep, request: Request, device_id: str, sha256: Sha256) -> SnapshotStored:
    """A camera's upload of the JPEG its alert names (signed headers: edgefleet/device_auth.py)."""
    headers = {k.title(): v for k, v in request.headers.items()}
    # Who sends it is known from the headers: a stranger's body is never read.
    await run_in_threadpool(alert_events.authenticate_upload, fleet, device_id, sha256, headers)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_SNAPSHOT_BYTES:
            raise BadInputError(
                f"the snapshot is over {MAX_SNAPSHOT_BYTES} bytes", "lower [snapshots] max_bytes on the camera"
            )
    return await run_in_threadpool(alert_events.store_snapshot, fleet, device_id, sha256, bytes(data), headers)
