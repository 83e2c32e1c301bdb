"""The distribution's layout: every component folder installs, and the agent stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = {
    "edgefleet": "edgefleet",
    "compiler": "edgefleet.compiler",
    "agent": "edgefleet.agent",
    "fleet": "edgefleet.fleet",
    "models": "edgefleet.models",
    "cross": "edgefleet.cross",
    "demo": "edgefleet.demo",
}


def test_every_python_folder_is_listed_as_a_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for folder, package in COMPONENTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_agent_imports_nothing_from_compiler_or_fleet():
    # A camera installs only the `agent` extra: importing the agent must not pull in onnx,
    # onnxruntime, the compiler or the fleet service.
    code = (
        "import sys, importlib, pkgutil, edgefleet.agent as a\n"
        "for m in pkgutil.walk_packages(a.__path__, 'edgefleet.agent.'):\n"
        "    importlib.import_module(m.name)\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'edgefleet.compiler', 'edgefleet.fleet', 'fastapi', 'sqlalchemy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_cli_lists_every_component_group():
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("compile", "targets", "inspect", "run", "keys"):
        assert f"  {command}" in out
