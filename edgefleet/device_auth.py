"""A camera's HTTPS requests signed with its own identity: the key and certificate it uses for
mutual TLS with the broker (issued by the fleet CA at enrollment, CN = device id).

The fleet's HTTP API sits behind plain HTTP or a TLS-terminating proxy, so the client
certificate is not seen at the TLS layer; the request carries it instead, with an ECDSA
signature over what the request is about and when:

    X-Edgefleet-Certificate  base64 DER of the device certificate
    X-Edgefleet-Time         unix seconds when the request was signed
    X-Edgefleet-Signature    base64 ECDSA-SHA256 over SIGNED_PREFIX, device, subject, time (lines)

The fleet accepts it when the certificate was issued by the CA it trusts for devices, is
valid now, names the device in the URL, and the signature verifies within MAX_SKEW_S. The
subject (a snapshot's sha256) binds the signature to one upload: it cannot be replayed for
another one.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_HEADER, TIME_HEADER, SIGNATURE_HEADER = "X-Edgefleet-Certificate", "X-Edgefleet-Time", "X-Edgefleet-Signature"
SIGNED_PREFIX = "edgefleet-device-request-v1"
MAX_SKEW_S = 300


class DeviceAuthError(ValueError):
    """Why a signed device request is refused (the message is safe to return to the caller)."""


def signed_bytes(device_id: str, subject: str, at: int) -> bytes:
    return f"{SIGNED_PREFIX}\n{device_id}\n{subject}\n{at}".encode()


def sign_headers(key_pem: bytes, cert_pem: bytes, device_id: str, subject: str, at: int) -> dict[str, str]:
    """The headers that prove `device_id` (holding key_pem) asks about `subject` at `at`."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeviceAuthError("the device key is not an EC key (the one `edgefleet agent install` made)")
    cert = x509.load_pem_x509_certificate(cert_pem)
    signature = key.sign(signed_bytes(device_id, subject, at), ec.ECDSA(hashes.SHA256()))
    return {
        CERT_HEADER: base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(),
        TIME_HEADER: str(at),
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }


def _certificate(headers: dict[str, str]) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(base64.b64decode(headers[CERT_HEADER], validate=True))
    except (KeyError, ValueError, binascii.Error):
        raise DeviceAuthError(f"no device certificate in {CERT_HEADER}") from None


def verify_headers(
    headers: dict[str, str], ca: x509.Certificate, device_id: str, subject: str, now: float, serial: str | None
) -> None:
    """Raise DeviceAuthError unless the headers prove `device_id` signed this request for `subject`.

    `serial` (hex), when the fleet recorded one at enrollment, must be the certificate's: a
    certificate the device was issued before it re-enrolled no longer counts."""
    cert = _certificate(headers)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise DeviceAuthError("the device certificate was not issued by the fleet's device CA") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != device_id:
        raise DeviceAuthError(f"the device certificate is not for device {device_id!r}")
    when = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise DeviceAuthError("the device certificate is expired or not yet valid")
    if serial is not None and format(cert.serial_number, "x") != serial:
        raise DeviceAuthError("the device certificate is not the one the device enrolled with")
    try:
        at = int(headers[TIME_HEADER])
        signature = base64.b64decode(headers[SIGNATURE_HEADER], validate=True)
    except (KeyError, ValueError, binascii.Error):
        raise DeviceAuthError(f"the request has no valid {TIME_HEADER} and {SIGNATURE_HEADER}") from None
    if abs(now - at) > MAX_SKEW_S:
        raise DeviceAuthError(f"the request was signed {int(now - at)} s from now (clock skew over {MAX_SKEW_S} s)")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise DeviceAuthError("the device certificate does not hold an EC key")
    try:
        public.verify(signature, signed_bytes(device_id, subject, at), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise DeviceAuthError("the request signature does not verify with the device certificate") from None
