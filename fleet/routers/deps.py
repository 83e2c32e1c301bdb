"""Dependencies every router shares: the Fleet the app was made for, a read session on its
database, and the caller's scope (API tokens, fleet/auth.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi import Path as PathParam
from sqlalchemy.orm import Session

from edgefleet.contracts.rest import MAX_PAGE
from edgefleet.fleet import auth
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.ingest import Ingest

# Ids are bounded so that an absurd number is a 422, not a database overflow.
Id = Annotated[int, PathParam(ge=1, le=2**62)]
# Every list endpoint answers one page (fleet/paging.py): ?limit=1..MAX_PAGE and ?cursor=<next>.
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
DEFAULT_PAGE = 100


def get_fleet(request: Request) -> Fleet:
    return request.app.state.fleet


def get_ingest(request: Request) -> Ingest | None:
    return request.app.state.ingest


def get_session(fleet: Annotated[Fleet, Depends(get_fleet)]) -> Iterator[Session]:
    with fleet.session() as s:
        yield s


FleetDep = Annotated[Fleet, Depends(get_fleet)]
IngestDep = Annotated[Ingest | None, Depends(get_ingest)]
SessionDep = Annotated[Session, Depends(get_session)]


def bearer_token(authorization: str | None) -> str | None:
    return authorization[7:] if authorization and authorization.lower().startswith("bearer ") else None


def scope(needed: str):
    """A dependency that admits a caller whose token's scope covers `needed`, and yields that scope."""

    def check(fleet: FleetDep, authorization: Annotated[str | None, Header()] = None) -> str:
        return auth.authorize(fleet, bearer_token(authorization), needed)

    return Depends(check)


READ, OPERATOR, ADMIN = scope("read-only"), scope("operator"), scope("admin")
