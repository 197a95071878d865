"""API keys the way GitHub makes them: recognisable, self-checking, stored only as a hash.

Shape: `xtl_` + 30 random base62 characters (~178 bits) + a 6-character base62 CRC32 of
those 30. The fixed prefix lets secret scanners (GitHub push protection, trufflehog) find
leaked keys; the checksum lets us refuse a mistyped or truncated key without touching the
database, and lets scanners tell real keys from lookalikes.

The key id is separate random text, not a slice of the secret: it is shown in listings,
audit events and logs, so it must reveal nothing about the secret. Keys are found by the
HMAC of the whole key, not by id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib
from pathlib import Path

from adapters.auth.base62 import encode_fixed, is_base62, random_string
from adapters.auth.scopes import AUDIT_READ, LIVE_READ, LIVE_WRITE
from adapters.auth.secret_file import read_or_create_secret
from application.settings import Settings
from domain.errors import InvalidValue, ScopeNotHeld

PREFIX = "xtl_"
BODY_LENGTH = 30
CHECKSUM_LENGTH = 6  # 62**6 > 2**32, so any CRC32 fits
KEY_LENGTH = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
KEY_ID_LENGTH = 12  # ~71 random bits: ids collide only by astronomical bad luck
PEPPER_FILE_NAME = "api-key-pepper"
# Server-to-server callers: the live API, and auditors' tools (a platform auditor's key
# reads every tenant's history).
KEY_SCOPES = frozenset({LIVE_READ, LIVE_WRITE, AUDIT_READ})
MAX_NAME_LENGTH = 100


def _checksum(body: str) -> str:
    return encode_fixed(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_api_key() -> tuple[str, str]:
    """A new (key_id, secret_key). Show the secret once; store only `hash_api_key`."""
    body = random_string(BODY_LENGTH)
    return random_string(KEY_ID_LENGTH), PREFIX + body + _checksum(body)


def has_valid_shape(key: str) -> bool:
    """Prefix, length, alphabet and checksum are right (says nothing about validity)."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        return False
    rest = key[len(PREFIX) :]
    if not is_base62(rest):
        return False
    body, checksum = rest[:BODY_LENGTH], rest[BODY_LENGTH:]
    # Not secret-dependent timing in any useful sense: the checksum is a public function
    # of the body, but compare_digest costs nothing and keeps the habit.
    return hmac.compare_digest(checksum, _checksum(body))


def check_key_request(scopes: frozenset[str], creator_scopes: frozenset[str], name: str) -> None:
    """What a new key may hold, whoever issues it (the API or the operator CLI)."""
    if not scopes:
        raise InvalidValue("scopes", "an API key needs at least one scope")
    if not scopes <= KEY_SCOPES:
        raise InvalidValue("scopes", "API keys may hold only live:read, live:write and audit:read")
    if not scopes <= creator_scopes:
        raise ScopeNotHeld(min(scopes - creator_scopes))
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidValue("name", f"must be at most {MAX_NAME_LENGTH} characters")
    if not name.isprintable():
        raise InvalidValue("name", "must be printable text")


def hash_api_key(key: str, pepper: bytes) -> str:
    """HMAC-SHA256(pepper, key) in hex: what is stored and looked up.

    A plain fast hash suffices because the key has ~178 random bits (nothing to brute
    force); the pepper means a leaked database alone cannot even confirm a guessed key.
    """
    return hmac.new(pepper, key.encode("utf-8"), hashlib.sha256).hexdigest()


def keys_match(a_hash: str, b_hash: str) -> bool:
    return hmac.compare_digest(a_hash.encode("ascii"), b_hash.encode("ascii"))


def load_pepper(settings: Settings) -> bytes:
    """The configured pepper, else one generated once into the state directory.

    The file holds 64 hex characters and the pepper is those characters' bytes, exactly
    as a configured XENTREE_API_KEY_PEPPER would be: copying the file's contents into the
    environment keeps every stored hash valid.
    """
    if settings.api_key_pepper:
        return settings.api_key_pepper.encode("utf-8")
    path = Path(settings.state_dir) / PEPPER_FILE_NAME
    return read_or_create_secret(path, lambda: secrets.token_hex(32).encode("ascii")).strip()
