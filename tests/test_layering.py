"""The import layering, read from the source (AST): the shared package `edgefleet/` imports no
component, and components import each other only through it, apart from the named exceptions
below. The demo (`demo/`) is the one component allowed to orchestrate the others; nothing
imports it. A new cross-import fails here until it moves into the shared package or is listed with
its reason; a listed exception that no longer exists fails too, so the list stays true.

Command dispatch is not an import: edgefleet/cli.py names each component's command group as a
"module:attribute" string and imports it when that command runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("agent", "compiler", "cross", "demo", "fleet", "models")

# Components that may import another component's module (a dotted prefix), with the reason.
COMPONENT_RULES = {
    ("compiler", "edgefleet.agent.runtime"): "the compiler verifies and benchmarks a package on the agent's own "
    "runtime (runtime.py, runtime_worker.py), so a package that passes is one a camera runs",
    ("compiler", "edgefleet.agent.variants"): "the compiler reads this CPU's flags as the agent does to know which "
    "of a package's ISA-level libraries it can verify here, and bench runs the library a camera would pick",
    ("compiler", "edgefleet.agent.preprocess"): "verification and baseline inputs are prepared with the camera's "
    "own preprocessing, so what is verified is what a camera feeds the model",
    # The demo runs the whole system on one machine; the cameras it runs through `edgefleet agent`.
    ("demo", "edgefleet.models"): "the demo generates the synthetic dataset and camera frames and runs the "
    "script-mode training jobs (models.scenes, models.job)",
    ("demo", "edgefleet.compiler"): "the demo compiles the trained models into signed packages (compiler.compile)",
    ("demo", "edgefleet.fleet"): "the demo starts the fleet's broker with its CA, writes the service's config and "
    "creates its admin token (fleet.local_broker, ca, config, core, auth)",
}

# Single cross-imports that exist today: (importing file, imported module prefix) -> reason.
CROSS_EXCEPTIONS = {
    ("compiler/baseline.py", "edgefleet.agent.metrics"): "the drift baseline's features are computed by the "
    "agent's code, so compile-time baselines and a camera's windows cannot disagree",
    ("compiler/baseline.py", "edgefleet.agent.postprocess"): "as agent.metrics: the baseline's prediction "
    "histogram uses the camera's postprocessing",
    ("compiler/compile.py", "edgefleet.agent.detectors"): "a detection package's head and options are checked "
    "with the same plugin the camera decodes with",
    ("compiler/compile.py", "edgefleet.cross.verify"): "`compile --verify` on an ARM target runs the package "
    "under QEMU, which is the cross component's job",
    ("cross/debpkg.py", "edgefleet.agent.config"): "the Debian package checks the agent config it ships with "
    "the agent's own parser",
    ("cross/debpkg.py", "edgefleet.agent.install"): "the Debian package ships the same config file and systemd "
    "unit that `edgefleet agent install` writes",
    ("cross/emulate.py", "edgefleet.agent.runtime_worker"): "emulated runs load packages with the agent's "
    "runtime worker, as a camera does",
    ("cross/emulate.py", "edgefleet.compiler.targets"): "targets name their sysroot and QEMU run mode; the "
    "target table belongs to the compiler (it could move to the shared package)",
    ("cross/verify.py", "edgefleet.compiler.targets"): "as cross/emulate.py",
    ("cross/verify.py", "edgefleet.compiler.verify"): "emulated verification compares against the compiler's "
    "reference outputs and tolerances",
}


def component_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "edgefleet" and len(parts) > 1 and parts[1] in COMPONENTS:
        return parts[1]
    return None


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import statement in the file names (`from a import b` gives a and a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def allowed(importer: str, folder: str, module: str) -> bool:
    return any(module.startswith(prefix) for (f, prefix) in CROSS_EXCEPTIONS if f == importer) or any(
        module.startswith(prefix) for (c, prefix) in COMPONENT_RULES if c == folder
    )


def test_shared_package_imports_no_component():
    bad = []
    for path in python_files("edgefleet"):
        rel = path.relative_to(ROOT).as_posix()
        bad += [f"{rel} imports {m}" for m in sorted(imported_modules(path)) if component_of(m)]
    assert not bad, "the shared package must not import components (move the code into edgefleet/):\n" + "\n".join(bad)


def test_components_import_each_other_only_through_the_shared_package():
    bad = []
    for folder in COMPONENTS:
        for path in python_files(folder):
            rel = path.relative_to(ROOT).as_posix()
            for module in sorted(imported_modules(path)):
                other = component_of(module)
                if other and other != folder and not allowed(rel, folder, module):
                    bad.append(f"{rel} imports {module}")
    assert not bad, "components import each other only through edgefleet/ (or add a reasoned exception):\n" + "\n".join(
        bad
    )


def test_every_listed_exception_still_exists():
    stale = [
        f"{rel} -> {prefix}"
        for (rel, prefix) in CROSS_EXCEPTIONS
        if not any(m.startswith(prefix) for m in imported_modules(ROOT / rel))
    ]
    stale += [
        f"{folder} -> {prefix}"
        for (folder, prefix) in COMPONENT_RULES
        if not any(m.startswith(prefix) for path in python_files(folder) for m in imported_modules(path))
    ]
    assert not stale, "these layering exceptions are gone; delete them from tests/test_layering.py:\n" + "\n".join(
        stale
    )


def test_the_scan_sees_imports_inside_functions(tmp_path):
    # Lazy imports inside functions are how components reach each other; the scan must see them.
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from edgefleet.fleet.drift import Baseline\n    import edgefleet.agent.run\n")
    assert {component_of(m) for m in imported_modules(source)} >= {"fleet", "agent"}
