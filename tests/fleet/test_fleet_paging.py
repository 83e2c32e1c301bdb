"""Every list endpoint pages the same way (fleet/paging.py): ?limit= (1-1000, default 100) and
?cursor=, answering exactly {"items": [...], "next": cursor | null}. The OpenAPI document names
the list endpoints: one that answers anything else, or that this test does not walk, fails it."""

from __future__ import annotations

import json
import uuid

import pytest
from tests_fleet_util import h

from edgefleet.contracts.rest import MAX_PAGE
from edgefleet.fleet import devices, registry, rollouts
from edgefleet.fleet.db import ModelGroup
from edgefleet.fleet.drift_tables import DriftEvent, DriftFleetEvent, DriftWindow
from edgefleet.fleet.ingest import Ingest, Message

CAMS = [f"cam-{i}" for i in range(5)]
# Every list endpoint, as the OpenAPI document names it, with the path walked here.
WALKED = {
    "/api/v1/devices": "/api/v1/devices",
    "/api/v1/models": "/api/v1/models",
    "/api/v1/models/{group}/versions": "/api/v1/models/tiny/versions",
    "/api/v1/rollouts": "/api/v1/rollouts",
    "/api/v1/rollouts/{rollout_id}/events": "/api/v1/rollouts/1/events",
    "/api/v1/rollouts/{rollout_id}/deployments": "/api/v1/rollouts/4/deployments",
    "/api/v1/alerts": "/api/v1/alerts",
    "/api/v1/drift/windows": "/api/v1/drift/windows",
    "/api/v1/drift/events": "/api/v1/drift/events",
    "/api/v1/telemetry": "/api/v1/telemetry",
}

NAME_KEYED = {"/api/v1/devices", "/api/v1/models", "/api/v1/models/{group}/versions"}


def seed(fleet, tiny_packages) -> None:
    """At least three rows behind every list."""
    for p in (tiny_packages["v1"], tiny_packages["v2"]):
        v = registry.upload_package(fleet, p)
        registry.set_approval(fleet, v.group, v.version, "Approved")
    messages = []
    for i, cam in enumerate(CAMS):
        devices.register_device(fleet, cam, "x86_64")
        for n in range(2):
            body = {
                "schema": 1,
                "id": uuid.uuid4().hex,
                "frames": {"ok": 10},
                "model": {"name": "tiny", "version": "1"},
            }
            messages.append(Message(f"edgefleet/v1/{cam}/telemetry", json.dumps(body).encode(), fleet.clock() + n))
        alert = {
            "schema": 1,
            "id": f"alert-{cam}",
            "label": "person",
            "score": 0.9,
            "consecutive": 1,
            "source": "folder",
            "frame": f"f{i}.jpg",
            "model": {"name": "tiny", "version": "1"},
            "latency_ms": 5.0,
        }
        messages.append(Message(f"edgefleet/v1/{cam}/alerts", json.dumps(alert).encode(), fleet.clock() + i))
    Ingest(fleet).handle_batch(messages)
    for cam in CAMS[:3]:
        r = rollouts.create_rollout(fleet, "tiny", "2", {"devices": [cam]}, {"canary": 1})
        rollouts.control(fleet, r.id, "pause", "paging test")
        rollouts.control(fleet, r.id, "resume", "paging test")
    rollouts.create_rollout(fleet, "tiny", "2", {"devices": CAMS[3:]}, {"canary": len(CAMS[3:])})
    rollouts.tick(fleet)  # rollout 4's canary: a deployment on each of its devices
    with fleet.writer() as s, s.begin():
        s.add_all(ModelGroup(name=f"group-{i}") for i in range(3))
        for i, cam in enumerate(CAMS):
            model = {"device_id": cam, "model_name": "tiny", "model_version": "1"}
            s.add(DriftWindow(**model, frames=100, score=0.1 * i, over=False, state="ok", distances={}, summary={}))
            s.add(DriftEvent(**model, at=fleet.clock() + 2 * i, event="raised", score=1.0))
            s.add(
                DriftFleetEvent(
                    model_name="tiny",
                    model_version="1",
                    at=fleet.clock() + 2 * i + 1,
                    event="raised",
                    devices=5,
                    drifting=i,
                )
            )


def walk(api, path: str, limit: int) -> list:
    items, cursor, pages = [], None, 0
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        answer = api.get(path, params=params, headers=h(api, "admin"))
        assert answer.status_code == 200, (path, answer.text)
        page = answer.json()
        assert set(page) == {"items", "next"} and len(page["items"]) <= limit, (path, page)
        items += page["items"]
        cursor, pages = page["next"], pages + 1
        if cursor is None:
            return items
        assert pages < 100, path


@pytest.mark.parametrize("listed", sorted(WALKED))
def test_every_list_endpoint_walks_its_pages_to_the_same_items_as_one_page(api, fleet, tiny_packages, listed):
    seed(fleet, tiny_packages)
    path = WALKED[listed]
    whole = walk(api, path, MAX_PAGE)
    assert len(whole) >= 2, (path, whole)
    for limit in (1, 2):
        assert walk(api, path, limit) == whole, (path, limit)  # same items, same order, none twice
    default = api.get(path, headers=h(api, "admin")).json()
    assert default["items"] == whole[:100]
    assert api.get(path, params={"limit": MAX_PAGE + 1}, headers=h(api, "admin")).status_code == 422
    if listed not in NAME_KEYED:  # any name is a place in a list by name; "nope" is no id
        assert api.get(path, params={"cursor": "nope"}, headers=h(api, "admin")).status_code == 400


def test_the_openapi_document_lists_no_other_list_endpoint(api):
    doc = api.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    lists = set()
    for path, operations in doc["paths"].items():
        answer = operations.get("get", {}).get("responses", {}).get("200", {})
        schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
        if schema.get("type") == "array":
            lists.add(path)  # a bare list: not paged
        ref = schema.get("$ref", "").rsplit("/", 1)[-1]
        if "items" in schemas.get(ref, {}).get("properties", {}):
            assert set(schemas[ref]["properties"]) == {"items", "next"}, (path, ref)
            params = {p["name"] for p in operations["get"].get("parameters", [])}
            assert {"limit", "cursor"} <= params, (path, params)
            lists.add(path)
    assert lists == set(WALKED)
