"""The fleet's certificate authority: signs device CSRs for mutual TLS with the broker.

Files under <data_dir>/ca/: ca.key (EC P-256, mode 0600) and ca.crt. A device certificate's
common name is its device id, which mosquitto uses as the username (use_identity_as_username)
for the per-device ACL the fleet writes.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import BadInputError

DEVICE_CERT_DAYS = 825


def write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (mode 0600 from the start, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @classmethod
    def load_or_create(cls, directory: Path, name: str = "edgefleet fleet CA") -> CertificateAuthority:
        directory = Path(directory)
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    def _issue(
        self, subject_cn: str, public_key, *, server_names: list[str] | None = None, days: int = DEVICE_CERT_DAYS
    ) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_names:
            import ipaddress

            alt = []
            for n in server_names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    alt.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def sign_csr(self, csr_pem: str, device_id: str) -> x509.Certificate:
        """Check the CSR's self-signature and that it names `device_id`; issue a client cert."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise BadInputError(
                f"the CSR is not a PEM certificate signing request ({exc})",
                "send the CSR `edgefleet agent install` wrote",
            ) from None
        if not csr.is_signature_valid:
            raise BadInputError("the CSR's signature does not verify", "regenerate the CSR with the device's key")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != device_id:
            raise BadInputError(
                f"the CSR names {names[0].value if names else 'no one'!r}, not device {device_id!r}",
                "create the CSR with CN=<device id>",
            )
        return self._issue(device_id, csr.public_key())

    def issue_key_and_cert(self, cn: str, *, server_names: list[str] | None = None) -> tuple[bytes, bytes]:
        """A new key and certificate (PEM) for the broker (server_names) or the fleet's own MQTT client."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(cn, key.public_key(), server_names=server_names, days=3650)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return key_pem, cert.public_bytes(serialization.Encoding.PEM)
