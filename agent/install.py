"""`edgefleet agent install`: prepare a camera.

Writes, under the state directory: trusted/*.pub (the package signing keys this device
accepts), identity/device.key (EC P-256, mode 0600), identity/device.csr
(CN = device id, for fleet enrollment), identity/device.pem (when a certificate is given, checked
against the key), identity/ca.pem, the empty packages/, journal/ and incoming/ folders; the
config file (version 1) and a systemd unit that runs the agent as an unprivileged user.
`dry_run` computes the same plan and writes nothing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from edgefleet.agent.config import DEVICE_ID_PATTERN, parse_config
from edgefleet.errors import UsageError

DEFAULT_UNIT = Path("/etc/systemd/system/edgefleet-agent.service")
STATE_SUBDIRS = ("packages", "journal", "identity", "incoming", "trusted")


@dataclass
class InstallPlan:
    directories: list[Path] = field(default_factory=list)
    files: dict[Path, str] = field(default_factory=dict)  # path -> text (private key shown as a placeholder)
    notes: list[str] = field(default_factory=list)


def _toml_str(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(*, state_dir: Path, device_id: str, mqtt_host: str, mqtt_port: int, transport: str, labels: list[str], package: Path | None, fleet_url: str | None, trusted: list[Path]) -> str:
    identity = state_dir / "identity"
    lines = [
        "# edgefleet agent config (format: docs/agent.md). Unknown keys are refused.",
        "version = 1",
        f"state_dir = {_toml_str(state_dir)}",
        "",
        "[mqtt]",
        f"host = {_toml_str(mqtt_host)}",
        f"port = {mqtt_port}",
        f"device_id = {_toml_str(device_id)}",
        f"transport = {_toml_str(transport)}",
        "",
        "[mqtt.tls]",
        f"ca_file = {_toml_str(identity / 'ca.pem')}",
        f"cert_file = {_toml_str(identity / 'device.pem')}",
        f"key_file = {_toml_str(identity / 'device.key')}",
        "",
        "[fleet]",
        *([f"url = {_toml_str(fleet_url)}"] if fleet_url else []),
        "",
        "[model]",
        *([f"package = {_toml_str(package)}"] if package else []),
        *(["trusted_keys = [" + ", ".join(_toml_str(t) for t in trusted) + "]"] if trusted else []),
        "",
        "[[sources]]",
        'type = "folder"',
        f"path = {_toml_str(state_dir / 'incoming')}",
        "",
        "[rules]",
        "labels = [" + ", ".join(_toml_str(label) for label in labels) + "]",
        "min_score = 0.5",
        "",
    ]
    return "\n".join(lines)


def unit_text(*, config_path: Path, state_dir: Path, user: str, python: str = sys.executable) -> str:
    """The systemd unit; `python` is the interpreter whose packages hold the agent (a Debian package's private venv)."""
    return f"""[Unit]
Description=edgefleet camera agent
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
ExecStart={python} -m edgefleet.cli agent launch --config {config_path}
Restart=always
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=30
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={state_dir}

[Install]
WantedBy=multi-user.target
"""


def make_identity(device_id: str) -> tuple[bytes, bytes]:
    """A new EC P-256 private key (PEM) and a CSR for CN=device_id signed with it (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])).sign(key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def check_certificate(cert_pem: bytes, key_pem: bytes, device_id: str) -> None:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise UsageError(f"the device certificate is not a PEM certificate ({exc})", "pass the certificate the fleet CA issued for this device") from None
    key = serialization.load_pem_private_key(key_pem, password=None)
    same = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not same:
        raise UsageError("the device certificate does not belong to this device's private key", "have the fleet CA sign identity/device.csr and pass that certificate")
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if device_id not in names:
        raise UsageError(f"the certificate is for {names or 'no CN'}, not device {device_id}", "issue the certificate for this device id (the broker ACL keys on the CN)")


def install_agent(
    *,
    config_path: Path,
    state_dir: Path,
    device_id: str,
    labels: list[str],
    mqtt_host: str | None = None,
    ca_file: Path | None = None,
    mqtt_port: int | None = None,
    transport: str = "paho",
    cert_file: Path | None = None,
    enroll_token: str | None = None,
    fleet_ca_file: Path | None = None,
    package: Path | None = None,
    fleet_url: str | None = None,
    trust: list[Path] | None = None,
    user: str = "edgefleet",
    unit_path: Path | None = DEFAULT_UNIT,
    force: bool = False,
    dry_run: bool = False,
) -> InstallPlan:
    """Prepare a camera; returns what was (or, with dry_run, would be) written.

    With `enroll_token` (a one-time token from the fleet admin) the CSR is sent to
    `fleet_url`/api/v1/enroll and the answer supplies the certificate, and, unless given, the
    broker CA, host and port and the trusted package keys. Otherwise `mqtt_host` and `ca_file`
    are required and the certificate comes by hand (`cert_file`) or later.
    """
    import re

    if not re.match(DEVICE_ID_PATTERN, device_id):
        raise UsageError(f"device id {device_id!r} is not letters, digits, - and _ (1-64)", "pick another device id")
    if user == "root":
        raise UsageError("the agent must not run as root", "pass --user with an unprivileged account (default: edgefleet)")
    if not labels:
        raise UsageError("no alert labels given", "pass --label LABEL (repeatable)")
    state_dir, config_path = Path(state_dir).absolute(), Path(config_path).absolute()
    if config_path.exists() and not force:
        raise UsageError(f"{config_path} already exists", "pass --force to rewrite it (the device key is kept)")
    if enroll_token is not None:
        if not fleet_url:
            raise UsageError("enrollment needs the fleet's URL", "pass --fleet-url")
        if cert_file is not None:
            raise UsageError("both a certificate and an enrollment token were given", "pass --cert or an enrollment token, not both")
    elif mqtt_host is None or ca_file is None:
        raise UsageError("without fleet enrollment the broker host and CA must be given", "pass --mqtt-host and --ca, or enroll with --fleet-url and --enroll-token-file")
    if ca_file is not None and not Path(ca_file).is_file():
        raise UsageError(f"CA certificate {ca_file} does not exist", "pass the fleet broker's CA with --ca")
    plan = InstallPlan()
    plan.directories = [state_dir, *(state_dir / d for d in STATE_SUBDIRS)]
    identity = state_dir / "identity"
    key_path, csr_path, cert_path = identity / "device.key", identity / "device.csr", identity / "device.pem"
    if key_path.exists():
        key_pem = key_path.read_bytes()
        key = serialization.load_pem_private_key(key_pem, password=None)
        csr_pem = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        plan.notes.append(f"kept the existing device key {key_path}")
    else:
        key_pem, csr_pem = make_identity(device_id)
        plan.files[key_path] = "<new EC P-256 private key, mode 0600>"
    plan.files[csr_path] = csr_pem.decode()
    ca_text = Path(ca_file).read_text() if ca_file else None
    fleet_keys: list[str] = []
    if enroll_token is not None and dry_run:
        plan.notes.append(f"would enroll at {fleet_url} for the certificate (and the broker CA, address and trusted keys)")
        ca_text = ca_text or "<broker CA from enrollment>"
        plan.files[cert_path] = "<certificate from enrollment>"
    elif enroll_token is not None:
        from edgefleet.agent.enroll import enroll

        enrolled = enroll(fleet_url, enroll_token, device_id, csr_pem, ca_file=fleet_ca_file)
        check_certificate(enrolled.certificate.encode(), key_pem, device_id)
        plan.files[cert_path] = enrolled.certificate
        ca_text = ca_text or enrolled.ca_certificate
        mqtt_host = mqtt_host or enrolled.broker_host
        mqtt_port = mqtt_port or enrolled.broker_port
        fleet_keys = enrolled.trusted_keys
        plan.notes.append(f"enrolled at {fleet_url}")
        if not mqtt_host:
            raise UsageError("the fleet did not say where its broker is", "pass --mqtt-host")
    plan.files[identity / "ca.pem"] = ca_text
    if cert_file is not None:
        cert_pem = Path(cert_file).read_bytes()
        if not dry_run:
            check_certificate(cert_pem, key_pem, device_id)
        plan.files[cert_path] = cert_pem.decode()
    elif enroll_token is None:
        plan.notes.append(f"no certificate yet: have the fleet CA sign {csr_path} and save it as {cert_path}")
    trusted = []
    for key in trust or []:
        from edgefleet.signing import load_public_key

        load_public_key(key)  # refuse anything that is not an ed25519 public key
        trusted.append(state_dir / "trusted" / Path(key).name)
        plan.files[trusted[-1]] = Path(key).read_text()
    for i, pem in enumerate(fleet_keys):
        if not isinstance(serialization.load_pem_public_key(pem.encode()), Ed25519PublicKey):
            raise UsageError("the fleet sent a trusted key that is not ed25519", "check the fleet's signing keys")
        trusted.append(state_dir / "trusted" / f"fleet-{i}.pub")
        plan.files[trusted[-1]] = pem
    text = config_text(state_dir=state_dir, device_id=device_id, mqtt_host=mqtt_host or "<from enrollment>", mqtt_port=mqtt_port or 8883, transport=transport, labels=labels,
                       package=Path(package).absolute() if package else None, fleet_url=fleet_url, trusted=trusted)
    from edgefleet.agent.config import tomllib

    parse_config(tomllib.loads(text), "generated config")  # what we write must load
    plan.files[config_path] = text
    if unit_path is not None:
        plan.files[Path(unit_path)] = unit_text(config_path=config_path, state_dir=state_dir, user=user)
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        account = None
        plan.notes.append(f"user {user} does not exist: create it with `useradd --system --home-dir {state_dir} --shell /usr/sbin/nologin {user}`")
    if dry_run:
        return plan

    for directory in plan.directories:
        directory.mkdir(parents=True, exist_ok=True)
    identity.chmod(0o700)
    for path, content in plan.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path == key_path:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key_pem)
        else:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content)
            tmp.replace(path)
    if account is not None and os.geteuid() == 0:
        for root, dirs, files in os.walk(state_dir):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                shutil.chown(name, account.pw_uid, account.pw_gid)
    return plan
