"""edgefleet: compile models for edge cameras, deploy them to fleets, watch them drift.

This package holds the contracts every component shares (the model package format,
signing, errors, the CLI root). The components live in their own top-level folders and
install as `edgefleet.compiler`, `edgefleet.agent`, `edgefleet.fleet`, `edgefleet.models`
and `edgefleet.cross`.
"""

__version__ = "0.2.0"
