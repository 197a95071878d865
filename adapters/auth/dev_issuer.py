"""The local development identity provider: mints bearer tokens the verifier trusts.

Only for local runs and tests (`settings.dev_issuer`). Its Ed25519 key lives in the state
directory so the API, CLI and test processes all mint and verify with the same key.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from adapters.auth.identifiers import is_valid_identifier
from adapters.auth.jwk import VerificationKey, jwk_thumbprint, public_jwk
from adapters.auth.secret_file import read_or_create_secret
from application.settings import Settings

KEY_FILE_NAME = "dev-issuer-key.pem"


def _new_key_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )


class DevIssuer:
    def __init__(self, private_key: Ed25519PrivateKey, *, issuer: str, audience: str) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.kid = jwk_thumbprint(self.public_key)
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def load_or_create(cls, settings: Settings) -> DevIssuer:
        path = Path(settings.state_dir) / KEY_FILE_NAME
        key = load_pem_private_key(read_or_create_secret(path, _new_key_pem), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise RuntimeError(f"{KEY_FILE_NAME} does not hold an Ed25519 private key")
        return cls(key, issuer=settings.jwt_issuer, audience=settings.jwt_audience)

    def mint(
        self,
        tenant_id: str,
        user_id: str,
        scope: str | None,
        ttl_seconds: int = 3600,
        now: float | None = None,
    ) -> str:
        """A signed user access token; `scope=None` leaves the claim out (full scopes)."""
        if not is_valid_identifier(tenant_id) or not is_valid_identifier(user_id):
            raise ValueError("tenant_id and user_id must be 1-200 chars without whitespace")
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        issued_at = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "tid": tenant_id,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        if scope is not None:
            claims["scope"] = scope
        return jwt.encode(
            claims,
            self._private_key,
            algorithm="EdDSA",
            headers={"typ": "JWT", "kid": self.kid},
        )

    def public_jwk(self) -> dict[str, str]:
        return {**public_jwk(self.public_key), "kid": self.kid, "alg": "EdDSA", "use": "sig"}

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [self.public_jwk()]}

    def verification_key(self) -> VerificationKey:
        return VerificationKey(kid=self.kid, key=self.public_key, algorithms=frozenset({"EdDSA"}))
