"""Ed25519 signing of bundle manifests. The private key lives 0600 under keys/."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from auditor.chain import sha256_hex
from auditor.errors import KeyFileError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_SIGNING_KEY = Path("keys/signing.key")


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.chmod(path, 0o600)


def load_or_create(path: Path | None = None) -> Ed25519PrivateKey:
    """The signing key at ``path`` (default keys/signing.key), created on first use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = DEFAULT_SIGNING_KEY if path is None else Path(path)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _write_private(path, pem)
        return key
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"signing key {path} is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(f"signing key {path} is readable by others "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, OSError):
        raise KeyFileError(f"signing key {path} cannot be loaded (not a PEM key)") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"signing key {path} is not an Ed25519 key")
    return loaded


def public_hex(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    return raw.hex()


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """Hex signature of ``data``."""
    return key.sign(data).hex()


def verify(public_key_hex: str, signature_hex: str, data: bytes) -> bool:
    """True only for a well-formed public key and a valid signature over ``data``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex.strip()))
        pub.verify(bytes.fromhex(signature_hex.strip()), data)
    except (ValueError, InvalidSignature):
        return False
    return True


def fingerprint(public_key_hex: str) -> str:
    """Short id of a public key for display and pinning."""
    return "ed25519:" + sha256_hex(public_key_hex.strip().lower())[:16]
