"""API tokens: shown once when made, revoked by name."""

from __future__ import annotations

from fastapi import APIRouter

from edgefleet.contracts.rest import Revoked, TokenBody, TokenOut
from edgefleet.errors import NotFoundError
from edgefleet.fleet import auth
from edgefleet.fleet.routers.deps import ADMIN, FleetDep

router = APIRouter(prefix="/api/v1/tokens", dependencies=[ADMIN])


@router.post("", status_code=201, response_model=TokenOut)
def create_token(fleet: FleetDep, body: TokenBody) -> TokenOut:
    return TokenOut(name=body.name, scope=body.scope, token=auth.create_token(fleet, body.name, body.scope))


@router.delete("/{name}", response_model=Revoked)
def revoke_token(fleet: FleetDep, name: str) -> Revoked:
    n = auth.revoke_token(fleet, name)
    if not n:
        raise NotFoundError(f"no active token named {name!r}", "")
    return Revoked(revoked=n)
