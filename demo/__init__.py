"""`edgefleet demo`: the whole system on one machine, from a training run to alerts on cameras.

The one component that orchestrates all the others (models, compiler, fleet, agents through
their command): it installs as `edgefleet.demo` from this folder and nothing imports it.

- `run`    the run itself (train, compile, fleet service, broker, cameras, rollouts, drift)
- `ports`  its ports checked up front, naming the process that holds a taken one
- `cli`    the `edgefleet demo` command
"""

from __future__ import annotations

from edgefleet.demo.run import DemoOptions, DemoResult, run_demo

__all__ = ["DemoOptions", "DemoResult", "run_demo"]
