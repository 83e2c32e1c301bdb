"""Which pyproject extra provides each optional module, so a command run in an install without
its role's extra says what to install instead of ending in a ModuleNotFoundError traceback.

Each role installs one extra: `agent` (a camera), `cli` (the fleet client), `fleet` (the
service), `compiler`. tests/test_extras.py checks every third-party module the components
import is in the core dependencies or in this table.
"""

from __future__ import annotations

from edgefleet.errors import MissingToolError

# Top-level module -> the extras that install it (the first is suggested, the others mentioned).
MODULE_EXTRAS: dict[str, tuple[str, ...]] = {
    "PIL": ("agent",),
    "paho": ("agent", "fleet"),
    "psutil": ("agent",),
    "prometheus_client": ("agent", "fleet"),
    "awsiot": ("awsiot",),
    "awscrt": ("awsiot",),
    "ai_edge_litert": ("litert", "compiler"),
    "tflite_runtime": ("litert",),
    "rich": ("cli",),
    "httpx": ("cli",),
    "fastapi": ("fleet",),
    "starlette": ("fleet",),
    "sqlalchemy": ("fleet",),
    "alembic": ("fleet",),
    "uvicorn": ("fleet",),
    "psycopg": ("fleet",),
    "scipy": ("fleet",),
    "boto3": ("compiler", "fleet"),
    "botocore": ("compiler", "fleet"),
    "tvm": ("compiler",),
    "tvm_ffi": ("compiler",),
    "onnx": ("compiler",),
    "onnxruntime": ("compiler",),
    "tflite": ("compiler",),
    "google": ("compiler",),  # protobuf, through onnx
    "ml_dtypes": ("compiler",),
    "cloudpickle": ("compiler",),
    "tornado": ("compiler",),
    "xgboost": ("compiler",),
    "docker": ("cross",),
    "packaging": ("cross",),
    "torch": ("train",),
}


# The extra each role's commands need (the others are suggested by module: `edgefleet fleet`
# serves with the `fleet` extra, but its client commands need only `cli`).
COMMAND_EXTRAS = {
    "agent": "agent",
    "run": "agent",
    "compile": "compiler",
    "targets": "compiler",
    "bench": "compiler",
    "demo": "demo",
}
# Extras that install others (pyproject.toml: compiler = edgefleet[agent,cli,...]).
EXTRA_INCLUDES = {
    "compiler": ("agent", "cli"),
    "fleet": ("cli",),
    "demo": ("agent", "cli", "compiler", "fleet", "train"),
}


def missing_extra_error(exc: ModuleNotFoundError, command: str | None = None) -> MissingToolError | None:
    """The install hint for a module an extra provides; None for anything else (a real bug).

    The command's own extra is suggested when it provides the module (`compile` without psutil
    needs `compiler`, not just `agent`), else the module's.
    """
    top = (exc.name or "").partition(".")[0]
    extras = MODULE_EXTRAS.get(top)
    if extras is None:
        return None
    role = COMMAND_EXTRAS.get(command or "")
    if role is not None and set(extras) & {role, *EXTRA_INCLUDES.get(role, ())}:
        extras = (role,)
    also = "".join(f" (or 'edgefleet[{e}]')" for e in extras[1:])
    return MissingToolError(
        f"this command needs the Python module {top!r}, which the `{extras[0]}` extra installs",
        f"pip install 'edgefleet[{extras[0]}]'{also}",
    )
