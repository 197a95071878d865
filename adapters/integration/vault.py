"""Signing keys' private halves, sealed at rest with AES-256-GCM under the master key.

The master key comes from `XENTREE_MASTER_KEY` (32 bytes as base64url or 64 hex digits) or,
for local runs, from a key file created once in the state directory. Each sealed key is
bound to its tenant and kid as associated data, so a sealed blob copied onto another row
does not open. Private keys never leave this module except as key objects for signing.
"""

from __future__ import annotations

import binascii
import secrets
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from adapters.auth.jwk import b64url_decode, jwk_thumbprint, public_jwk
from adapters.auth.secret_file import read_or_create_secret
from application.integration import GeneratedKey
from application.settings import Settings

MASTER_KEY_FILE_NAME = "master-key"
_SEAL_VERSION = b"\x01"
_NONCE_BYTES = 12

Connect = Callable[[], AbstractContextManager[Any]]


class SealedKeyError(Exception):
    """A sealed key did not open: wrong master key, or the row was tampered with."""


def parse_master_key(text: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text) if len(text) == 64 else b64url_decode(text.rstrip("="))
    except (ValueError, binascii.Error):
        raise ValueError("XENTREE_MASTER_KEY must be 32 bytes as hex or base64url") from None
    if len(key) != 32:
        raise ValueError("XENTREE_MASTER_KEY must be 32 bytes as hex or base64url")
    return key


def load_master_key(settings: Settings) -> bytes:
    if settings.master_key:
        return parse_master_key(settings.master_key)
    path = Path(settings.state_dir) / MASTER_KEY_FILE_NAME
    raw = read_or_create_secret(path, lambda: secrets.token_hex(32).encode("ascii"))
    return parse_master_key(raw.decode("ascii"))


def _aad(tenant_id: str, kid: str) -> bytes:
    return b"xentree-signing-key\x00" + tenant_id.encode() + b"\x00" + kid.encode()


def seal(master_key: bytes, tenant_id: str, kid: str, private_key: Ed25519PrivateKey) -> bytes:
    raw = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return _SEAL_VERSION + nonce + AESGCM(master_key).encrypt(nonce, raw, _aad(tenant_id, kid))


def unseal(master_key: bytes, tenant_id: str, kid: str, sealed: bytes) -> Ed25519PrivateKey:
    if len(sealed) < 1 + _NONCE_BYTES or sealed[:1] != _SEAL_VERSION:
        raise SealedKeyError(f"sealed key {kid} has an unknown format")
    nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
    try:
        raw = AESGCM(master_key).decrypt(nonce, ciphertext, _aad(tenant_id, kid))
    except InvalidTag:
        raise SealedKeyError(f"sealed key {kid} does not open with this master key") from None
    return Ed25519PrivateKey.from_private_bytes(raw)


class SealedKeyVault:
    """The application's `KeyVault`, plus private-key lookup for the token signer."""

    def __init__(self, master_key: bytes, connect: Connect) -> None:
        self._master_key = master_key
        self._connect = connect
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, Ed25519PrivateKey]] = {}

    def generate(self, tenant_id: str) -> GeneratedKey:
        """A new Ed25519 key; its sealed private half is stored before this returns, so
        the key's Created event can never name a private key that is not there. A key
        whose event then loses a write race stays unused."""
        private_key = Ed25519PrivateKey.generate()
        public_key = private_key.public_key()
        kid = jwk_thumbprint(public_key)
        sealed = seal(self._master_key, tenant_id, kid, private_key)
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO signing_keys_private (kid, tenant_id, sealed) VALUES (%s, %s, %s)",
                (kid, tenant_id, sealed),
            )
        with self._lock:
            self._keys[kid] = (tenant_id, private_key)
        return GeneratedKey(kid=kid, public_jwk=public_jwk(public_key))

    def private_key(self, kid: str) -> tuple[str, Ed25519PrivateKey]:
        """(tenant_id, private key) of `kid`; KeyError if there is no such key."""
        with self._lock:
            found = self._keys.get(kid)
        if found is not None:
            return found
        with self._connect() as conn:
            row = conn.execute(
                "SELECT tenant_id, sealed FROM signing_keys_private WHERE kid = %s", (kid,)
            ).fetchone()
        if row is None:
            raise KeyError(kid)
        opened = (row["tenant_id"], unseal(self._master_key, row["tenant_id"], kid,
                                           bytes(row["sealed"])))
        with self._lock:
            self._keys[kid] = opened
        return opened
