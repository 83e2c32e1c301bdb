"""Fleet enrollment from the device: send the CSR with a one-time token, get a certificate back.

POST <fleet>/api/v1/enroll {"token", "device_id", "csr"} -> {"schema": 1, "certificate",
"ca_certificate", "broker": {"host", "port"}, "fleet_url", "trusted_keys": [PEM, ...]}.
Plain urllib, so the agent needs no HTTP library.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import ServiceError, UsageError


@dataclass(frozen=True)
class Enrollment:
    certificate: str
    ca_certificate: str
    broker_host: str | None
    broker_port: int | None
    trusted_keys: list[str]


def enroll(
    fleet_url: str, token: str, device_id: str, csr_pem: bytes, *, ca_file: Path | None = None, timeout: float = 30.0
) -> Enrollment:
    """Spend `token` at the fleet for a certificate for `csr_pem`; raises with the fleet's reason."""
    url = fleet_url.rstrip("/") + "/api/v1/enroll"
    body = json.dumps({"token": token, "device_id": device_id, "csr": csr_pem.decode()}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    context = (
        ssl.create_default_context(cafile=str(ca_file) if ca_file else None) if url.startswith("https://") else None
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            answer = json.loads(resp.read(1 << 20))
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read(1 << 16))
        except ValueError:
            detail = {}
        raise UsageError(
            f"the fleet refused the enrollment ({exc.code}): {detail.get('error', exc.reason)}",
            detail.get("fix") or "ask the fleet admin for a new enrollment token",
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServiceError(
            f"cannot reach the fleet at {url}: {getattr(exc, 'reason', exc)}", "check --fleet-url and the network"
        ) from None
    try:
        if answer.get("schema") != 1:
            raise KeyError("schema")
        broker = answer.get("broker") or {}
        return Enrollment(
            answer["certificate"],
            answer["ca_certificate"],
            broker.get("host"),
            broker.get("port"),
            list(answer.get("trusted_keys") or []),
        )
    except (KeyError, AttributeError, TypeError):
        raise ServiceError("the fleet's enrollment answer is not schema 1", "upgrade the agent or the fleet") from None
