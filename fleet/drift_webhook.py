"""The drift webhook: each raised or cleared alarm POSTed as JSON (the JSON of its contract,
DriftAlarmMessage or FleetDriftAlarmMessage in edgefleet/contracts/mqtt.py) to a URL the operator names
(EDGEFLEET_FLEET_DRIFT_WEBHOOK, else the file drift.webhook_url_file; a URL can hold a secret)."""

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


def webhook_url(config: DriftConfig) -> str | None:
    url = os.environ.get(WEBHOOK_ENV)
    if url is None and config.webhook_url_file:
        try:
            url = Path(config.webhook_url_file).read_text().strip()
        except OSError as exc:
            raise BadInputError(
                f"cannot read drift.webhook_url_file {config.webhook_url_file}: {exc.strerror}",
                "check the path in the fleet config",
            ) from None
    return url or None


def post_alarm(url: str, data: bytes, timeout_s: float, counters: Counter[str]) -> None:
    """One alarm (its model's wire JSON, as published on MQTT) to the webhook; a failure is counted and logged (the alarm is stored and on MQTT)."""
    try:
        resp = httpx.post(url, content=data, headers={"Content-Type": "application/json"}, timeout=timeout_s)
        resp.raise_for_status()
        counters["drift_webhook_sent"] += 1
    except httpx.HTTPError as exc:
        counters["drift_webhook_failed"] += 1
        log.warning("drift webhook failed: %s", exc)
