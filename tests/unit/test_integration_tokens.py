"""Integration token verification against hostile tokens: every one is inactive (None),
none raises. The key and grant lookups are an in-memory stand-in for the PostgreSQL store."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from adapters.auth.errors import AuthenticationError
from adapters.auth.jwk import jwk_thumbprint, public_jwk
from adapters.integration.store import GrantStatus, PublicSigningKey
from adapters.integration.tokens import (
    TOKEN_TYPE,
    IntegrationTokenVerifier,
    TokenSigner,
    is_integration_token,
)

ISS, AUD = "https://live.example/integration", "embed"
NOW = 1_800_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Tenant:
    def __init__(self, tenant_id: str) -> None:
        self.tenant_id = tenant_id
        self.private = Ed25519PrivateKey.generate()
        self.kid = jwk_thumbprint(self.private.public_key())


class FakeStore:
    def __init__(self, *tenants: Tenant) -> None:
        self.keys = {
            t.kid: PublicSigningKey(kid=t.kid, tenant_id=t.tenant_id, key=t.private.public_key())
            for t in tenants
        }
        self.grants: dict[str, GrantStatus] = {}

    def public_key(self, kid: str) -> PublicSigningKey | None:
        return self.keys.get(kid)

    def grant_status(self, jti: str) -> GrantStatus | None:
        return self.grants.get(jti)

    async def grant_status_async(self, jti: str) -> GrantStatus | None:
        return self.grants.get(jti)

    def record(self, tenant: Tenant, jti: str, issued_at: int = NOW, **kw: Any) -> None:
        self.grants[jti] = GrantStatus(
            tenant_id=tenant.tenant_id, kid=tenant.kid,
            issued_at=datetime.fromtimestamp(issued_at, UTC),
            revoked=kw.get("revoked", False), revoked_before=kw.get("revoked_before"),
        )


def claims(tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    base = {
        "iss": ISS, "aud": AUD, "sub": "embed-user", "tid": tenant.tenant_id,
        "scope": "live:read live:write", "jti": "jti-0123456789abcdef",
        "iat": NOW, "nbf": NOW, "exp": NOW + 120,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def compact(header: dict[str, Any] | str, payload: dict[str, Any] | str,
            key: Ed25519PrivateKey | None) -> str:
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(h.encode())}.{b64(p.encode())}"
    signature = key.sign(signing_input.encode()) if key is not None else b""
    return f"{signing_input}.{b64(signature)}"


def header(tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    base = {"alg": "EdDSA", "typ": TOKEN_TYPE, "kid": tenant.kid}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.fixture
def acme() -> Tenant:
    return Tenant("acme")


@pytest.fixture
def globex() -> Tenant:
    return Tenant("globex")


@pytest.fixture
def store(acme: Tenant, globex: Tenant) -> FakeStore:
    s = FakeStore(acme, globex)
    s.record(acme, "jti-0123456789abcdef")
    return s


@pytest.fixture
def verifier(store: FakeStore) -> IntegrationTokenVerifier:
    return IntegrationTokenVerifier(store, issuer=ISS, audience=AUD)  # type: ignore[arg-type]


def good(acme: Tenant) -> str:
    return compact(header(acme), claims(acme), acme.private)


def test_a_good_token_verifies(verifier: IntegrationTokenVerifier, acme: Tenant) -> None:
    verified = verifier.verify(good(acme), "acme", now=NOW + 1)
    assert verified is not None
    assert verified.claims.sub == "embed-user" and verified.kid == acme.kid
    assert verified.scopes == {"live:read", "live:write"}
    assert is_integration_token(good(acme))


def test_the_signer_makes_tokens_the_verifier_accepts(
    verifier: IntegrationTokenVerifier, acme: Tenant
) -> None:
    class Vault:
        def private_key(self, kid: str) -> tuple[str, Ed25519PrivateKey]:
            assert kid == acme.kid
            return "acme", acme.private

    from domain.integration import TokenClaims

    c = TokenClaims(**claims(acme))
    token = TokenSigner(Vault()).sign(c, acme.kid)  # type: ignore[arg-type]
    assert verifier.verify(token, "acme", now=NOW + 1) is not None
    # Deterministic: the same claims sign to the same token (idempotent replays).
    assert TokenSigner(Vault()).sign(c, acme.kid) == token  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        TokenSigner(Vault()).sign(TokenClaims(**claims(acme, tid="globex")), acme.kid)  # type: ignore[arg-type]


def test_revocation_is_read_on_every_verify(
    verifier: IntegrationTokenVerifier, store: FakeStore, acme: Tenant
) -> None:
    token = good(acme)
    assert verifier.verify(token, "acme", now=NOW + 1) is not None
    store.record(acme, "jti-0123456789abcdef", revoked=True)
    assert verifier.verify(token, "acme", now=NOW + 1) is None
    store.record(acme, "jti-0123456789abcdef",
                 revoked_before=datetime.fromtimestamp(NOW + 1, UTC))
    assert verifier.verify(token, "acme", now=NOW + 1) is None
    store.record(acme, "jti-0123456789abcdef",
                 revoked_before=datetime.fromtimestamp(NOW, UTC))
    assert verifier.verify(token, "acme", now=NOW + 1) is not None  # issued at the cut-off
    del store.grants["jti-0123456789abcdef"]
    assert verifier.verify(token, "acme", now=NOW + 1) is None  # never granted


def test_another_tenant_cannot_verify_it(verifier: IntegrationTokenVerifier, acme: Tenant) -> None:
    assert verifier.verify(good(acme), "globex", now=NOW + 1) is None


def test_authenticate_gives_the_embed_principal_or_401(
    verifier: IntegrationTokenVerifier, acme: Tenant
) -> None:
    with pytest.raises(AuthenticationError):
        verifier.authenticate("junk")
    store = FakeStore(acme)
    now = int(time.time())
    store.record(acme, "jti-0123456789abcdef", issued_at=now)
    live = IntegrationTokenVerifier(store, issuer=ISS, audience=AUD)  # type: ignore[arg-type]
    token = compact(header(acme), claims(acme, iat=now, nbf=now, exp=now + 60), acme.private)
    principal = live.authenticate(token)
    assert (principal.tenant_id, principal.user_id, principal.credential) == (
        "acme", "embed-user", "integration"
    )
    assert principal.credential_id == "jti-0123456789abcdef"


def _hs256(acme: Tenant, secret: bytes) -> str:
    h = b64(json.dumps(header(acme, alg="HS256")).encode())
    p = b64(json.dumps(claims(acme)).encode())
    mac = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(mac)}"


def _hostile(acme: Tenant, globex: Tenant) -> dict[str, str]:
    attacker = Ed25519PrivateKey.generate()
    pub = acme.private.public_key()
    good_token = good(acme)
    h, p, s = good_token.split(".")
    tampered_payload = b64(json.dumps(claims(acme, sub="admin")).encode())
    flipped = s[:-2] + ("A" if s[-2] != "A" else "B") + s[-1]
    one_sig = {"protected": h, "signature": s}
    return {
        "alg none": compact(header(acme, alg="none"), claims(acme), None),
        "alg none, no kid": compact({"alg": "none", "typ": TOKEN_TYPE}, claims(acme), None),
        "HS256 with the raw public key": _hs256(
            acme, pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
        ),
        "HS256 with the PEM public key": _hs256(
            acme, pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        ),
        "HS256 with the JWK x": _hs256(acme, public_jwk(pub)["x"].encode()),
        "foreign tenant's key under its kid": compact(header(globex), claims(acme),
                                                      globex.private),
        "foreign tenant's key under our kid": compact(header(acme), claims(acme),
                                                      globex.private),
        "attacker key, unknown kid": compact(
            header(acme, kid=jwk_thumbprint(attacker.public_key())), claims(acme), attacker
        ),
        "kid not a thumbprint": compact(header(acme, kid="../../etc/passwd"), claims(acme),
                                        acme.private),
        "kid missing": compact(header(acme, kid=...), claims(acme), acme.private),
        "tampered payload": f"{h}.{tampered_payload}.{s}",
        "tampered signature": f"{h}.{p}.{flipped}",
        "signature stripped": f"{h}.{p}.",
        "expired": compact(header(acme), claims(acme, iat=NOW - 200, nbf=NOW - 200,
                                                exp=NOW - 80), acme.private),
        "not yet valid": compact(header(acme), claims(acme, iat=NOW + 60, nbf=NOW + 60,
                                                      exp=NOW + 180), acme.private),
        "nbf in the future": compact(header(acme), claims(acme, nbf=NOW + 60), acme.private),
        "wrong aud": compact(header(acme), claims(acme, aud="other"), acme.private),
        "aud list without ours": compact(header(acme), claims(acme, aud=["x", "y"]),
                                         acme.private),
        "wrong iss": compact(header(acme), claims(acme, iss="https://evil/"), acme.private),
        "typ JWT (a user token)": compact(header(acme, typ="JWT"), claims(acme), acme.private),
        "typ missing": compact(header(acme, typ=...), claims(acme), acme.private),
        "duplicate alg in header": compact(
            f'{{"alg":"EdDSA","typ":"{TOKEN_TYPE}","kid":"{acme.kid}","alg":"none"}}',
            claims(acme), acme.private,
        ),
        "duplicate claim in payload": compact(
            header(acme), json.dumps(claims(acme))[:-1] + ', "sub": "admin"}', acme.private
        ),
        "1 MB token": good_token + "A" * 1_000_000,
        "1 MB payload": compact(header(acme), claims(acme, pad="x" * 1_000_000), acme.private),
        "non-base64 header": "!!!." + p + "." + s,
        "non-base64 payload": h + ".%%%." + s,
        "padded base64": h + "=." + p + "." + s,
        "not JSON": b64(b"not json") + "." + p + "." + s,
        "header is a list": compact("[1,2]", claims(acme), acme.private),
        "JSON serialization, several signatures": json.dumps(
            {"payload": p, "signatures": [one_sig, {**one_sig, "protected": b64(b"{}")}]}
        ),
        "JSON serialization, flattened": json.dumps({"payload": p, **one_sig}),
        "four parts": good_token + ".AAAA",
        "embedded jwk": compact(
            header(acme, jwk={**public_jwk(attacker.public_key()), "kid": acme.kid}),
            claims(acme), attacker,
        ),
        "embedded jwk, signed by us": compact(
            header(acme, jwk=public_jwk(pub)), claims(acme), acme.private
        ),
        "jku": compact(header(acme, jku="https://evil/jwks"), claims(acme), acme.private),
        "x5u": compact(header(acme, x5u="https://evil/cert"), claims(acme), acme.private),
        "x5c": compact(header(acme, x5c=["AAAA"]), claims(acme), acme.private),
        "crit": compact(header(acme, crit=["exp"]), claims(acme), acme.private),
        "b64 false": compact(header(acme, b64=False), claims(acme), acme.private),
        "missing exp": compact(header(acme), claims(acme, exp=...), acme.private),
        "missing jti": compact(header(acme), claims(acme, jti=...), acme.private),
        "missing nbf": compact(header(acme), claims(acme, nbf=...), acme.private),
        "boolean iat": compact(header(acme), claims(acme, iat=True), acme.private),
        "float exp": compact(header(acme), claims(acme, exp=NOW + 120.5), acme.private),
        "lifetime over the maximum": compact(header(acme), claims(acme, exp=NOW + 86_400),
                                             acme.private),
        "scope beyond grantable": compact(
            header(acme), claims(acme, scope="live:read integration:manage"), acme.private
        ),
        "empty scope": compact(header(acme), claims(acme, scope=""), acme.private),
        "sub with whitespace": compact(header(acme), claims(acme, sub="a b"), acme.private),
        "tid missing": compact(header(acme), claims(acme, tid=...), acme.private),
        "empty string": "",
        "dots only": "..",
    }


def test_hostile_tokens_are_all_inactive(
    verifier: IntegrationTokenVerifier, acme: Tenant, globex: Tenant
) -> None:
    assert verifier.verify(good(acme), "acme", now=NOW + 1) is not None
    for name, token in _hostile(acme, globex).items():
        assert verifier.verify(token, "acme", now=NOW + 1) is None, name
        assert verifier.verify(token, None, now=NOW + 1) is None, name


@pytest.mark.parametrize("value", [None, 5, b"bytes", ["a.b.c"], {"t": 1}])
def test_non_string_tokens_are_inactive(verifier: IntegrationTokenVerifier, value: Any) -> None:
    assert verifier.verify(value, "acme") is None


def test_revoke_by_token_may_ignore_times_but_not_signature(
    verifier: IntegrationTokenVerifier, acme: Tenant, globex: Tenant
) -> None:
    expired = compact(header(acme), claims(acme, iat=NOW - 500, nbf=NOW - 500, exp=NOW - 400),
                      acme.private)
    assert verifier.check(expired, now=NOW) is None
    assert verifier.check(expired, now=NOW, times=False) is not None
    forged = compact(header(acme), claims(acme), globex.private)
    assert verifier.check(forged, now=NOW, times=False) is None


def test_expiry_has_no_leeway(verifier: IntegrationTokenVerifier, acme: Tenant) -> None:
    token = good(acme)
    assert verifier.verify(token, "acme", now=NOW + 119.9) is not None
    assert verifier.verify(token, "acme", now=NOW + 120) is None
    # A little skew on iat/nbf between hosts is tolerated, not more.
    assert verifier.verify(token, "acme", now=NOW - 4) is not None
    assert verifier.verify(token, "acme", now=NOW - 6) is None


def test_grant_status_cut_off_rule() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    status = GrantStatus(tenant_id="t", kid="k", issued_at=at, revoked=False,
                         revoked_before=at + timedelta(microseconds=1))
    assert not status.active
    assert GrantStatus(tenant_id="t", kid="k", issued_at=at, revoked=False,
                       revoked_before=at).active


# ---- the cache of checked signatures ---------------------------------------------------


def test_a_signature_is_checked_once_and_revocation_every_time(
    verifier: IntegrationTokenVerifier, store: FakeStore, acme: Tenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio
    import time

    import jwt

    decodes: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        decodes.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    now = int(time.time())
    token = compact(header(acme), claims(acme, iat=now, nbf=now, exp=now + 120), acme.private)
    assert verifier.verify(token, "acme") is not None
    assert asyncio.run(verifier.verify_async(token, "acme")) is not None
    assert verifier.verify(token, "acme") is not None and decodes == [token]
    # Revoked: refused at once, though its signature is remembered.
    store.record(acme, "jti-0123456789abcdef", issued_at=now, revoked=True)
    assert verifier.verify(token, "acme") is None
    assert asyncio.run(verifier.verify_async(token, "acme")) is None
    store.record(acme, "jti-0123456789abcdef", issued_at=now)
    # Expired: refused, remembered or not.
    monkeypatch.setattr(time, "time", lambda: now + 121)
    assert verifier.verify(token, "acme") is None
    assert verifier.check(token, times=False) is not None  # revoking by token still works
    # A tampered token is not the remembered one.
    monkeypatch.setattr(time, "time", lambda: now + 1)
    tampered = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    assert verifier.verify(tampered, "acme") is None
    assert verifier.verify(token, "globex") is None
