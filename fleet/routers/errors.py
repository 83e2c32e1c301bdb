"""Errors as ErrorBody (edgefleet/contracts/rest.py): {"error": cause, "fix": fix, "code": code}.

`code` is what clients match (fleet/client.py); the words of `error` may change. Bad input is
always a 4xx, never a 500.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from edgefleet.contracts.rest import ErrorBody, ErrorCode
from edgefleet.errors import (
    ConflictError,
    EdgefleetError,
    InvalidTransitionError,
    NotFoundError,
    PermissionDeniedError,
    ServiceError,
)

# Most specific first: InvalidTransitionError is no ConflictError, but order keeps the table honest.
STATUS: list[tuple[type[EdgefleetError], int, ErrorCode]] = [
    (NotFoundError, 404, "not_found"),
    (InvalidTransitionError, 409, "invalid_transition"),
    (ConflictError, 409, "conflict"),
    (PermissionDeniedError, 403, "permission_denied"),
    (ServiceError, 503, "service_unavailable"),
]
# Request fields whose problems are rollout-plan errors (400), as when the plan was a free dict.
PLAN_FIELDS = ("plan", "selection")


def error_response(status: int, code: ErrorCode, cause: str, fix: str = "") -> JSONResponse:
    return JSONResponse(ErrorBody(error=cause, fix=fix, code=code).model_dump(), status_code=status)


def edgefleet_error(request: Request, exc: EdgefleetError) -> JSONResponse:
    status, code = next(((s, c) for cls, s, c in STATUS if isinstance(exc, cls)), (400, "bad_input"))
    if isinstance(exc, PermissionDeniedError) and "no API token" in exc.cause:
        status, code = 401, "unauthorized"
    return error_response(status, code, exc.cause, exc.fix)


def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]  # FastAPI's own error list (not a pydantic ValidationError, so not strict.first_error)
    loc = [str(p) for p in first.get("loc", ())]
    if loc[:1] == ["body"] and len(loc) >= 2 and loc[1] in PLAN_FIELDS:
        return error_response(
            400,
            "bad_input",
            f"rollout {'.'.join(loc[1:])}: {first.get('msg')}",
            "see the rollout plan in docs/fleet.md",
        )
    return error_response(
        422, "validation_error", f"{'.'.join(loc)}: {first.get('msg')}", "see /docs for the request schema"
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(EdgefleetError, edgefleet_error)
    app.add_exception_handler(RequestValidationError, validation_error)


# What every route may answer besides its success, for the OpenAPI document.
RESPONSES: dict[int | str, dict] = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 422, 503)}
