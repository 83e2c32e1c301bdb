"""`fleet serve` over HTTPS: the certificate `fleet server-cert` issues, and the config's TLS pair
refused with a specific reason (a missing file, a key of another certificate, not PEM).
The end-to-end run over TLS (agent, mosquitto, `fleet serve`) is in tests/agent/test_alert_events_e2e.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from support.cli import run_cli


def config_text(tmp_path: Path, cert: Path, key: Path, public_url: str = "https://fleet.lan:8443") -> str:
    return (
        f'format_version = 1\ndata_dir = "{tmp_path / "data"}"\npublic_url = "{public_url}"\n'
        f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
    )


@pytest.fixture
def issued(tmp_path: Path, capsys) -> Path:
    """A config naming tls/server.pem and tls/server.key, which `fleet server-cert` then wrote."""
    tls = tmp_path / "tls"
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(config_text(tmp_path, tls / "server.pem", tls / "server.key"))
    result = run_cli(
        capsys, "fleet", "server-cert", "--config", cfg, "--host", "fleet.lan", "--host", "10.0.0.5", "--out", tls
    )
    assert result.code == 0 and "fleet.lan, 10.0.0.5" in result.out, result.text
    return cfg


def test_server_cert_is_a_server_certificate_from_the_fleet_ca_for_each_host(tmp_path: Path, issued: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from edgefleet.fleet.config import load_config
    from edgefleet.fleet.tls import uvicorn_tls_options

    tls = tmp_path / "tls"
    ca = x509.load_pem_x509_certificate((tmp_path / "data" / "ca" / "ca.crt").read_bytes())
    assert (tls / "ca.pem").read_bytes() == (tmp_path / "data" / "ca" / "ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate((tls / "server.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fleet.lan"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert (tls / "server.key").stat().st_mode & 0o077 == 0
    assert uvicorn_tls_options(load_config(issued)) == {
        "ssl_certfile": str(tls / "server.pem"),
        "ssl_keyfile": str(tls / "server.key"),
    }
    # A client trusting ca.pem accepts it for the names it was issued for (Python's own check).
    client = ssl.create_default_context(cafile=str(tls / "ca.pem"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(tls / "server.pem"), str(tls / "server.key"))
    assert handshake(client, server, "fleet.lan") is None
    assert "Hostname mismatch" in str(handshake(client, server, "other.lan"))


def handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> ssl.SSLError | None:
    """A TLS handshake in memory; the client's error, or None when it verified the server."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for side, out, into in ((c, c_out, s_in), (s, s_out, c_in)):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                if side is c:
                    return exc
            into.write(out.read())
        if done == 2:
            return None
    raise AssertionError("the handshake did not finish")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing-cert", "tls_cert_file {tls}/nope.pem: cannot read it (No such file or directory)"),
        ("other-key", "tls_key_file {tls}/other.key is not the key of tls_cert_file {tls}/server.pem"),
        ("cert-as-key", "not a PEM certificate and its unencrypted PEM key"),
    ],
)
def test_serve_names_the_tls_file_it_cannot_use(tmp_path: Path, issued: Path, case: str, expected: str) -> None:
    from edgefleet.errors import UsageError
    from edgefleet.fleet.ca import CertificateAuthority, write_private
    from edgefleet.fleet.config import load_config
    from edgefleet.fleet.tls import uvicorn_tls_options

    tls = tmp_path / "tls"
    key, _ = CertificateAuthority.load_or_create(tmp_path / "data" / "ca").issue_key_and_cert("x", server_names=["x"])
    write_private(tls / "other.key", key)
    cert, key_file = {
        "missing-cert": (tls / "nope.pem", tls / "server.key"),
        "other-key": (tls / "server.pem", tls / "other.key"),
        "cert-as-key": (tls / "server.pem", tls / "server.pem"),
    }[case]
    issued.write_text(config_text(tmp_path, cert, key_file))
    with pytest.raises(UsageError, match="fleet config") as refused:
        uvicorn_tls_options(load_config(issued))
    assert expected.format(tls=tls) in str(refused.value)


@pytest.mark.parametrize(
    "keys, expected",
    [
        ('tls_cert_file = "/c.pem"\n', "tls_cert_file and tls_key_file go together"),
        (
            'tls_cert_file = "/c.pem"\ntls_key_file = "/k.pem"\npublic_url = "http://fleet.lan:8080"\n',
            "public_url 'http://fleet.lan:8080' must be https:// when the fleet serves HTTPS",
        ),
        ('tls_client_ca = "/ca.pem"\n', "tls_client_ca: Extra inputs are not permitted"),
    ],
)
def test_the_config_refuses_an_incomplete_or_inconsistent_tls_setup(tmp_path: Path, keys: str, expected: str) -> None:
    from edgefleet.errors import UsageError
    from edgefleet.fleet.config import load_config

    cfg = tmp_path / "fleet.toml"
    cfg.write_text("format_version = 1\n" + keys)
    with pytest.raises(UsageError, match="fleet config") as refused:
        load_config(cfg)
    assert expected in str(refused.value)
