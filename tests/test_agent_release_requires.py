"""An agent release states the agent role's dependency ranges; they must be pyproject's own."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

from edgefleet.agent_release import DEFAULT_PYTHON, DEFAULT_REQUIRES

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]


def _ranges(spec: str) -> tuple[str, str | None, str | None]:
    """('pydantic', '2.6', '3') from 'pydantic>=2.6,<3' (the only operators pyproject uses here)."""
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", spec.split(";")[0].strip())
    assert match, spec
    name, clauses = match.groups()
    bounds = dict(re.findall(r"(>=|<)\s*([0-9][0-9.]*)", clauses))
    return name, bounds.get(">="), bounds.get("<")


def test_release_requirements_are_the_agent_roles_pyproject_ranges() -> None:
    role = [d for d in PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["agent"] if ";" not in d]
    assert sorted(DEFAULT_REQUIRES) == sorted(_ranges(d) for d in role)


def test_release_python_range_is_requires_python() -> None:
    assert PYPROJECT["requires-python"] == f">={DEFAULT_PYTHON.min},<{DEFAULT_PYTHON.below}"
