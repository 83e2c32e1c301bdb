"""GET /metrics: Prometheus' text format (fleet/metrics.py says what is in it).

Open on the listen address unless the config's `metrics_token_file` is set; then it needs
`Authorization: Bearer <that token>`. API tokens are not accepted: a scraper's credential
should open nothing else.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgefleet.errors import PermissionDeniedError
from edgefleet.fleet.routers.deps import bearer_token

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def prometheus(request: Request, authorization: Annotated[str | None, Header()] = None) -> Response:
    expected: str | None = request.app.state.metrics_token
    if expected is not None:
        given = bearer_token(authorization) or ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise PermissionDeniedError(
                "no API token given" if not given else "wrong metrics token",  # "no API token" -> 401 (errors.py)
                "send `Authorization: Bearer <token>` with the token in the fleet's metrics_token_file",
            )
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
