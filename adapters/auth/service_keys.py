"""Service keys: how trusted internal services (realtime bridge, transcript ingestion)
act for a user, with `X-Service-Key` and `X-On-Behalf-Of: <tenant_id>/<user_id>`."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from adapters.auth.base62 import random_string
from adapters.auth.errors import AuthenticationError
from adapters.auth.identifiers import is_valid_identifier
from adapters.auth.secret_file import read_or_create_secret
from application.principal import Principal
from application.settings import Settings

DEV_KEY_FILE_NAME = "service-key"
DEV_KEY_PREFIX = "xts_"
SERVICE_SCOPES: frozenset[str] = frozenset({"live:read", "live:write"})
_MAX_PRESENTED_LENGTH = 1024


def dev_service_key(settings: Settings) -> str:
    """The local-run service key, created in the state directory on first use."""
    path = Path(settings.state_dir) / DEV_KEY_FILE_NAME
    make = lambda: (DEV_KEY_PREFIX + random_string(40)).encode("ascii")  # noqa: E731
    return read_or_create_secret(path, make).decode("ascii").strip()


class ServiceKeyChecker:
    def __init__(self, settings: Settings) -> None:
        configured = [key for key in settings.service_keys if key]
        # No configured key means a local run: accept the state directory's dev key, so
        # the CLI and local services can authenticate without setup.
        keys = configured or [dev_service_key(settings)]
        # Compare HMACs under a per-process random key instead of the keys themselves:
        # equal-length digests make compare_digest's timing independent of the key
        # lengths, and the raw keys need not stay around in this object.
        self._mac_key = secrets.token_bytes(32)
        self._digests = tuple(self._digest(key) for key in keys)

    def _digest(self, key: str) -> bytes:
        return hmac.new(self._mac_key, key.encode("utf-8"), hashlib.sha256).digest()

    def check(self, presented: str) -> bool:
        if not presented or len(presented) > _MAX_PRESENTED_LENGTH:
            return False
        digest = self._digest(presented)
        matched = False
        for expected in self._digests:
            # No early exit: the time taken must not tell which (or whether a) key matched.
            matched |= hmac.compare_digest(digest, expected)
        return matched

    def authenticate(self, presented: str, on_behalf_of: str) -> Principal:
        """The principal for a service call, or AuthenticationError."""
        if not self.check(presented):
            raise AuthenticationError("invalid service key")
        tenant_id, user_id = parse_on_behalf_of(on_behalf_of)
        return service_principal(tenant_id, user_id)


def parse_on_behalf_of(header: str) -> tuple[str, str]:
    """`tenant/user` -> (tenant_id, user_id); exactly one slash, both parts valid ids."""
    parts = header.split("/")
    if len(parts) != 2 or not all(is_valid_identifier(part) for part in parts):
        raise AuthenticationError("invalid X-On-Behalf-Of header")
    return parts[0], parts[1]


def service_principal(tenant_id: str, user_id: str) -> Principal:
    return Principal(
        tenant_id=tenant_id,
        user_id=user_id,
        scopes=SERVICE_SCOPES,
        credential="service",
    )
