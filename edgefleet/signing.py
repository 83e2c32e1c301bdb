"""Ed25519 signing keys for model packages.

A signing key is a PEM (PKCS#8) private key file readable only by its owner; its public half
sits beside it as `<name>.pub` (PEM SubjectPublicKeyInfo). A key id is the first 16 hex
digits of the sha256 of the raw public key, so a manifest can say which key signed it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.errors import PackageIntegrityError, SigningKeyError

DEFAULT_KEY_DIR_ENV = "EDGEFLEET_HOME"


def edgefleet_home() -> Path:
    """Where keys and caches live: $EDGEFLEET_HOME, else ~/.edgefleet."""
    return Path(os.environ.get(DEFAULT_KEY_DIR_ENV) or Path.home() / ".edgefleet")


def default_signing_key_path() -> Path:
    """$EDGEFLEET_SIGNING_KEY if set, else ~/.edgefleet/keys/signing.key."""
    env = os.environ.get("EDGEFLEET_SIGNING_KEY")
    return Path(env) if env else edgefleet_home() / "keys" / "signing.key"


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

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
    path.parent.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path(path).write_bytes(public_pem(private.public_key()))
    return SigningKey(private, path)


def public_path(key_path: Path) -> Path:
    return Path(str(key_path) + ".pub")


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_signing_key(path: Path | None = None) -> SigningKey:
    """Load a signing key, with an error that says how to make one."""
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


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        public = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise SigningKeyError(
            f"cannot read public key {path}: {exc}", "pass a .pub file written by `edgefleet keys create`"
        ) from None
    if not isinstance(public, Ed25519PublicKey):
        raise SigningKeyError(
            f"{path} is not an ed25519 public key", "pass a .pub file written by `edgefleet keys create`"
        )
    return public


def verify_signature(data: bytes, signature: bytes, trusted: list[Ed25519PublicKey]) -> str:
    """Return the key id of the trusted key that signed `data`, or raise."""
    if not trusted:
        raise PackageIntegrityError(
            "no trusted public keys to check the signature against",
            "pass --trust KEY.pub (or put the fleet's key in ~/.edgefleet/trusted/)",
        )
    for public in trusted:
        try:
            public.verify(signature, data)
            return key_id(public)
        except InvalidSignature:
            continue
    raise PackageIntegrityError(
        "the manifest signature does not verify against any trusted key (tampered, or signed by an unknown key)",
        "rebuild the package with a trusted key, or add the signer's .pub to the trusted keys",
    )


def default_trusted_keys() -> list[Ed25519PublicKey]:
    """Keys in ~/.edgefleet/trusted/*.pub plus the local signing key's public half."""
    keys: list[Ed25519PublicKey] = []
    trusted_dir = edgefleet_home() / "trusted"
    if trusted_dir.is_dir():
        keys += [load_public_key(p) for p in sorted(trusted_dir.glob("*.pub"))]
    own = public_path(default_signing_key_path())
    if own.exists():
        keys.append(load_public_key(own))
    return keys
