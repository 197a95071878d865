"""Signed chain digests: a small statement "up to position P the chain's head was H",
signed with an Ed25519 key kept in the state directory. Kept somewhere else (printed,
mailed, committed), a digest lets `audit verify --digest` prove later that history up to
P is unchanged, even if someone rewrote the whole chain consistently."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from pathlib import Path
from typing import Annotated

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from adapters.auth.secret_file import read_or_create_secret
from application.settings import Settings

KEY_FILE_NAME = "audit-digest-key.pem"
_PURPOSE = b"xentree-live chain digest v1\n"
# A digest is a line of ~250 bytes; reading more than this means the file is not one
# (and `--digest /dev/zero` must not read forever).
MAX_DIGEST_BYTES = 4096


class Digest(msgspec.Struct, frozen=True, kw_only=True):
    position: Annotated[int, msgspec.Meta(ge=0)]
    head: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]  # hex SHA-256
    time: datetime
    key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    signature: Annotated[str, msgspec.Meta(max_length=200)] = ""  # base64url

    def signed_bytes(self) -> bytes:
        return _PURPOSE + (
            f"{self.position}\n{self.head}\n{self.time.isoformat()}\n{self.key_id}".encode()
        )


class DigestError(ValueError):
    pass


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DigestSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    @classmethod
    def load_or_create(cls, settings: Settings) -> DigestSigner:
        pem = read_or_create_secret(
            Path(settings.state_dir) / KEY_FILE_NAME,
            lambda: Ed25519PrivateKey.generate().private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            ),
        )
        key = load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise DigestError(f"{KEY_FILE_NAME} does not hold an Ed25519 key")
        return cls(key)

    def sign(self, position: int, head: bytes, time: datetime) -> Digest:
        unsigned = Digest(position=position, head=head.hex(), time=time, key_id=self.key_id)
        return msgspec.structs.replace(
            unsigned, signature=_b64(self._key.sign(unsigned.signed_bytes()))
        )

    def check(self, digest: Digest) -> None:
        """Raise DigestError unless `digest` was signed by this key."""
        if digest.key_id != self.key_id:
            raise DigestError(f"digest was signed by key {digest.key_id}, not {self.key_id}")
        try:
            self._key.public_key().verify(_unb64(digest.signature), digest.signed_bytes())
        except (InvalidSignature, ValueError):
            raise DigestError("digest signature does not verify") from None


def load_digest(path: Path) -> Digest:
    """The digest `audit digest` wrote to `path`; DigestError for anything else."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_DIGEST_BYTES + 1)
    except OSError as exc:
        raise DigestError(f"cannot read digest {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_DIGEST_BYTES:
        raise DigestError(f"{path} is not a chain digest: over {MAX_DIGEST_BYTES} bytes")
    try:
        return msgspec.json.decode(raw, type=Digest)
    except msgspec.DecodeError as exc:
        raise DigestError(f"{path} is not a chain digest: {exc}") from None


def encode_digest(digest: Digest) -> bytes:
    return msgspec.json.encode(digest)
