"""Drift and telemetry (scope read-only): GET /api/v1/drift, /drift/windows, /drift/events and
/telemetry (docs/drift.md); the queries are in fleet/drift_routes.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from edgefleet.contracts.rest import DriftEventPage, DriftOverview, DriftWindowPage, TelemetryPage
from edgefleet.fleet.drift_routes import drift_events, drift_overview, drift_windows, telemetry_series
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.routers.deps import DEFAULT_PAGE, READ, FleetDep, Limit


def get_monitor(request: Request) -> DriftMonitor:
    """The ingest's monitor (whose baseline cache the API shares), or one of the API's own (fleet/api.py)."""
    return request.app.state.drift_monitor


MonitorDep = Annotated[DriftMonitor, Depends(get_monitor)]
router = APIRouter(prefix="/api/v1", dependencies=[READ])


@router.get("/drift", response_model=DriftOverview)
def get_drift(
    fleet: FleetDep, monitor: MonitorDep, device: str | None = None, state: str | None = None
) -> DriftOverview:
    return drift_overview(fleet, monitor, device, state)


@router.get("/drift/windows", response_model=DriftWindowPage)
def get_windows(
    fleet: FleetDep,
    device: str | None = None,
    since: float | None = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: str | None = None,
) -> DriftWindowPage:
    return drift_windows(fleet, device, since, limit, cursor)


@router.get("/drift/events", response_model=DriftEventPage)
def get_events(fleet: FleetDep, limit: Limit = DEFAULT_PAGE, cursor: str | None = None) -> DriftEventPage:
    return drift_events(fleet, limit, cursor)


@router.get("/telemetry", response_model=TelemetryPage)
def get_telemetry(
    fleet: FleetDep,
    device: str | None = None,
    since: float | None = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: str | None = None,
) -> TelemetryPage:
    return telemetry_series(fleet, device, since, limit, cursor)
