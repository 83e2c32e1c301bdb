"""The drift webhook: each raised or cleared alarm POSTed as JSON (the JSON of its contract,
DriftAlarmMessage or FleetDriftAlarmMessage in edgefleet/contracts/mqtt.py) to a URL the operator names
(EDGEFLEET_FLEET_DRIFT_WEBHOOK, else the file drift.webhook_url_file; a URL can hold a secret).
The alert events' webhook (fleet/alert_service.py) posts through the same sender."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import httpx

from edgefleet.errors import BadInputError
from edgefleet.fleet.drift import DriftConfig

log = logging.getLogger("edgefleet.fleet.drift")
WEBHOOK_ENV = "EDGEFLEET_FLEET_DRIFT_WEBHOOK"


def url_from(env: str, url_file: Path | None, key: str) -> str | None:
    """A webhook URL from the environment variable `env`, else the file the config key `key` names."""
    url = os.environ.get(env)
    if url is None and url_file:
        try:
            url = Path(url_file).read_text().strip()
        except OSError as exc:
            raise BadInputError(
                f"cannot read {key} {url_file}: {exc.strerror}", "check the path in the fleet config"
            ) from None
    return url or None


def webhook_url(config: DriftConfig) -> str | None:
    return url_from(WEBHOOK_ENV, config.webhook_url_file, "drift.webhook_url_file")


def post_alarm(url: str, data: bytes, timeout_s: float, counters: Counter[str], name: str = "drift_webhook") -> None:
    """One alarm (or alert event) to a webhook; a failure is counted as `<name>_failed` and logged
    (what was posted is stored, and on MQTT)."""
    try:
        resp = httpx.post(url, content=data, headers={"Content-Type": "application/json"}, timeout=timeout_s)
        resp.raise_for_status()
        counters[f"{name}_sent"] += 1
    except httpx.HTTPError as exc:
        counters[f"{name}_failed"] += 1
        log.warning("%s failed: %s", name.replace("_", " "), exc)
