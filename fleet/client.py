"""A small typed client of the fleet REST API (what the CLI uses).

The API URL and token come from --url/--token, else EDGEFLEET_FLEET_URL and
EDGEFLEET_FLEET_TOKEN, else the file named by EDGEFLEET_FLEET_TOKEN_FILE.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from edgefleet.errors import BadInputError, ConflictError, EdgefleetError, InvalidTransitionError, NotFoundError, PermissionDeniedError, ServiceError

ERRORS = {401: PermissionDeniedError, 403: PermissionDeniedError, 404: NotFoundError, 409: ConflictError, 422: BadInputError, 400: BadInputError}


class FleetClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("EDGEFLEET_FLEET_URL") or "http://127.0.0.1:8080").rstrip("/")
        if token is None:
            token = os.environ.get("EDGEFLEET_FLEET_TOKEN")
        if token is None and os.environ.get("EDGEFLEET_FLEET_TOKEN_FILE"):
            token = Path(os.environ["EDGEFLEET_FLEET_TOKEN_FILE"]).read_text().strip()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs) -> Any:
        try:
            resp = self.http.request(method, "/api/v1" + path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(f"cannot reach the fleet API at {self.url}: {exc}", "start it with `edgefleet fleet serve`, or pass --url") from None
        if resp.status_code >= 400:
            try:
                body = resp.json()
                cause, fix = body.get("error", resp.text), body.get("fix", "")
            except ValueError:
                cause, fix = resp.text[:300], ""
            cls = ERRORS.get(resp.status_code, ServiceError if resp.status_code >= 500 else EdgefleetError)
            if resp.status_code == 409 and "is " in cause and "not allowed" in cause:
                cls = InvalidTransitionError
            raise cls(f"fleet API {resp.status_code}: {cause}", fix)
        return resp.json()

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    def upload(self, package: Path) -> dict:
        with open(package, "rb") as fh:
            return self.request("POST", "/packages", content=fh, headers={"Content-Type": "application/gzip"})
