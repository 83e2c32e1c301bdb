"""Ed25519 signature checks through the OpenSSL library Python itself links (`_hashlib`'s libcrypto).

Why not `cryptography`: a camera's agent checks package and job signatures for as long as it
runs, and importing cryptography (its Rust extension carries a second OpenSSL) costs the process
~7 MB of resident memory; the libcrypto that hashlib and ssl already loaded costs nothing more.
The check is OpenSSL's own EVP_DigestVerify, the same one cryptography calls, so both accept and
refuse the same signatures (tests/test_ed25519.py compares them). Python >= 3.10 requires OpenSSL
>= 1.1.1, the first with raw ed25519 keys. A Python whose OpenSSL symbols are not reachable
(statically linked and hidden) falls back to cryptography.
"""

from __future__ import annotations

import ctypes
import functools

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_NID_ED25519 = 1087  # EVP_PKEY_ED25519: the same in OpenSSL 1.1.1 and 3.x

_SIGNATURES = {
    "EVP_PKEY_new_raw_public_key": (ctypes.c_void_p, [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]),
    "EVP_PKEY_free": (None, [ctypes.c_void_p]),
    "EVP_MD_CTX_new": (ctypes.c_void_p, []),
    "EVP_MD_CTX_free": (None, [ctypes.c_void_p]),
    "EVP_DigestVerifyInit": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p],
    ),
    "EVP_DigestVerify": (
        ctypes.c_int,
        [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t],
    ),
    "ERR_clear_error": (None, []),
}


@functools.cache
def libcrypto() -> ctypes.CDLL | None:
    """Python's libcrypto with the functions declared, or None when its symbols are not reachable."""
    try:
        import _hashlib

        lib = ctypes.CDLL(_hashlib.__file__)  # dlsym through a handle also searches its dependencies
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
    except (ImportError, AttributeError, OSError):
        return None
    return lib


def verify(public: bytes, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is the ed25519 signature of `data` by the raw 32-byte key `public`."""
    if len(public) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    lib = libcrypto()
    return (
        verify_with_cryptography(public, signature, data)
        if lib is None
        else verify_with_libcrypto(lib, public, signature, data)
    )


def verify_with_libcrypto(lib: ctypes.CDLL, public: bytes, signature: bytes, data: bytes) -> bool:
    key = lib.EVP_PKEY_new_raw_public_key(_NID_ED25519, None, public, len(public))
    if not key:
        lib.ERR_clear_error()
        return False
    ctx = lib.EVP_MD_CTX_new()
    try:
        if not ctx:
            raise MemoryError("OpenSSL could not allocate a digest context")
        ok: bool = lib.EVP_DigestVerifyInit(ctx, None, None, None, key) == 1 and (
            lib.EVP_DigestVerify(ctx, signature, len(signature), data, len(data)) == 1
        )
        if not ok:  # OpenSSL may queue an error; left there, the next ssl or hashlib call could report it
            lib.ERR_clear_error()
        return ok
    finally:
        lib.EVP_MD_CTX_free(ctx)
        lib.EVP_PKEY_free(key)


def verify_with_cryptography(public: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except InvalidSignature:
        return False
    return True
