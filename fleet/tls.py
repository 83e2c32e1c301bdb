"""HTTPS on the fleet's own listen address: the certificate and key `fleet serve` hands uvicorn.

The pair is loaded once here, before the service starts, so a missing or unreadable file, a file
that is not PEM, or a key that is not the certificate's fails with the config key that names it
rather than as an ssl traceback from inside uvicorn.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from edgefleet.errors import UsageError
from edgefleet.fleet.config import FleetConfig

FIX = 'see docs/security.md, "Fleet HTTPS" (`edgefleet fleet server-cert` issues a pair from the fleet CA)'


def _readable(key: str, path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise UsageError(f"fleet config {key} {path}: cannot read it ({exc.strerror})", FIX) from None


def uvicorn_tls_options(config: FleetConfig) -> dict[str, str]:
    """uvicorn's ssl_certfile/ssl_keyfile for the configured pair, checked; {} for plain HTTP."""
    cert, key = config.tls_cert_file, config.tls_key_file
    if cert is None or key is None:  # the config allows both or neither
        return {}
    _readable("tls_cert_file", cert)
    _readable("tls_key_file", key)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise UsageError(f"fleet config tls_key_file {key} is not the key of tls_cert_file {cert}", FIX) from None
        raise UsageError(
            f"fleet config tls_cert_file {cert} / tls_key_file {key}: not a PEM certificate and its "
            f"unencrypted PEM key ({exc.reason or exc})",
            FIX,
        ) from None
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
