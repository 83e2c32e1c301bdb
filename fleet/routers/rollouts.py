"""Rollouts: create, list, inspect, their audit trail, and operator control (pause, resume, abort)."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.contracts.rest import ControlBody, RolloutBody, RolloutDetail, RolloutEventOut, RolloutOut
from edgefleet.fleet import rollouts
from edgefleet.fleet.routers.deps import OPERATOR, READ, FleetDep, Id

router = APIRouter(prefix="/api/v1/rollouts")


@router.get("", dependencies=[READ], response_model=list[RolloutOut])
def list_rollouts(fleet: FleetDep, state: str | None = None) -> list[RolloutOut]:
    return rollouts.list_rollouts(fleet, state)


@router.post("", dependencies=[OPERATOR], status_code=201, response_model=RolloutOut)
def create_rollout(fleet: FleetDep, body: RolloutBody) -> RolloutOut:
    return rollouts.create_rollout(fleet, body.group, body.version, body.selection, body.plan)


@router.get("/{rollout_id}", dependencies=[READ], response_model=RolloutDetail)
def get_rollout(fleet: FleetDep, rollout_id: Id) -> RolloutDetail:
    return rollouts.get_rollout(fleet, rollout_id)


@router.get("/{rollout_id}/events", dependencies=[READ], response_model=list[RolloutEventOut])
def get_events(fleet: FleetDep, rollout_id: Id) -> list[RolloutEventOut]:
    return rollouts.rollout_events(fleet, rollout_id)


@router.post("/{rollout_id}/{action}", dependencies=[OPERATOR], response_model=RolloutOut)
def control(fleet: FleetDep, rollout_id: Id, action: str, body: ControlBody | None = None) -> RolloutOut:
    """pause | resume | abort (another action is a 400 naming these)."""
    return rollouts.control(fleet, rollout_id, action, body.reason if body else "")
