"""The fleet's REST API (FastAPI; OpenAPI at /docs and /openapi.json), version 1 under /api/v1.

Every request but /healthz, /api/v1/enroll (which carries its one-time token) and signed
package downloads needs `Authorization: Bearer <token>` with a scope that covers it. Errors
are JSON `{"error": cause, "fix": fix, "code": code}` (ErrorBody) with a 4xx status; bad input
never yields a 500. Routes live in fleet/routers/, one module per resource; request and
response bodies are the contracts in edgefleet/contracts/rest.py.
"""

from __future__ import annotations

from fastapi import FastAPI

from edgefleet.fleet import metrics
from edgefleet.fleet.body_limit import BodyLimit
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.dashboard import mount_dashboard
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.ingest import Ingest
from edgefleet.fleet.routers import (
    alerts,
    devices,
    drift,
    errors,
    models,
    prometheus,
    rollouts,
    service,
    shadow,
    tokens,
)


def create_app(fleet: Fleet, ingest: Ingest | None = None) -> FastAPI:
    app = FastAPI(
        title="edgefleet fleet",
        version="1",
        description="Model registry, devices and over-the-air rollouts for edge camera fleets.",
        responses=errors.RESPONSES,
    )
    app.state.fleet, app.state.ingest = fleet, ingest  # for the dependencies in fleet/routers/deps.py
    app.state.drift_monitor = ingest.drift if ingest else DriftMonitor(fleet)  # shares the ingest's baselines
    # GET /metrics (fleet/routers/prometheus.py); a bad metrics_token_file fails here, at start.
    app.state.metrics_registry = metrics.registry(fleet)
    app.state.metrics_token = metrics.metrics_token(fleet.config.metrics_token_file)
    app.add_middleware(BodyLimit)  # request size limits per endpoint (fleet/body_limit.py)
    errors.install(app)
    # shadow before rollouts: its POST /rollouts/{id}/promote would otherwise match /rollouts/{id}/{action}
    for router in (service, models, devices, shadow, rollouts, tokens, drift, prometheus, alerts):
        app.include_router(router.router)
    mount_dashboard(app)  # /dashboard (docs/dashboard.md)
    return app
