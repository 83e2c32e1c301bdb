"""A small typed client of the fleet REST API (what the CLI uses).

The API URL and token come from --url/--token, else EDGEFLEET_FLEET_URL and
EDGEFLEET_FLEET_TOKEN, else the file named by EDGEFLEET_FLEET_TOKEN_FILE. Answers are parsed
into the API's response models (edgefleet/contracts/rest.py); errors are told apart by their
`code` (ErrorBody), by status from a fleet that sends none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from edgefleet.contracts.rest import MAX_PAGE, ErrorBody, ModelVersionOut, Page
from edgefleet.errors import (
    BadInputError,
    ConflictError,
    EdgefleetError,
    InvalidTransitionError,
    NotFoundError,
    PermissionDeniedError,
    ServiceError,
)

T = TypeVar("T")
P = TypeVar("P", bound=Page)
BY_CODE: dict[str, type[EdgefleetError]] = {
    "bad_input": BadInputError,
    "validation_error": BadInputError,
    "payload_too_large": BadInputError,
    "unauthorized": PermissionDeniedError,
    "permission_denied": PermissionDeniedError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "invalid_transition": InvalidTransitionError,
    "service_unavailable": ServiceError,
}
BY_STATUS: dict[int, type[EdgefleetError]] = {
    401: PermissionDeniedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: BadInputError,
    422: BadInputError,
    400: BadInputError,
}


class FleetClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("EDGEFLEET_FLEET_URL") or "http://127.0.0.1:8080").rstrip("/")
        if token is None:
            token = os.environ.get("EDGEFLEET_FLEET_TOKEN")
        if token is None and os.environ.get("EDGEFLEET_FLEET_TOKEN_FILE"):
            token = Path(os.environ["EDGEFLEET_FLEET_TOKEN_FILE"]).read_text().strip()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, answer: type[T] | Any, **kwargs: Any) -> T:
        """`answer` is the response model (or a type such as list[Model]) the API documents for `path`."""
        try:
            resp = self.http.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"cannot reach the fleet API at {self.url}: {exc}",
                "start it with `edgefleet fleet serve`, or pass --url",
            ) from None
        if resp.status_code >= 400:
            raise error_from(resp)
        try:
            return TypeAdapter(answer).validate_json(resp.content)
        except ValidationError as exc:
            raise ServiceError(
                f"the fleet API at {self.url} answered {path} with an unexpected body: {str(exc)[:300]}",
                "use a fleet service of the same API version as this client",
            ) from None

    def get(self, path: str, answer: type[T] | Any, **params: Any) -> T:
        return self.request("GET", path, answer, params={k: v for k, v in params.items() if v is not None})

    def pages(self, path: str, page: type[P], page_size: int = MAX_PAGE, **params: Any) -> list[Any]:
        """Every item of a paged list, following `next`."""
        items: list[Any] = []
        cursor = None
        while True:
            answer = self.get(path, page, limit=page_size, cursor=cursor, **params)
            items += answer.items
            if answer.next is None:
                return items
            cursor = answer.next

    def post(self, path: str, answer: type[T] | Any, body: dict[str, Any] | None = None) -> T:
        return self.request("POST", path, answer, json=body or {})

    def upload(self, package: Path) -> ModelVersionOut:
        with open(package, "rb") as fh:
            return self.request(
                "POST", "/packages", ModelVersionOut, content=fh, headers={"Content-Type": "application/gzip"}
            )


def error_from(resp: httpx.Response) -> EdgefleetError:
    """The EdgefleetError an error answer stands for: by its code, else by its status."""
    try:
        body: ErrorBody | None = ErrorBody.model_validate_json(resp.content)
    except ValidationError:
        body = None
    if body is not None:
        cls = BY_CODE[body.code]
        cause, fix = body.error, body.fix
    else:
        cls = BY_STATUS.get(resp.status_code, ServiceError if resp.status_code >= 500 else EdgefleetError)
        cause, fix = resp.text[:300], ""
    return cls(f"fleet API {resp.status_code}: {cause}", fix)
