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
import re
import shutil
import sys
from dataclasses import dataclass, field, replace
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


def config_text(
    *,
    state_dir: Path,
    device_id: str,
    mqtt_host: str,
    mqtt_port: int,
    transport: str,
    labels: list[str],
    package: Path | None,
    fleet_url: str | None,
    trusted: list[Path],
    fleet_ca: Path | None = None,
) -> str:
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
        *([f"ca_file = {_toml_str(fleet_ca)}"] if fleet_ca else []),
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
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def check_certificate(cert_pem: bytes, key_pem: bytes, device_id: str) -> None:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise UsageError(
            f"the device certificate is not a PEM certificate ({exc})",
            "pass the certificate the fleet CA issued for this device",
        ) from None
    key = serialization.load_pem_private_key(key_pem, password=None)
    same = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not same:
        raise UsageError(
            "the device certificate does not belong to this device's private key",
            "have the fleet CA sign identity/device.csr and pass that certificate",
        )
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if device_id not in names:
        raise UsageError(
            f"the certificate is for {names or 'no CN'}, not device {device_id}",
            "issue the certificate for this device id (the broker ACL keys on the CN)",
        )


@dataclass(frozen=True, kw_only=True)
class InstallOptions:
    """What `edgefleet agent install` was asked for (its flags, one field each).

    With `enroll_token` (a one-time token from the fleet admin) the CSR is sent to
    `fleet_url`/api/v1/enroll and the answer supplies the certificate, and, unless given, the
    broker CA, host and port and the trusted package keys. Otherwise `mqtt_host` and `ca_file`
    are required and the certificate comes by hand (`cert_file`) or later.
    """

    config_path: Path
    state_dir: Path
    device_id: str
    labels: tuple[str, ...]
    mqtt_host: str | None = None
    ca_file: Path | None = None
    mqtt_port: int | None = None
    transport: str = "paho"
    cert_file: Path | None = None
    enroll_token: str | None = None
    fleet_ca_file: Path | None = None
    package: Path | None = None
    fleet_url: str | None = None
    trust: tuple[Path, ...] = ()
    user: str = "edgefleet"
    unit_path: Path | None = DEFAULT_UNIT
    force: bool = False
    dry_run: bool = False


@dataclass
class Identity:
    """The device key (kept across reinstalls) and its CSR."""

    key_path: Path
    cert_path: Path
    key_pem: bytes
    csr_pem: bytes


@dataclass
class Broker:
    """Where the agent connects and what it trusts, from flags and (when enrolling) the fleet."""

    host: str | None
    port: int | None
    ca_text: str | None
    fleet_keys: list[str] = field(default_factory=list)


def install_agent(options: InstallOptions) -> InstallPlan:
    """Prepare a camera; returns what was (or, with dry_run, would be) written."""
    opts = replace(
        options, state_dir=Path(options.state_dir).absolute(), config_path=Path(options.config_path).absolute()
    )
    check_options(opts)
    plan = InstallPlan(directories=[opts.state_dir, *(opts.state_dir / d for d in STATE_SUBDIRS)])
    identity = plan_identity(plan, opts)
    broker = plan_enrollment(plan, opts, identity)
    plan_certificate(plan, opts, identity)
    trusted = plan_trusted_keys(plan, opts, broker.fleet_keys)
    plan_config_and_unit(plan, opts, broker, trusted)
    account = find_account(plan, opts)
    if not opts.dry_run:
        write_plan(plan, opts, identity, account)
    return plan


def check_options(opts: InstallOptions) -> None:
    """Refuse what cannot make a working camera before anything is computed or written."""
    if not re.match(DEVICE_ID_PATTERN, opts.device_id):
        raise UsageError(
            f"device id {opts.device_id!r} is not letters, digits, - and _ (1-64)", "pick another device id"
        )
    if opts.user == "root":
        raise UsageError(
            "the agent must not run as root", "pass --user with an unprivileged account (default: edgefleet)"
        )
    if not opts.labels:
        raise UsageError("no alert labels given", "pass --label LABEL (repeatable)")
    if opts.config_path.exists() and not opts.force:
        raise UsageError(f"{opts.config_path} already exists", "pass --force to rewrite it (the device key is kept)")
    if opts.enroll_token is not None:
        if not opts.fleet_url:
            raise UsageError("enrollment needs the fleet's URL", "pass --fleet-url")
        if opts.cert_file is not None:
            raise UsageError(
                "both a certificate and an enrollment token were given", "pass --cert or an enrollment token, not both"
            )
    elif opts.mqtt_host is None or opts.ca_file is None:
        raise UsageError(
            "without fleet enrollment the broker host and CA must be given",
            "pass --mqtt-host and --ca, or enroll with --fleet-url and --enroll-token-file",
        )
    if opts.ca_file is not None and not Path(opts.ca_file).is_file():
        raise UsageError(f"CA certificate {opts.ca_file} does not exist", "pass the fleet broker's CA with --ca")


def plan_identity(plan: InstallPlan, opts: InstallOptions) -> Identity:
    """The device key is kept on a reinstall (its certificate stays valid); the CSR is made anew."""
    folder = opts.state_dir / "identity"
    key_path, csr_path = folder / "device.key", folder / "device.csr"
    if key_path.exists():
        key_pem = key_path.read_bytes()
        key = serialization.load_pem_private_key(key_pem, password=None)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, opts.device_id)])
        csr_pem = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(subject)
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        plan.notes.append(f"kept the existing device key {key_path}")
    else:
        key_pem, csr_pem = make_identity(opts.device_id)
        plan.files[key_path] = "<new EC P-256 private key, mode 0600>"
    plan.files[csr_path] = csr_pem.decode()
    return Identity(key_path=key_path, cert_path=folder / "device.pem", key_pem=key_pem, csr_pem=csr_pem)


def plan_enrollment(plan: InstallPlan, opts: InstallOptions, identity: Identity) -> Broker:
    """The broker and CA from the flags, completed by the fleet's enrollment answer when enrolling."""
    broker = Broker(
        host=opts.mqtt_host, port=opts.mqtt_port, ca_text=Path(opts.ca_file).read_text() if opts.ca_file else None
    )
    if opts.enroll_token is not None and opts.dry_run:
        plan.notes.append(
            f"would enroll at {opts.fleet_url} for the certificate (and the broker CA, address and trusted keys)"
        )
        broker.ca_text = broker.ca_text or "<broker CA from enrollment>"
        plan.files[identity.cert_path] = "<certificate from enrollment>"
    elif opts.enroll_token is not None:
        from edgefleet.agent.enroll import enroll

        assert opts.fleet_url is not None  # check_options
        enrolled = enroll(
            opts.fleet_url, opts.enroll_token, opts.device_id, identity.csr_pem, ca_file=opts.fleet_ca_file
        )
        check_certificate(enrolled.certificate.encode(), identity.key_pem, opts.device_id)
        plan.files[identity.cert_path] = enrolled.certificate
        broker.ca_text = broker.ca_text or enrolled.ca_certificate
        broker.host = broker.host or enrolled.broker_host
        broker.port = broker.port or enrolled.broker_port
        broker.fleet_keys = enrolled.trusted_keys
        plan.notes.append(f"enrolled at {opts.fleet_url}")
        if not broker.host:
            raise UsageError("the fleet did not say where its broker is", "pass --mqtt-host")
    plan.files[identity.key_path.parent / "ca.pem"] = broker.ca_text
    return broker


def plan_certificate(plan: InstallPlan, opts: InstallOptions, identity: Identity) -> None:
    """A certificate given by hand must match the key; without one the admin signs the CSR later."""
    if opts.cert_file is not None:
        cert_pem = Path(opts.cert_file).read_bytes()
        if not opts.dry_run:
            check_certificate(cert_pem, identity.key_pem, opts.device_id)
        plan.files[identity.cert_path] = cert_pem.decode()
    elif opts.enroll_token is None:
        csr_path = identity.key_path.with_name("device.csr")
        plan.notes.append(f"no certificate yet: have the fleet CA sign {csr_path} and save it as {identity.cert_path}")


def plan_trusted_keys(plan: InstallPlan, opts: InstallOptions, fleet_keys: list[str]) -> list[Path]:
    """The package signing keys this camera accepts: given files and the fleet's; ed25519 only."""
    from edgefleet.signing import load_public_key

    trusted = []
    for key in opts.trust:
        load_public_key(key)  # refuse anything that is not an ed25519 public key
        trusted.append(opts.state_dir / "trusted" / Path(key).name)
        plan.files[trusted[-1]] = Path(key).read_text()
    for i, pem in enumerate(fleet_keys):
        if not isinstance(serialization.load_pem_public_key(pem.encode()), Ed25519PublicKey):
            raise UsageError("the fleet sent a trusted key that is not ed25519", "check the fleet's signing keys")
        trusted.append(opts.state_dir / "trusted" / f"fleet-{i}.pub")
        plan.files[trusted[-1]] = pem
    return trusted


def plan_config_and_unit(plan: InstallPlan, opts: InstallOptions, broker: Broker, trusted: list[Path]) -> None:
    fleet_ca = None
    if (
        opts.fleet_ca_file is not None
    ):  # kept with the identity: snapshot uploads and downloads verify the fleet with it
        fleet_ca = opts.state_dir / "identity" / "fleet-ca.pem"
        plan.files[fleet_ca] = Path(opts.fleet_ca_file).read_text()
    text = config_text(
        state_dir=opts.state_dir,
        device_id=opts.device_id,
        mqtt_host=broker.host or "<from enrollment>",
        mqtt_port=broker.port or 8883,
        transport=opts.transport,
        labels=list(opts.labels),
        package=Path(opts.package).absolute() if opts.package else None,
        fleet_url=opts.fleet_url,
        trusted=trusted,
        fleet_ca=fleet_ca,
    )
    from edgefleet.agent.config import tomllib

    parse_config(tomllib.loads(text), "generated config")  # what we write must load
    plan.files[opts.config_path] = text
    if opts.unit_path is not None:
        plan.files[Path(opts.unit_path)] = unit_text(
            config_path=opts.config_path, state_dir=opts.state_dir, user=opts.user
        )


def find_account(plan: InstallPlan, opts: InstallOptions) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(opts.user)
    except KeyError:
        plan.notes.append(
            f"user {opts.user} does not exist: create it with `useradd --system --home-dir {opts.state_dir} --shell /usr/sbin/nologin {opts.user}`"
        )
        return None


def write_plan(plan: InstallPlan, opts: InstallOptions, identity: Identity, account: pwd.struct_passwd | None) -> None:
    """Files replace atomically; the private key is created 0600 and never overwritten."""
    for directory in plan.directories:
        directory.mkdir(parents=True, exist_ok=True)
    identity.key_path.parent.chmod(0o700)
    for path, content in plan.files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path == identity.key_path:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(identity.key_pem)
        else:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(content)
            tmp.replace(path)
    if account is not None and os.geteuid() == 0:
        for root, dirs, files in os.walk(opts.state_dir):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                shutil.chown(name, account.pw_uid, account.pw_gid)
