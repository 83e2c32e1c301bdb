"""The fleet REST API, one router per resource (assembled by fleet/api.py `create_app`).

deps.py      FastAPI dependencies: the fleet, a database session, the caller's scope
errors.py    every error as ErrorBody {error, fix, code} with a stable code
service.py   /healthz, /api/v1/metrics
models.py    model groups and versions, approval, package upload and signed downloads
devices.py   devices, enrollment tokens, enrollment
rollouts.py  rollouts, their events and operator control
shadow.py    shadow rollouts: champion vs challenger, promotion
tokens.py    API tokens
alerts.py    alert events, their snapshots, and the cameras' snapshot uploads
drift.py     drift alarms, windows and events, and telemetry over time (docs/drift.md)
"""
