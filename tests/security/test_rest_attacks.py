"""REST attacks: authentication and scopes on every endpoint, enrollment and reserved identities,
request sizes. In-process (FastAPI's TestClient) except the memory row, which needs the real
`edgefleet fleet serve` process."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tests_fleet_util import fleet_process, h

READ = [
    "/api/v1/metrics",
    "/api/v1/models",
    "/api/v1/models/tiny/versions",
    "/api/v1/models/tiny/versions/1",
    "/api/v1/devices",
    "/api/v1/devices/cam-1",
    "/api/v1/rollouts",
    "/api/v1/rollouts/1",
    "/api/v1/rollouts/1/events",
    "/api/v1/drift",
    "/api/v1/drift/windows",
    "/api/v1/drift/events",
    "/api/v1/telemetry",
    "/api/v1/alerts",  # alerts.read_scope, read-only by default
    "/api/v1/alerts/1",
    "/api/v1/alerts/1/snapshot",
]
OPERATOR = [
    ("post", "/api/v1/packages", {"content": b"x"}),
    ("patch", "/api/v1/devices/cam-1", {"json": {"group": "x"}}),
    ("post", "/api/v1/rollouts", {"json": {"group": "tiny", "version": "1"}}),
    ("post", "/api/v1/rollouts/1/abort", {"json": {}}),
]
ADMIN = [
    ("post", "/api/v1/models/tiny/versions/1/approval", {"json": {"state": "Approved"}}),
    ("post", "/api/v1/enrollment-tokens", {"json": {"device_id": "cam-9", "target": "x86_64"}}),
    ("post", "/api/v1/tokens", {"json": {"name": "evil", "scope": "admin"}}),
    ("delete", "/api/v1/tokens/operator", {}),
]
# (row id, method, path, request kwargs, token scope or None, expected status)
AUTH = (
    [(f"no-token-get-{p}", "get", p, {}, None, 401) for p in READ]
    + [(f"no-token-{m}-{p}", m, p, kw, None, 401) for m, p, kw in OPERATOR + ADMIN]
    + [(f"read-only-token-{m}-{p}", m, p, kw, "read-only", 403) for m, p, kw in OPERATOR + ADMIN]
    + [(f"operator-token-{m}-{p}", m, p, kw, "operator", 403) for m, p, kw in ADMIN]
)


@pytest.mark.parametrize("method, path, kwargs, scope, status", [r[1:] for r in AUTH], ids=[r[0] for r in AUTH])
def test_every_endpoint_needs_a_token_with_its_scope(api, method, path, kwargs, scope, status):
    r = getattr(api, method)(path, headers=h(api, scope) if scope else {}, **kwargs)
    assert r.status_code == status and r.json()["error"] and r.json()["fix"]


FORGED = [
    ("unknown-token", {"Authorization": "Bearer eft_forged"}, 403),
    ("basic-auth-scheme", {"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
    ("empty-bearer", {"Authorization": "Bearer "}, 401),
    ("token-in-cookie", {"Cookie": "token=x"}, 401),
]


@pytest.mark.parametrize("headers, status", [r[1:] for r in FORGED], ids=[r[0] for r in FORGED])
def test_forged_credentials_are_refused(api, headers, status):
    assert api.get("/api/v1/devices", headers=headers).status_code == status


def test_a_revoked_token_is_refused(api):
    made = api.post("/api/v1/tokens", json={"name": "gone", "scope": "admin"}, headers=h(api, "admin")).json()["token"]
    assert api.delete("/api/v1/tokens/gone", headers=h(api, "admin")).status_code == 200
    assert api.get("/api/v1/devices", headers={"Authorization": f"Bearer {made}"}).status_code == 403


@pytest.fixture
def build(api, fleet, tiny_packages):
    api.post("/api/v1/packages", content=tiny_packages["v1"].read_bytes(), headers=h(api, "operator"))
    api.post("/api/v1/packages", content=tiny_packages["v2"].read_bytes(), headers=h(api, "operator"))
    url = urlparse(fleet.download_url(1, "unused"))
    return url.path + "?" + url.query


DOWNLOAD = ["signature-for-another-build", "expired-link", "extended-expiry", "no-signature"]


@pytest.mark.parametrize("case", DOWNLOAD)
def test_download_links_cannot_be_forged(api, fleet, build, case):
    assert api.get(build).status_code == 200  # control: the real link works
    path, query = build.split("?")
    forged = {
        "signature-for-another-build": path.replace("/builds/1/", "/builds/2/") + "?" + query,
        "extended-expiry": path + "?" + query.replace("expires=", "expires=9"),
        "no-signature": path + "?" + query.split("&")[0],
    }.get(case)
    if case == "expired-link":
        fleet.clock.advance(fleet.config.download_ttl_s + 1)
        forged = build
    assert api.get(forged).status_code in (403, 422)


# ---- enrollment and reserved identities -------------------------------------------------------


def csr(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return req.public_bytes(serialization.Encoding.PEM).decode()


RESERVED = [
    "fleet",
    "FLEET",
    "fleet-observer-1",
    "edgefleet-fleet",
    "edgefleet",
    "localhost",
    "cam/1",
    "cam+",
    "#",
    "$SYS",
    "%u",
    "cam 1",
]


@pytest.mark.parametrize("device_id", RESERVED)
def test_reserved_or_unsafe_device_ids_cannot_be_enrolled(api, device_id):
    """Hole 5: neither a token nor an enrollment for an id that is the fleet's or breaks the ACL."""
    r = api.post(
        "/api/v1/enrollment-tokens", json={"device_id": device_id, "target": "x86_64"}, headers=h(api, "admin")
    )
    assert r.status_code == 400 and repr(device_id) in r.json()["error"]
    r = api.post("/api/v1/enroll", json={"token": "efe_x", "device_id": device_id, "csr": csr(device_id)})
    assert r.status_code == 400


def token_for(api, device_id: str) -> str:
    return api.post(
        "/api/v1/enrollment-tokens", json={"device_id": device_id, "target": "x86_64"}, headers=h(api, "admin")
    ).json()["token"]


def test_two_tokens_for_one_new_id_the_second_enroll_is_a_409(api):
    """Hole 6: was a 500 (IntegrityError)."""
    first, second = token_for(api, "cam-5"), token_for(api, "cam-5")
    assert (
        api.post("/api/v1/enroll", json={"token": first, "device_id": "cam-5", "csr": csr("cam-5")}).status_code == 200
    )
    r = api.post("/api/v1/enroll", json={"token": second, "device_id": "cam-5", "csr": csr("cam-5")})
    assert r.status_code == 409 and "already enrolled" in r.json()["error"]


ENROLL = [
    ("token-for-another-id", lambda t: {"token": t, "device_id": "cam-6", "csr": csr("cam-6")}, 403),
    ("csr-naming-another-device", lambda t: {"token": t, "device_id": "cam-5", "csr": csr("cam-1")}, 400),
    ("csr-naming-the-fleet", lambda t: {"token": t, "device_id": "cam-5", "csr": csr("fleet")}, 400),
    (
        "not-a-csr",
        lambda t: {
            "token": t,
            "device_id": "cam-5",
            "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----",
        },
        400,
    ),
    ("guessed-token", lambda t: {"token": "efe_" + "A" * 32, "device_id": "cam-5", "csr": csr("cam-5")}, 403),
    (
        "extra-field-to-pick-a-group",
        lambda t: {"token": t, "device_id": "cam-5", "csr": csr("cam-5"), "group": "admins"},
        422,
    ),
]


@pytest.mark.parametrize("body, status", [r[1:] for r in ENROLL], ids=[r[0] for r in ENROLL])
def test_enrollment_refuses_what_the_token_does_not_cover(api, body, status):
    token = token_for(api, "cam-5")
    assert api.post("/api/v1/enroll", json=body(token)).status_code == status
    assert (
        api.post("/api/v1/enroll", json={"token": token, "device_id": "cam-5", "csr": csr("cam-5")}).status_code == 200
    )  # still usable


def test_a_spent_or_expired_token_is_refused(api, fleet):
    token = token_for(api, "cam-5")
    assert (
        api.post("/api/v1/enroll", json={"token": token, "device_id": "cam-5", "csr": csr("cam-5")}).status_code == 200
    )
    assert (
        api.post("/api/v1/enroll", json={"token": token, "device_id": "cam-5", "csr": csr("cam-5")}).status_code == 403
    )
    late = token_for(api, "cam-7")
    fleet.clock.advance(fleet.config.enrollment_ttl_s + 1)
    assert (
        api.post("/api/v1/enroll", json={"token": late, "device_id": "cam-7", "csr": csr("cam-7")}).status_code == 403
    )


# ---- request size ---------------------------------------------------------------------------------

SIZES = [
    ("enroll-declared-150MiB", "post", "/api/v1/enroll", None, 150 * 1024**2),
    ("enroll-chunked-1MiB", "post", "/api/v1/enroll", None, None),
    ("rollout-body-2MiB", "post", "/api/v1/rollouts", "operator", 2 * 1024**2),
    ("token-body-2MiB-no-auth", "post", "/api/v1/tokens", None, 2 * 1024**2),
]


@pytest.mark.parametrize("method, path, scope, declared", [r[1:] for r in SIZES], ids=[r[0] for r in SIZES])
def test_bodies_over_the_endpoint_limit_are_refused_before_they_are_read(api, method, path, scope, declared):
    headers = (h(api, scope) if scope else {}) | {"Content-Type": "application/json"}
    if declared is None:  # chunked: no Content-Length, counted as it arrives
        r = api.request(method, path, headers=headers, content=(b"x" * 65536 for _ in range(16)))
    else:
        r = api.request(method, path, headers=headers | {"Content-Length": str(declared)}, content=b"{}")
    assert r.status_code == 413 and "limit" in r.json()["error"]


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_150MiB_unauthenticated_enroll_body_does_not_grow_the_real_fleet(tmp_path, edgefleet_home, tiny_packages):
    """Hole 7: was 323 -> 671 MiB. The body is really sent; the fleet answers 413 and reads none of it."""
    with fleet_process(tmp_path, edgefleet_home, tiny_packages["key"]) as (url, _, server, _env):
        before = rss_kib(server.pid)
        host, port = urlparse(url).hostname, urlparse(url).port
        with socket.create_connection((host, port)) as sock:
            head = "POST /api/v1/enroll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            sock.sendall(head.encode() + f"Content-Length: {150 * 1024**2}\r\n\r\n".encode())
            sent = 0
            sock.settimeout(10)
            try:
                while sent < 150 * 1024**2:
                    sent += sock.send(b"x" * (1 << 20))
            except OSError:
                pass  # the fleet answered and closed
            answer = sock.recv(200)
        time.sleep(0.2)
        after = rss_kib(server.pid)
    print(f"150 MiB enroll body: answered {answer[:12]!r}, fleet RSS {before // 1024} -> {after // 1024} MiB")
    assert answer.startswith(b"HTTP/1.1 413")
    assert after - before < 20 * 1024, f"RSS grew by {(after - before) // 1024} MiB"
