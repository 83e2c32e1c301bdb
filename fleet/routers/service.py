"""The service itself: liveness, and the ingest and persisted counters."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from edgefleet.contracts.rest import Health, Metrics
from edgefleet.fleet.db import Counter
from edgefleet.fleet.routers.deps import READ, IngestDep, SessionDep

router = APIRouter()


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/api/v1/metrics", dependencies=[READ], response_model=Metrics)
def metrics(ingest: IngestDep, s: SessionDep) -> Metrics:
    persisted = {c.name: c.value for c in s.scalars(select(Counter))}
    return Metrics(mqtt=ingest.stats() if ingest else {}, persisted=persisted)
