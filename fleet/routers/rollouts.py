"""Rollouts: create, list, inspect, their audit trail, and operator control (pause, resume, abort)."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.contracts.rest import (
    ControlBody,
    DeploymentPage,
    RolloutBody,
    RolloutDetail,
    RolloutEventPage,
    RolloutOut,
    RolloutPage,
)
from edgefleet.fleet import rollouts
from edgefleet.fleet.routers.deps import DEFAULT_PAGE, OPERATOR, READ, FleetDep, Id, Limit

router = APIRouter(prefix="/api/v1/rollouts")


@router.get("", dependencies=[READ], response_model=RolloutPage)
def list_rollouts(
    fleet: FleetDep, state: str | None = None, limit: Limit = DEFAULT_PAGE, cursor: str | None = None
) -> RolloutPage:
    return rollouts.list_rollouts(fleet, state, limit, cursor)


@router.post("", dependencies=[OPERATOR], status_code=201, response_model=RolloutOut)
def create_rollout(fleet: FleetDep, body: RolloutBody) -> RolloutOut:
    return rollouts.create_rollout(fleet, body.group, body.version, body.selection, body.plan)


@router.get("/{rollout_id}", dependencies=[READ], response_model=RolloutDetail)
def get_rollout(fleet: FleetDep, rollout_id: Id) -> RolloutDetail:
    return rollouts.get_rollout(fleet, rollout_id)


@router.get("/{rollout_id}/events", dependencies=[READ], response_model=RolloutEventPage)
def get_events(
    fleet: FleetDep, rollout_id: Id, limit: Limit = DEFAULT_PAGE, cursor: str | None = None
) -> RolloutEventPage:
    return rollouts.rollout_events(fleet, rollout_id, limit, cursor)


@router.get("/{rollout_id}/deployments", dependencies=[READ], response_model=DeploymentPage)
def get_deployments(
    fleet: FleetDep,
    rollout_id: Id,
    state: str | None = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: str | None = None,
) -> DeploymentPage:
    return rollouts.rollout_deployments(fleet, rollout_id, state, limit, cursor)


@router.post("/{rollout_id}/{action}", dependencies=[OPERATOR], response_model=RolloutOut)
def control(fleet: FleetDep, rollout_id: Id, action: str, body: ControlBody | None = None) -> RolloutOut:
    """pause | resume | abort (another action is a 400 naming these)."""
    return rollouts.control(fleet, rollout_id, action, body.reason if body else "")
