"""Device-signed requests (edgefleet/device_auth.py): what the fleet refuses, one row per forgery."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

SHA = "ab" * 32


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory):
    from edgefleet.fleet.ca import CertificateAuthority

    root = tmp_path_factory.mktemp("cas")
    fleet, other = CertificateAuthority.load_or_create(root / "fleet"), CertificateAuthority.load_or_create(root / "x")
    return fleet, other, fleet.issue_key_and_cert("cam-1"), other.issue_key_and_cert("cam-1")


def serial_of(cert_pem: bytes) -> str:
    from cryptography import x509

    return format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")


ROWS = {
    "control": {},
    "another-ca": {"signed_by": "other"},
    "another-device": {"device": "cam-2"},
    "another-upload": {"subject": "cd" * 32},
    "old-certificate": {"serial": "1234"},
    "clock-skew": {"skew": 301},
    "expired-certificate": {"now": time.time() + 3700 * 86400},  # issue_key_and_cert: 3650 days
    "tampered-signature": {"tamper": True},
    "no-headers": {"drop": True},
}


@pytest.mark.parametrize("row", ROWS, ids=list(ROWS))
def test_a_device_signature_is_refused_unless_it_is_this_device_this_upload_now(cas, row: str) -> None:
    from cryptography import x509

    from edgefleet.device_auth import SIGNATURE_HEADER, DeviceAuthError, sign_headers, verify_headers

    fleet_ca, _, (key, cert), (other_key, other_cert) = cas
    case = ROWS[row]
    signer_key, signer_cert = (other_key, other_cert) if case.get("signed_by") == "other" else (key, cert)
    at = int(case.get("now", time.time()))  # an expired certificate signs "on time": only its expiry is wrong
    headers = sign_headers(signer_key, signer_cert, case.get("device", "cam-1"), case.get("subject", SHA), at)
    if case.get("tamper"):
        headers[SIGNATURE_HEADER] = headers[SIGNATURE_HEADER][:-8] + "AAAAAAA="
    if case.get("drop"):
        headers = {}
    now = at + case.get("skew", 0)
    serial = case.get("serial", serial_of(cert))
    ca = x509.load_pem_x509_certificate(fleet_ca.cert_pem.encode())
    if row == "control":
        verify_headers(headers, ca, "cam-1", SHA, now, serial)
        verify_headers(headers, ca, "cam-1", SHA, now, None)  # a device registered without enrollment
        return
    with pytest.raises(DeviceAuthError):
        verify_headers(headers, ca, "cam-1", SHA, now, serial)


def test_signing_needs_the_devices_ec_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from edgefleet.device_auth import DeviceAuthError, sign_headers

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(DeviceAuthError, match="not an EC key"):
        sign_headers(pem, b"", "cam-1", SHA, 0)
