"""Keyset paging for the list endpoints: a page is up to `limit` rows after the cursor, in key
order; its `next` is the key of its last row (None on the last page). Unlike an offset, a cursor
stays right while rows are added, and a page costs the same at the start and the end of a
100,000-row table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import InstrumentedAttribute, Session

from edgefleet.contracts.rest import MAX_PAGE
from edgefleet.errors import BadInputError

__all__ = ["MAX_PAGE", "keyset"]


def _after(cursor: str | None, key: InstrumentedAttribute) -> Any:
    if cursor is None:
        return None
    if key.type.python_type is int:
        if not cursor.isdigit():
            raise BadInputError(
                f"cursor {cursor[:40]!r} is not one this list gave", "pass the `next` of the previous page"
            )
        return int(cursor)
    return cursor


def keyset(
    s: Session,
    query: Select,
    key: InstrumentedAttribute,
    limit: int,
    cursor: str | None,
    keep: Callable[[Any], bool] = lambda row: True,
    newest_first: bool = False,
) -> tuple[list[Any], str | None]:
    """(rows, next cursor): up to `limit` rows of `query` after `cursor` that `keep` accepts, in
    `key` order (descending with `newest_first`: histories, whose key is an insertion id).

    A filter SQL cannot say (tags in a JSON list) is `keep`: rows are read on until the page is full.
    """
    after = _after(cursor, key)
    rows: list[Any] = []
    while True:
        q = query.order_by(key.desc() if newest_first else key).limit(limit + 1)
        scanned = s.scalars(q if after is None else q.where(key < after if newest_first else key > after)).all()
        for i, row in enumerate(scanned[:limit]):
            after = getattr(row, key.key)
            if keep(row):
                rows.append(row)
                if len(rows) == limit:  # a next page where rows follow (with `keep`, it may hold none)
                    return rows, str(after) if i + 1 < len(scanned) else None
        if len(scanned) <= limit:
            return rows, None
