"""Signature checks without cryptography (edgefleet/ed25519.py): Python's own libcrypto, compared
with cryptography's verdict on the same signatures; public keys read and written without it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet import ed25519
from edgefleet.errors import SigningKeyError
from edgefleet.signing import load_public_key, public_path, public_pem, verify_signature

# The order of ed25519's base point: S + L is the same scalar, a malleated signature.
ORDER = 2**252 + 27742317777372353535851937790883648493


def cases(key) -> dict[str, tuple[bytes, bytes, bytes, bool]]:
    """(public, signature, data, valid) for each way a signature can be right or wrong."""
    data = b"manifest bytes"
    sig = key.sign(data)
    raw = key.public.raw
    malleated = sig[:32] + (int.from_bytes(sig[32:], "little") + ORDER).to_bytes(32, "little")
    return {
        "valid": (raw, sig, data, True),
        "empty data": (raw, key.sign(b""), b"", True),
        "data changed": (raw, sig, data + b" ", False),
        "signature bit flipped": (raw, sig[:10] + bytes([sig[10] ^ 1]) + sig[11:], data, False),
        "S not reduced (malleated)": (raw, malleated, data, False),
        "another key": (Ed25519PrivateKey.generate().public_key().public_bytes_raw(), sig, data, False),
        "key bit flipped": (bytes([raw[0] ^ 1]) + raw[1:], sig, data, False),
    }


def test_libcrypto_and_cryptography_agree_on_every_case(signing_key):
    lib = ed25519.libcrypto()
    assert lib is not None, "this Python's libcrypto is reachable through _hashlib"
    for name, (public, sig, data, valid) in cases(signing_key).items():
        assert ed25519.verify_with_libcrypto(lib, public, sig, data) is valid, name
        assert ed25519.verify_with_cryptography(public, sig, data) is valid, name
        assert ed25519.verify(public, sig, data) is valid, name


def test_a_python_without_reachable_openssl_symbols_falls_back_to_cryptography(signing_key, monkeypatch):
    monkeypatch.setattr(ed25519, "libcrypto", lambda: None)
    for name, (public, sig, data, valid) in cases(signing_key).items():
        assert ed25519.verify(public, sig, data) is valid, name


def test_wrong_lengths_are_refused_before_openssl(signing_key):
    sig = signing_key.sign(b"x")
    assert not ed25519.verify(signing_key.public.raw, sig[:63], b"x")
    assert not ed25519.verify(signing_key.public.raw[:31], sig, b"x")


def test_public_keys_round_trip_as_openssl_writes_them(signing_key):
    pem = signing_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public_pem(signing_key.public) == pem
    assert load_public_key(public_path(signing_key.path)) == signing_key.public
    assert verify_signature(b"d", signing_key.sign(b"d"), [load_public_key(public_path(signing_key.path))]) == (
        signing_key.key_id
    )


def test_other_keys_and_garbage_are_refused_by_name(tmp_path):
    ec = tmp_path / "ec.pub"
    ec.write_bytes(
        generate_private_key(SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SigningKeyError, match="is not an ed25519 public key"):
        load_public_key(ec)
    garbage = tmp_path / "g.pub"
    garbage.write_text("not a key\n")
    with pytest.raises(SigningKeyError, match="cannot read public key .*no PEM public key"):
        load_public_key(garbage)
    broken = tmp_path / "b.pub"
    broken.write_text("-----BEGIN PUBLIC KEY-----\nMCowBQ!!\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SigningKeyError, match="cannot read public key"):
        load_public_key(broken)
    with pytest.raises(SigningKeyError, match="cannot read public key"):
        load_public_key(tmp_path / "missing.pub")


def test_the_agent_verifies_packages_without_importing_cryptography(signing_key, tmp_path):
    """The long-running agent imports its run loop, loads keys and checks a signature: no cryptography."""
    data, sig = b"manifest", signing_key.sign(b"manifest")
    code = (
        "import sys\n"
        "import edgefleet.agent.run, edgefleet.agent.runtime\n"
        "from edgefleet.signing import load_public_key, verify_signature\n"
        f"print(verify_signature({data!r}, {sig!r}, [load_public_key({str(public_path(signing_key.path))!r})]))\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == [signing_key.key_id, "[]"]
