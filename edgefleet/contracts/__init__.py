"""Every contract between edgefleet components, one versioned pydantic model each.

    mqtt.py     camera <-> fleet MQTT payloads (status, telemetry, alerts, job updates), drift alarms
    jobs.py     job documents the fleet sends a camera (model and agent install/rollback)
    journal.py  the camera's update journals and their history lines
    drift.py    drift summaries and the package baseline (compiler -> fleet)
    rest.py     fleet REST API request and response bodies

Versions and revisions: edgefleet/contracts/base.py. CONTRACTS (registry.py) lists the top-level
ones with their major version; tests/contracts holds each one's JSON schema per (version, revision).
This package imports none of them itself: a camera's agent imports the few it uses and not, for
instance, the fleet's REST bodies (0.8 MB of its memory).
"""
