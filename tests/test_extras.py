"""The install-per-role table (edgefleet/extras.py) stays true to pyproject.toml and the code, and
a command whose extra is missing prints the pip command instead of a traceback."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.extras import COMMAND_EXTRAS, EXTRA_INCLUDES, MODULE_EXTRAS, missing_extra_error

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
# The core dependencies' import names (pyproject's `dependencies`).
CORE_MODULES = {"pydantic", "pydantic_core", "cryptography", "click", "numpy", "tomli"}
# Scanned for imports: the shared package and every component that installs.
PACKAGES = ("edgefleet", "agent", "compiler", "cross", "demo", "fleet", "models")


def third_party_imports() -> dict[str, str]:
    """Top-level non-stdlib module -> one file that imports it."""
    found: dict[str, str] = {}
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.partition(".")[0]
                    # A script's sibling module (models/train_detector.py imports train, SageMaker script mode).
                    sibling = (path.parent / f"{top}.py").is_file()
                    if top not in sys.stdlib_module_names and top not in ("edgefleet", "__future__") and not sibling:
                        found.setdefault(top, path.relative_to(ROOT).as_posix())
    return found


def test_every_optional_import_has_an_extra():
    unmapped = {m: f for m, f in third_party_imports().items() if m not in CORE_MODULES and m not in MODULE_EXTRAS}
    assert not unmapped, f"add these modules to MODULE_EXTRAS in edgefleet/extras.py: {unmapped}"


def test_the_table_names_real_extras_and_their_nesting():
    named = {e for extras in MODULE_EXTRAS.values() for e in extras} | set(COMMAND_EXTRAS.values())
    assert named <= set(EXTRAS), named - set(EXTRAS)
    for extra, included in EXTRA_INCLUDES.items():
        nested = {e for req in EXTRAS[extra] if req.startswith("edgefleet[") for e in req[10:-1].split(",")}
        assert nested == set(included), (extra, nested)


def test_roles_stay_apart():
    # The fleet service runs no packages: neither the agent's nor the compiler's dependencies.
    fleet = " ".join(EXTRAS["fleet"])
    assert "agent" not in fleet and "tvm" not in fleet and "pillow" not in fleet
    # The fleet client is the cli extra: no server dependencies.
    assert not any(d.split(">")[0] in ("fastapi", "sqlalchemy", "uvicorn") for d in EXTRAS["cli"])
    assert not any("multipart" in d for deps in EXTRAS.values() for d in deps)  # nothing reads form data


@pytest.mark.parametrize(
    ("module", "command", "extra"),
    [
        ("sqlalchemy", "fleet", "fleet"),
        ("httpx", "fleet", "cli"),
        ("psutil", "compile", "compiler"),
        ("PIL", "agent", "agent"),
        ("tvm.relax", "compile", "compiler"),
        ("torch", "models", "train"),
        # The demo plays every role: whatever is missing, its one extra installs it.
        ("rich", "demo", "demo"),
        ("fastapi", "demo", "demo"),
        ("torch", "demo", "demo"),
    ],
)
def test_hint_names_the_extra(module, command, extra):
    error = missing_extra_error(ModuleNotFoundError(f"No module named {module!r}", name=module), command)
    assert error is not None and error.fix.startswith(f"pip install 'edgefleet[{extra}]'")


def test_an_unknown_missing_module_is_not_dressed_up():
    assert missing_extra_error(ModuleNotFoundError("No module named 'nosuch'", name="nosuch"), "fleet") is None


def test_cli_prints_the_hint_not_a_traceback(tmp_path):
    # sys.modules[name] = None makes importing it raise ModuleNotFoundError, as in an install without it.
    code = "import sys; sys.modules['sqlalchemy'] = None; from edgefleet.cli import main; main(['fleet', 'serve'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 14, proc.stderr
    assert "pip install 'edgefleet[fleet]'" in proc.stderr and "Traceback" not in proc.stderr
