"""Devices: one-time enrollment, groups and tags, and the broker ACL the fleet generates.

Enrollment: an admin creates a one-time token for a device id; the device sends the token
and a CSR whose CN is its id; the fleet's CA signs it, the token is spent, and the broker ACL
is rewritten so that the device may publish and subscribe only under edgefleet/v1/<id>/.
"""

from __future__ import annotations

import re
import secrets

from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from edgefleet.contracts.rest import BrokerAddress, DeviceAgent, DeviceModel, DeviceOut, DevicePage, Enrollment
from edgefleet.errors import BadInputError, ConflictError, NotFoundError, PermissionDeniedError
from edgefleet.fleet.ca import CertificateAuthority
from edgefleet.fleet.config import HomeAssistantConfig
from edgefleet.fleet.core import Fleet, sha256_text
from edgefleet.fleet.db import Device, EnrollmentToken, Replica, insert_or_ignore
from edgefleet.fleet.paging import MAX_PAGE, keyset

# A device id is its certificate CN, its MQTT username and client id, and its topic level, so
# it can hold none of MQTT's wildcards or separators ('+', '#', '/'), no '$' (broker topics) and
# no '%' (ACL pattern substitutions): the pattern only admits letters, digits, '.', '_', '-'.
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FLEET_MQTT_USER = "fleet"  # the CN of the fleet's own client certificate
FLEET_VIEWER_USER = "fleet-viewer"  # a read-only fleet-side identity (the demo's alert console)
# Broker counters the fleet reads ($SYS is outside every device's namespace) and reports.
BROKER_STATS = {
    "$SYS/broker/publish/messages/dropped": "broker_messages_dropped",
    "$SYS/broker/store/messages/count": "broker_messages_stored",
}
# Identities a camera must never hold: the fleet's own (it may read every device's topics),
# fleet-side helpers (fleet-*), and the names the broker and older clients used. Compared
# case-insensitively so that a look-alike cannot confuse an operator either.
RESERVED_IDS = frozenset(
    {FLEET_MQTT_USER, "edgefleet", "edgefleet-fleet", "localhost", "server", "broker", "mosquitto"}
)
RESERVED_PREFIXES = (f"{FLEET_MQTT_USER}-", "edgefleet-", "$")
REVOKED = "revoked"  # the status a revoked device shows, whatever it last reported


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.match(device_id or ""):
        raise BadInputError(
            f"device id {device_id!r} is not 1-64 letters, digits, '.', '_' or '-'",
            "pick an id without '/', '+', '#' or spaces (it becomes an MQTT topic level)",
        )
    folded = device_id.lower()
    if folded in RESERVED_IDS or folded.startswith(RESERVED_PREFIXES):
        raise BadInputError(
            f"device id {device_id!r} is reserved for the fleet's own identities",
            "pick another id (not 'fleet', 'fleet-*' or 'edgefleet-*')",
        )
    return device_id


def device_out(d: Device) -> DeviceOut:
    return DeviceOut(
        id=d.id,
        group=d.group,
        tags=sorted(d.tags or []),
        target=d.target,
        status=REVOKED if d.revoked_at is not None else d.status,
        last_seen=d.last_seen,
        model=DeviceModel(name=d.model_name, version=d.model_version) if d.model_name else None,
        agent=DeviceAgent(version=d.agent_version, arch=d.arch) if d.agent_version else None,
        enrolled_at=d.enrolled_at,
    )


def ca(fleet: Fleet) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(fleet.config.resolved_ca_dir())


def create_enrollment_token(
    fleet: Fleet, device_id: str, target: str, group: str | None = None, tags: list[str] | None = None
) -> str:
    check_device_id(device_id)
    token = "efe_" + secrets.token_urlsafe(24)
    with fleet.writer() as s, s.begin():
        if s.get(Device, device_id) is not None:
            raise ConflictError(
                f"device {device_id!r} is already enrolled", "remove it first, or enroll the camera under a new id"
            )
        s.add(
            EnrollmentToken(
                token_sha256=sha256_text(token),
                device_id=device_id,
                group=group,
                tags=sorted(set(tags or [])),
                target=target,
                expires_at=fleet.clock() + fleet.config.enrollment_ttl_s,
            )
        )
    return token


def enroll(fleet: Fleet, token: str, device_id: str, csr_pem: str) -> Enrollment:
    """Spend `token`, sign the CSR, register the device and return what the device needs."""
    check_device_id(device_id)
    authority = ca(fleet)
    with fleet.lock, fleet.writer() as s, s.begin():
        row = s.scalar(select(EnrollmentToken).where(EnrollmentToken.token_sha256 == sha256_text(token or "")))
        if row is None or row.device_id != device_id:
            raise PermissionDeniedError(
                "unknown enrollment token for this device", "ask the fleet admin for a token made for this device id"
            )
        if row.used_at is not None:
            raise PermissionDeniedError(
                "this enrollment token was already used", "enrollment tokens are one-time; ask for a new one"
            )
        if row.expires_at < fleet.clock():
            raise PermissionDeniedError("this enrollment token has expired", "ask for a new one")
        if s.get(Device, device_id) is not None:  # another token for this id was spent first
            raise ConflictError(
                f"device {device_id!r} is already enrolled", "remove it first, or enroll the camera under a new id"
            )
        cert = authority.sign_csr(csr_pem, device_id)
        row.used_at = fleet.clock()
        s.add(
            Device(
                id=device_id,
                group=row.group,
                tags=row.tags,
                target=row.target,
                cert_serial=format(cert.serial_number, "x"),
            )
        )
    fleet.broker_auth.add_device(device_id)
    broker = fleet.config.broker
    return Enrollment(
        device_id=device_id,
        certificate=cert.public_bytes(serialization.Encoding.PEM).decode(),
        ca_certificate=authority.cert_pem,
        broker=BrokerAddress(
            host=(broker.public_host or broker.host) if broker else None, port=broker.port if broker else None
        ),
        fleet_url=fleet.config.public_url,
        trusted_keys=fleet.fleet_public_keys_pem(),
    )


# One broker right: "read", "write" or "readwrite" on a topic filter (a mosquitto ACL line).
Right = tuple[str, str]


def broker_rights(
    device_ids: list[str],
    replica_ids: tuple[str, ...] | list[str] = (),
    homeassistant: HomeAssistantConfig | None = None,
) -> dict[str, list[Right]]:
    """Every broker user (a certificate CN) and its rights, for whichever backend enforces them
    (fleet/broker_auth): the fleet's replicas read and write every device's topics (a shared
    subscription is checked as its topic); each device only its own. With Home Assistant
    discovery on, the replicas also write HA's topics and HA reads only those and the cameras'
    status (fleet/homeassistant.py)."""
    ha = homeassistant if homeassistant is not None and homeassistant.enabled else None
    ha_topics = [f"{ha.discovery_prefix}/#", f"{ha.state_prefix}/#"] if ha else []
    rights: dict[str, list[Right]] = {}
    for replica in sorted({FLEET_MQTT_USER, *replica_ids}):
        rights[replica] = [
            ("readwrite", "edgefleet/v1/#"),
            *(("read", t) for t in BROKER_STATS),
            *(("write", t) for t in ha_topics),
        ]
    # A second fleet-side client needs its own certificate: the broker makes the CN the client id.
    rights[FLEET_VIEWER_USER] = [("read", "edgefleet/v1/+/alerts")]
    if ha:
        rights[ha.user] = [("read", t) for t in [*ha_topics, "edgefleet/v1/+/status"]]
        rights[ha.user].append(("write", f"{ha.discovery_prefix}/status"))  # HA's own birth and last will
    for dev in sorted(device_ids):
        rights[dev] = device_rights(dev)
    return rights


def device_rights(device_id: str) -> list[Right]:
    base = f"edgefleet/v1/{device_id}"
    return [
        ("write", f"{base}/status"),
        ("write", f"{base}/alerts"),
        ("write", f"{base}/telemetry"),
        ("write", f"{base}/shadow"),
        ("write", f"{base}/jobs/+/update"),
        ("read", f"{base}/jobs/notify"),
    ]


def acl_text(
    device_ids: list[str],
    replica_ids: tuple[str, ...] | list[str] = (),
    homeassistant: HomeAssistantConfig | None = None,
) -> str:
    """Mosquitto ACL file (users are certificate CNs) granting `broker_rights`."""
    lines = ["# written by edgefleet fleet; do not edit"]
    for user, rights in broker_rights(device_ids, replica_ids, homeassistant).items():
        lines += [f"user {user}", *(f"topic {access} {topic}" for access, topic in rights), ""]
    return "\n".join(lines)


def register_replica(fleet: Fleet, replica_id: str) -> None:
    """Record a fleet replica's identity, so that the ACL written next lets it read the devices' topics."""
    with fleet.writer() as s, s.begin():
        insert_or_ignore(s, Replica, ["id"], [{"id": replica_id, "started_at": fleet.clock()}])


def list_devices(
    fleet: Fleet,
    group: str | None = None,
    tag: str | None = None,
    status: str | None = None,
    limit: int = MAX_PAGE,
    cursor: str | None = None,
) -> DevicePage:
    """One page of devices by id; `tag` is matched in Python (tags are a JSON list)."""
    with fleet.session() as s:
        q = select(Device)
        if group:
            q = q.where(Device.group == group)
        if status == REVOKED:
            q = q.where(Device.revoked_at.is_not(None))
        elif status:
            q = q.where(Device.status == status, Device.revoked_at.is_(None))
        rows, after = keyset(s, q, Device.id, limit, cursor, lambda d: not tag or tag in (d.tags or []))
        return DevicePage(items=[device_out(d) for d in rows], next=after)


def revoke_device(fleet: Fleet, device_id: str) -> DeviceOut:
    """Take a device's broker rights for good (the broker disconnects it and refuses its next
    publish); its row and history stay, its id cannot enroll again. Idempotent."""
    with fleet.writer() as s, s.begin():
        d = s.get(Device, device_id, with_for_update=True)
        if d is None:
            raise NotFoundError(f"no device {device_id!r}", "list devices with `edgefleet fleet devices list`")
        d.revoked_at = d.revoked_at or fleet.clock()
    fleet.broker_auth.remove_device(device_id)  # after the commit: a replica's sync now leaves it out
    return get_device(fleet, device_id)


def get_device(fleet: Fleet, device_id: str) -> DeviceOut:
    with fleet.session() as s:
        d = s.get(Device, device_id)
        if d is None:
            raise NotFoundError(f"no device {device_id!r}", "list devices with `edgefleet fleet devices list`")
        return device_out(d)


def update_device(
    fleet: Fleet,
    device_id: str,
    group: str | None = None,
    add_tags: list[str] | None = None,
    remove_tags: list[str] | None = None,
) -> DeviceOut:
    with fleet.writer() as s, s.begin():
        d = s.get(Device, device_id)
        if d is None:
            raise NotFoundError(f"no device {device_id!r}", "list devices with `edgefleet fleet devices list`")
        if group is not None:
            d.group = group or None
        d.tags = sorted((set(d.tags or []) | set(add_tags or [])) - set(remove_tags or []))
        return device_out(d)


def register_device(
    fleet: Fleet, device_id: str, target: str, group: str | None = None, tags: list[str] | None = None
) -> DeviceOut:
    """Register a device whose certificate was issued out of band (simulated fleets, benchmarks)."""
    check_device_id(device_id)
    with fleet.writer() as s, s.begin():
        if s.get(Device, device_id) is not None:
            raise ConflictError(f"device {device_id!r} is already enrolled", "use another id")
        d = Device(id=device_id, target=target, group=group, tags=sorted(set(tags or [])))
        s.add(d)
        s.flush()
        return device_out(d)
