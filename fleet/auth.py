"""API tokens with scopes. Only the sha256 of a token is stored; the token is shown once.

Scopes are ordered: read-only < operator < admin. read-only lists and reads; operator also
uploads packages and runs rollouts; admin also approves model versions, enrolls devices and
manages tokens.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select

from edgefleet.errors import PermissionDeniedError, UsageError
from edgefleet.fleet.core import Fleet, sha256_text
from edgefleet.fleet.db import ApiToken

SCOPES = ("read-only", "operator", "admin")
RANK = {scope: i for i, scope in enumerate(SCOPES)}


def create_token(fleet: Fleet, name: str, scope: str) -> str:
    if scope not in RANK:
        raise UsageError(f"unknown scope {scope!r}", f"use one of {', '.join(SCOPES)}")
    token = "eft_" + secrets.token_urlsafe(32)
    with fleet.writer() as s, s.begin():
        s.add(ApiToken(name=name, scope=scope, token_sha256=sha256_text(token)))
    return token


def revoke_token(fleet: Fleet, name: str) -> int:
    with fleet.writer() as s, s.begin():
        rows = s.scalars(select(ApiToken).where(ApiToken.name == name, ApiToken.revoked.is_(False))).all()
        for row in rows:
            row.revoked = True
        return len(rows)


def authorize(fleet: Fleet, token: str | None, needed: str) -> str:
    """Return the token's scope if it covers `needed`, else raise PermissionDeniedError."""
    if not token:
        raise PermissionDeniedError(
            "no API token given",
            "send `Authorization: Bearer <token>` (create one with `edgefleet fleet tokens create`)",
        )
    with fleet.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.token_sha256 == sha256_text(token)))
    if row is None or row.revoked:
        raise PermissionDeniedError(
            "unknown or revoked API token", "create a new token with `edgefleet fleet tokens create`"
        )
    if RANK[row.scope] < RANK[needed]:
        raise PermissionDeniedError(
            f"token {row.name!r} has scope {row.scope}; this needs {needed}",
            f"use a token with scope {needed} or higher",
        )
    return row.scope
