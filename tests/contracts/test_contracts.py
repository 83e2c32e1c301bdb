"""Contracts between components (edgefleet/contracts): a shape never changes under the same
version, and the code that reads messages works on parsed models, not on dicts."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

from edgefleet.contracts.registry import CONTRACTS

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).parent / "schemas"
WRITE_ENV = "EDGEFLEET_WRITE_CONTRACT_SCHEMAS"  # =1 writes the snapshot of a new (version, revision)


def snapshot(name: str, version: int, revision: int) -> Path:
    return SCHEMAS / f"{name}.v{version}.r{revision}.json"


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_a_contract_changes_shape_only_with_its_version(name):
    model, version = CONTRACTS[name]
    path = snapshot(name, version, model.REVISION)
    schema = model.model_json_schema()
    if not path.exists() and os.environ.get(WRITE_ENV) == "1":
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    assert path.exists(), (
        f"{name} v{version} r{model.REVISION} has no stored schema: a new revision? run with {WRITE_ENV}=1"
    )
    assert json.loads(path.read_text()) == schema, (
        f"{name}'s JSON schema changed but its version ({version}) and REVISION ({model.REVISION}) did not: "
        "bump REVISION for an optional addition readers may ignore, the version for anything else"
    )


# The code that reads payloads, jobs and journals, and the containers it may index by a
# string: tallies of its own counters, and pydantic's error dicts.
READERS = ["fleet/ingest.py", "fleet/rollouts.py", "agent/update.py", "agent/self_update.py", "agent/payloads.py"]
NOT_PAYLOADS = {"counters", "outcomes", "counts", "first"}


def dict_reads(source: str) -> list[str]:
    """`x["key"]` reads and `x.get("key")` calls, outside the allowed containers."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            target, key = node.value, node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
        ):
            target, key = node.func.value, node.args[0]
        else:
            continue
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and name not in NOT_PAYLOADS:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", READERS)
def test_readers_use_parsed_models_not_dicts(path):
    assert dict_reads((ROOT / path).read_text()) == []


def test_the_scan_finds_the_reads_it_forbids():
    old = 'state = payload.get("state")\nname = job["package"]["name"]\nn = counters["received"]\njob["state"] = "idle"'
    assert dict_reads(old) == [
        "line 1: payload.get('state')",
        "line 2: job['package']['name']",
        "line 2: job['package']",
    ]
