"""Ed25519 signing keys for model packages.

A signing key is a PEM (PKCS#8) private key file readable only by its owner; its public half
sits beside it as `<name>.pub` (PEM SubjectPublicKeyInfo). A key id is the first 16 hex
digits of the sha256 of the raw public key, so a manifest can say which key signed it.

Public keys and signature checks need no `cryptography` (edgefleet/ed25519.py): a camera's agent
verifies packages all its life and would otherwise carry cryptography's ~7 MB in memory for it.
Making and loading private keys (the compiler, the fleet) uses cryptography.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet import ed25519
from edgefleet.errors import PackageIntegrityError, SigningKeyError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_KEY_DIR_ENV = "EDGEFLEET_HOME"


def edgefleet_home() -> Path:
    """Where keys and caches live: $EDGEFLEET_HOME, else ~/.edgefleet."""
    return Path(os.environ.get(DEFAULT_KEY_DIR_ENV) or Path.home() / ".edgefleet")


def default_signing_key_path() -> Path:
    """$EDGEFLEET_SIGNING_KEY if set, else ~/.edgefleet/keys/signing.key."""
    env = os.environ.get("EDGEFLEET_SIGNING_KEY")
    return Path(env) if env else edgefleet_home() / "keys" / "signing.key"


# DER of an ed25519 SubjectPublicKeyInfo (RFC 8410) before its 32 key bytes: the whole of what
# a .pub file holds besides the key.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----")


@dataclass(frozen=True)
class PublicKey:
    """An ed25519 public key: its 32 raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != ed25519.PUBLIC_KEY_BYTES:
            raise SigningKeyError(f"an ed25519 public key has 32 bytes, not {len(self.raw)}", "pass a complete key")

    def verify(self, signature: bytes, data: bytes) -> bool:
        return ed25519.verify(self.raw, signature, data)


def key_id(public_key: PublicKey) -> str:
    return hashlib.sha256(public_key.raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.private.public_key().public_bytes_raw())

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def create_signing_key(path: Path | None = None, *, overwrite: bool = False) -> SigningKey:
    """Create an ed25519 signing key at `path` (mode 0600) and its public key at `path`.pub."""
    path = Path(path) if path else default_signing_key_path()
    if path.exists() and not overwrite:
        raise SigningKeyError(
            f"a signing key already exists at {path}",
            "use it, pass another --out, or --overwrite to replace it (packages it signed stop verifying)",
        )
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.parent.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    key = SigningKey(private, path)
    public_path(path).write_bytes(public_pem(key.public))
    return key


def public_path(key_path: Path) -> Path:
    return Path(str(key_path) + ".pub")


def public_pem(public: PublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo, as OpenSSL writes it (one base64 line: the DER is 44 bytes)."""
    der = base64.b64encode(_SPKI_PREFIX + public.raw)
    return b"-----BEGIN PUBLIC KEY-----\n" + der + b"\n-----END PUBLIC KEY-----\n"


def load_signing_key(path: Path | None = None) -> SigningKey:
    """Load a signing key, with an error that says how to make one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path) if path else default_signing_key_path()
    if not path.exists():
        raise SigningKeyError(f"no signing key at {path}", "create one with `edgefleet keys create`")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"{path} is not a readable unencrypted PEM private key ({exc})",
            "pass the file `edgefleet keys create` wrote, or create a new one",
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{path} holds a {type(private).__name__.lstrip('_')}, not an ed25519 key",
            "create an ed25519 key with `edgefleet keys create`",
        )
    return SigningKey(private, path)


def load_public_key(path: Path) -> PublicKey:
    """An ed25519 public key from a PEM SubjectPublicKeyInfo file (what `edgefleet keys create` writes)."""
    fix = "pass a .pub file written by `edgefleet keys create`"
    try:
        found = _PEM.search(Path(path).read_bytes())
        if found is None:
            raise ValueError("no PEM public key in it")
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except (OSError, ValueError, binascii.Error) as exc:
        raise SigningKeyError(f"cannot read public key {path}: {exc}", fix) from None
    if len(der) != len(_SPKI_PREFIX) + ed25519.PUBLIC_KEY_BYTES or not der.startswith(_SPKI_PREFIX):
        raise SigningKeyError(f"{path} is not an ed25519 public key", fix)
    return PublicKey(der[len(_SPKI_PREFIX) :])


def verify_signature(data: bytes, signature: bytes, trusted: list[PublicKey]) -> str:
    """Return the key id of the trusted key that signed `data`, or raise."""
    if not trusted:
        raise PackageIntegrityError(
            "no trusted public keys to check the signature against",
            "pass --trust KEY.pub (or put the fleet's key in ~/.edgefleet/trusted/)",
        )
    for public in trusted:
        if public.verify(signature, data):
            return key_id(public)
    raise PackageIntegrityError(
        "the manifest signature does not verify against any trusted key (tampered, or signed by an unknown key)",
        "rebuild the package with a trusted key, or add the signer's .pub to the trusted keys",
    )


def default_trusted_keys() -> list[PublicKey]:
    """Keys in ~/.edgefleet/trusted/*.pub plus the local signing key's public half."""
    keys: list[PublicKey] = []
    trusted_dir = edgefleet_home() / "trusted"
    if trusted_dir.is_dir():
        keys += [load_public_key(p) for p in sorted(trusted_dir.glob("*.pub"))]
    own = public_path(default_signing_key_path())
    if own.exists():
        keys.append(load_public_key(own))
    return keys
