"""Reading a paged list of the fleet API over HTTP, as its clients do (docs/fleet.md, "Lists are
paged, all the same way")."""

from __future__ import annotations

import httpx


def all_items(http: httpx.Client, path: str, **params: object) -> list[dict]:
    """Every item of a paged list, following `next`, 1,000 a page."""
    items: list[dict] = []
    cursor = None
    while True:
        answer = http.get(path, params={**params, "limit": 1000, **({"cursor": cursor} if cursor else {})})
        answer.raise_for_status()
        items += answer.json()["items"]
        if (cursor := answer.json()["next"]) is None:
            return items
