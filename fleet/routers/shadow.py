"""Shadow rollouts: champion vs challenger (read-only scope) and promotion (operator scope), docs/fleet.md."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.contracts.rest import PromoteBody, RolloutOut, ShadowOut
from edgefleet.fleet import shadow
from edgefleet.fleet.routers.deps import OPERATOR, READ, FleetDep, Id
from edgefleet.fleet.routers.drift import MonitorDep

router = APIRouter(prefix="/api/v1/rollouts")


@router.get("/{rollout_id}/shadow", dependencies=[READ], response_model=ShadowOut)
def get_shadow(fleet: FleetDep, monitor: MonitorDep, rollout_id: Id) -> ShadowOut:
    return shadow.shadow_view(fleet, monitor, rollout_id)


@router.post("/{rollout_id}/promote", dependencies=[OPERATOR], status_code=201, response_model=RolloutOut)
def promote(fleet: FleetDep, monitor: MonitorDep, rollout_id: Id, body: PromoteBody | None = None) -> RolloutOut:
    """Check the promotion gate; 409 naming each failed condition, else 201 with the staged rollout it started."""
    return shadow.promote(fleet, monitor, rollout_id, body.plan if body else None, body.reason if body else "")
