"""Drift and telemetry (scope read-only): GET /api/v1/drift, /drift/windows, /drift/events and
/telemetry (docs/drift.md); the queries are in fleet/drift_routes.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from edgefleet.contracts.rest import DriftEventOut, DriftOverview, DriftWindowOut, TelemetryPoint
from edgefleet.fleet.drift_routes import drift_events, drift_overview, drift_windows, telemetry_series
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.routers.deps import READ, FleetDep


def get_monitor(request: Request) -> DriftMonitor:
    """The ingest's monitor (whose baseline cache the API shares), or one of the API's own (fleet/api.py)."""
    return request.app.state.drift_monitor


MonitorDep = Annotated[DriftMonitor, Depends(get_monitor)]
Limit = Annotated[int, Query(ge=1, le=5000)]
router = APIRouter(prefix="/api/v1", dependencies=[READ])


@router.get("/drift", response_model=DriftOverview)
def get_drift(
    fleet: FleetDep, monitor: MonitorDep, device: str | None = None, state: str | None = None
) -> DriftOverview:
    return drift_overview(fleet, monitor, device, state)


@router.get("/drift/windows", response_model=list[DriftWindowOut])
def get_windows(
    fleet: FleetDep, device: str | None = None, since: float | None = None, limit: Limit = 500
) -> list[DriftWindowOut]:
    return drift_windows(fleet, device, since, limit)


@router.get("/drift/events", response_model=list[DriftEventOut])
def get_events(fleet: FleetDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DriftEventOut]:
    return drift_events(fleet, limit)


@router.get("/telemetry", response_model=list[TelemetryPoint])
def get_telemetry(
    fleet: FleetDep, device: str | None = None, since: float | None = None, limit: Limit = 500
) -> list[TelemetryPoint]:
    return telemetry_series(fleet, device, since, limit)
