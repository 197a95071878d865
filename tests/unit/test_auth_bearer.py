"""Bearer token verification: the happy path and every hostile token we can think of."""

from __future__ import annotations

import base64
import hmac
import json
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from adapters.auth.bearer import BearerVerifier
from adapters.auth.dev_issuer import KEY_FILE_NAME, DevIssuer
from adapters.auth.errors import AuthenticationError, InsufficientScope, KeysUnavailable
from adapters.auth.jwk import jwk_thumbprint, key_from_jwk, public_jwk
from adapters.auth.key_sources import JwksUrlKeys
from adapters.auth.scopes import KNOWN_SCOPES, parse_scope, require_scope
from application.principal import ALL_USER_SCOPES, Principal
from application.settings import Settings

Signer = Callable[[bytes], bytes]
GENERIC_DETAILS = {"invalid token", "token expired"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hmac_signer(secret: bytes, digest: str) -> Signer:
    return lambda data: hmac.new(secret, data, digest).digest()


def craft(header: dict[str, Any] | str, payload: dict[str, Any] | str, sign: Signer) -> str:
    """A compact JWS built by hand, so tests control every byte (raw JSON strings allowed)."""
    raw_header = header if isinstance(header, str) else json.dumps(header)
    raw_payload = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(raw_header.encode())}.{b64(raw_payload.encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode('ascii')))}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=str(tmp_path))


@pytest.fixture
def issuer(settings: Settings) -> DevIssuer:
    return DevIssuer.load_or_create(settings)


@pytest.fixture
def verifier(settings: Settings, issuer: DevIssuer) -> BearerVerifier:
    return BearerVerifier.from_settings(settings)


@pytest.fixture
def dev_sign(settings: Settings, issuer: DevIssuer) -> Signer:
    key = load_pem_private_key((settings.state_path / KEY_FILE_NAME).read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.sign


def claims(settings: Settings, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": "u1",
        "tid": "t1",
        "scope": "live:read",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def header(issuer: DevIssuer, **overrides: Any) -> dict[str, Any]:
    return {"alg": "EdDSA", "typ": "JWT", "kid": issuer.kid, **overrides}


def rejected(verifier: BearerVerifier, token: str, now: float | None = None) -> str:
    with pytest.raises(AuthenticationError) as info:
        verifier.verify(token, now=now)
    assert info.value.detail in GENERIC_DETAILS
    return info.value.detail


# --- the happy path ----------------------------------------------------------------------


def test_dev_token_verifies_to_its_principal(issuer: DevIssuer, verifier: BearerVerifier) -> None:
    token = issuer.mint("tenant-1", "user-1", "live:read integration:manage")
    principal = verifier.verify(token)
    assert principal.tenant_id == "tenant-1"
    assert principal.user_id == "user-1"
    assert principal.scopes == frozenset({"live:read", "integration:manage"})
    assert isinstance(principal.scopes, frozenset)
    assert principal.credential == "bearer"
    assert principal.credential_id is not None


def test_absent_scope_means_full_user_scopes(issuer: DevIssuer, verifier: BearerVerifier) -> None:
    principal = verifier.verify(issuer.mint("t1", "u1", None))
    assert principal.scopes == ALL_USER_SCOPES


def test_empty_scope_means_no_scopes(issuer: DevIssuer, verifier: BearerVerifier) -> None:
    assert verifier.verify(issuer.mint("t1", "u1", "")).scopes == frozenset()


def test_foreign_scopes_are_dropped(issuer: DevIssuer, verifier: BearerVerifier) -> None:
    principal = verifier.verify(issuer.mint("t1", "u1", "openid live:write profile"))
    assert principal.scopes == frozenset({"live:write"})


def test_dev_token_header_and_claims(issuer: DevIssuer, settings: Settings) -> None:
    token = issuer.mint("t1", "u1", None, ttl_seconds=60, now=1_700_000_000)
    head, body, _ = token.split(".")
    h = json.loads(unb64(head))
    c = json.loads(unb64(body))
    assert h == {"alg": "EdDSA", "typ": "JWT", "kid": issuer.kid}
    assert c["iss"] == settings.jwt_issuer and c["aud"] == settings.jwt_audience
    assert (c["iat"], c["nbf"], c["exp"]) == (1_700_000_000, 1_700_000_000, 1_700_000_060)
    assert "scope" not in c and c["jti"]


def test_clock_leeway_is_honoured(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    now = int(time.time())
    token = craft(header(issuer), claims(settings, exp=now - 10, iat=now - 100), dev_sign)
    assert verifier.verify(token).user_id == "u1"


def test_injected_now_drives_the_time_checks(issuer: DevIssuer, verifier: BearerVerifier) -> None:
    token = issuer.mint("t1", "u1", None, ttl_seconds=60, now=1_000_000)
    assert verifier.verify(token, now=1_000_030).tenant_id == "t1"
    assert rejected(verifier, token, now=1_000_000 + 60 + 31) == "token expired"
    assert rejected(verifier, token, now=1_000_000 - 100) == "invalid token"  # iat ahead


# --- algorithm attacks -------------------------------------------------------------------


@pytest.mark.parametrize("signature", [b"", b"whatever"])
def test_alg_none_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, signature: bytes
) -> None:
    for alg in ("none", "None", "NONE"):
        token = craft(header(issuer, alg=alg), claims(settings), lambda _: signature)
        rejected(verifier, token)
        rejected(verifier, token.rsplit(".", 1)[0] + ".")


def test_hs256_with_the_public_key_as_secret_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier
) -> None:
    raw = issuer.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem = issuer.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    for secret in (raw, pem, json.dumps(issuer.public_jwk()).encode()):
        for alg, digest in (("HS256", "sha256"), ("HS512", "sha512")):
            token = craft(header(issuer, alg=alg), claims(settings), hmac_signer(secret, digest))
            rejected(verifier, token)


def test_alg_that_does_not_fit_the_key_type_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    for alg in ("ES256", "RS256", "PS256", "Ed25519", "ES256K"):
        rejected(verifier, craft(header(issuer, alg=alg), claims(settings), dev_sign))


# --- claims ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "https://evil.example/"},
        {"iss": None},
        {"aud": "someone-else"},
        {"aud": None},
        {"aud": ["someone-else", "another"]},
        {"sub": None},
        {"sub": ""},
        {"sub": "x" * 201},
        {"sub": 42},
        {"sub": "u 1"},
        {"tid": None},
        {"tid": ""},
        {"tid": "t\n1"},
        {"tid": "x" * 201},
        {"iat": None},
        {"iat": "now"},
        {"exp": True},
        {"exp": "tomorrow"},
        {"scope": ["live:read"]},
        {"scope": "live:read  live:write"},
        {"scope": "live:read\tlive:write"},
    ],
    ids=repr,
)
def test_bad_claims_are_rejected(
    settings: Settings,
    issuer: DevIssuer,
    verifier: BearerVerifier,
    dev_sign: Signer,
    overrides: dict[str, Any],
) -> None:
    rejected(verifier, craft(header(issuer), claims(settings, **overrides), dev_sign))


def test_audience_list_containing_ours_is_accepted(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    token = craft(header(issuer), claims(settings, aud=["x", settings.jwt_audience]), dev_sign)
    assert verifier.verify(token).user_id == "u1"


def test_missing_exp_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    rejected(verifier, craft(header(issuer), claims(settings, exp=None), dev_sign))


def test_expired_beyond_leeway_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    now = int(time.time())
    token = craft(
        header(issuer), claims(settings, iat=now - 3600, nbf=now - 3600, exp=now - 31), dev_sign
    )
    assert rejected(verifier, token) == "token expired"


def test_nbf_in_the_future_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    now = int(time.time())
    rejected(verifier, craft(header(issuer), claims(settings, nbf=now + 120), dev_sign))


def test_iat_in_the_future_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    now = int(time.time())
    token = craft(header(issuer), claims(settings, iat=now + 120, exp=now + 600), dev_sign)
    rejected(verifier, token)


# --- keys and signatures -----------------------------------------------------------------


def test_another_key_with_the_same_kid_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier
) -> None:
    impostor = Ed25519PrivateKey.generate()
    rejected(verifier, craft(header(issuer), claims(settings), impostor.sign))


def test_unknown_kid_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    rejected(verifier, craft(header(issuer, kid="other"), claims(settings), dev_sign))


def test_tampered_payload_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    head, _, sig = craft(header(issuer), claims(settings), dev_sign).split(".")
    forged = b64(json.dumps(claims(settings, tid="victim-tenant")).encode())
    rejected(verifier, f"{head}.{forged}.{sig}")


def test_tampered_signature_is_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    head, body, sig = craft(header(issuer), claims(settings), dev_sign).split(".")
    raw = bytearray(unb64(sig))
    raw[5] ^= 0x01
    rejected(verifier, f"{head}.{body}.{b64(bytes(raw))}")
    rejected(verifier, f"{head}.{body}.{b64(bytes(raw[:-1]))}")


def test_duplicate_keys_in_header_are_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    raw = f'{{"alg":"EdDSA","typ":"JWT","kid":"{issuer.kid}","kid":"{issuer.kid}"}}'
    rejected(verifier, craft(raw, claims(settings), dev_sign))
    raw = f'{{"alg":"none","alg":"EdDSA","kid":"{issuer.kid}"}}'
    rejected(verifier, craft(raw, claims(settings), dev_sign))


def test_duplicate_claims_are_rejected(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    body = json.dumps(claims(settings))[:-1] + ', "tid": "other-tenant"}'
    rejected(verifier, craft(header(issuer), body, dev_sign))


@pytest.mark.parametrize(
    "extra",
    [
        {"jku": "https://evil.example/jwks.json"},
        {"x5u": "https://evil.example/cert.pem"},
        {"x5c": ["MIIB"]},
        {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}},
        {"crit": ["exp"]},
        {"b64": False, "crit": ["b64"]},
        {"b64": True},
        {"typ": "integration+jwt"},
        {"typ": 1},
        {"kid": 7},
        {"kid": ""},
    ],
    ids=repr,
)
def test_dangerous_headers_are_rejected(
    settings: Settings,
    issuer: DevIssuer,
    verifier: BearerVerifier,
    dev_sign: Signer,
    extra: dict[str, Any],
) -> None:
    rejected(verifier, craft(header(issuer, **extra), claims(settings), dev_sign))


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/at+jwt", None])
def test_access_token_types_are_accepted(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer, typ: Any
) -> None:
    head = {k: v for k, v in header(issuer, typ=typ).items() if v is not None}
    assert verifier.verify(craft(head, claims(settings), dev_sign)).tenant_id == "t1"


# --- malformed tokens --------------------------------------------------------------------


def test_huge_token_is_rejected_before_decoding(
    settings: Settings, issuer: DevIssuer, verifier: BearerVerifier, dev_sign: Signer
) -> None:
    padded = claims(settings, filler="x" * (1024 * 1024))
    rejected(verifier, craft(header(issuer), padded, dev_sign))
    rejected(verifier, "a" * (1024 * 1024))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "..",
        "a..c",
        "!!!.***.$$$",
        "eyJhbGciOiJFZERTQSJ9.e30=.c2ln",
        "eyJhbGciOiJFZERTQSJ9.e30.c2ln ",
        "eyJ hbGc.e30.c2ln",
        "éé.e30.c2ln",
        "bm90IGpzb24.e30.c2ln",  # header is not JSON
        "WzFd.e30.c2ln",  # header is a JSON array
        "A.e30.c2ln",  # impossible base64 length
    ],
)
def test_malformed_tokens_are_rejected(verifier: BearerVerifier, token: str) -> None:
    rejected(verifier, token)


def test_two_and_four_part_versions_of_a_good_token_are_rejected(
    issuer: DevIssuer, verifier: BearerVerifier
) -> None:
    token = issuer.mint("t1", "u1", None)
    head, body, sig = token.split(".")
    rejected(verifier, f"{head}.{body}")
    rejected(verifier, f"{token}.{sig}")
    rejected(verifier, f"{head}.{body}.{sig}.")


# --- JWKS file key source ----------------------------------------------------------------


def _rsa_jwks(tmp_path: Path, key: rsa.RSAPrivateKey, **members: str) -> Path:
    jwk = {**public_jwk(key.public_key()), "kid": "rsa-1", **members}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return path


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _rsa_signer(key: rsa.RSAPrivateKey, alg: str) -> Signer:
    if alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return lambda data: key.sign(data, pss, hashes.SHA256())
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def test_jwks_file_rsa_key_verifies_rs256_and_ps256(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = Settings(
        state_dir=str(tmp_path), dev_issuer=False, jwks_file=str(_rsa_jwks(tmp_path, rsa_key))
    )
    verifier = BearerVerifier.from_settings(settings)
    for alg in ("RS256", "PS256"):
        head = {"alg": alg, "typ": "JWT", "kid": "rsa-1"}
        principal = verifier.verify(craft(head, claims(settings), _rsa_signer(rsa_key, alg)))
        assert (principal.tenant_id, principal.user_id) == ("t1", "u1")


def test_jwks_file_rsa_key_refuses_a_token_claiming_es256(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = Settings(
        state_dir=str(tmp_path), dev_issuer=False, jwks_file=str(_rsa_jwks(tmp_path, rsa_key))
    )
    verifier = BearerVerifier.from_settings(settings)
    for alg in ("ES256", "EdDSA", "HS256", "RS384", "RS512"):
        head = {"alg": alg, "typ": "JWT", "kid": "rsa-1"}
        rejected(verifier, craft(head, claims(settings), _rsa_signer(rsa_key, "RS256")))
    # An EC key's real ES256 signature under the RSA key's kid fails as well.
    ec_key = ec.generate_private_key(ec.SECP256R1())
    head = {"alg": "ES256", "typ": "JWT", "kid": "rsa-1"}
    rejected(
        verifier, craft(head, claims(settings), lambda d: ec_key.sign(d, ec.ECDSA(hashes.SHA256())))
    )


def test_jwk_alg_member_narrows_the_allowlist(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = _rsa_jwks(tmp_path, rsa_key, alg="PS256")
    settings = Settings(state_dir=str(tmp_path), dev_issuer=False, jwks_file=str(path))
    verifier = BearerVerifier.from_settings(settings)
    head = {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}
    rejected(verifier, craft(head, claims(settings), _rsa_signer(rsa_key, "RS256")))


def test_short_rsa_keys_and_private_jwks_are_refused(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point
    with pytest.raises(ValueError):
        key_from_jwk(public_jwk(weak.public_key()))
    with pytest.raises(ValueError):
        key_from_jwk({**public_jwk(weak.public_key()), "d": "AQAB"})
    with pytest.raises(ValueError):
        key_from_jwk({"kty": "oct", "k": "c2VjcmV0"})
    settings = Settings(
        state_dir=str(tmp_path), dev_issuer=False, jwks_file=str(_rsa_jwks(tmp_path, weak))
    )
    with pytest.raises(ValueError):
        BearerVerifier.from_settings(settings)


def test_kid_is_required_when_several_keys_are_trusted(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = Settings(state_dir=str(tmp_path), jwks_file=str(_rsa_jwks(tmp_path, rsa_key)))
    verifier = BearerVerifier.from_settings(settings)  # dev key + RSA key
    token = craft({"alg": "RS256", "typ": "JWT"}, claims(settings), _rsa_signer(rsa_key, "RS256"))
    rejected(verifier, token)


def test_single_key_without_kid_header_is_accepted(settings: Settings, dev_sign: Signer) -> None:
    verifier = BearerVerifier.from_settings(settings)
    assert verifier.verify(craft({"alg": "EdDSA"}, claims(settings), dev_sign)).user_id == "u1"


def test_no_key_source_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BearerVerifier.from_settings(Settings(state_dir=str(tmp_path), dev_issuer=False))


# --- JWKS URL key source -----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_jwks_url_refetches_unknown_kid_at_most_every_30_seconds(
    settings: Settings, dev_sign: Signer, issuer: DevIssuer
) -> None:
    clock = FakeClock()
    published: list[dict[str, Any]] = []
    fetches: list[str] = []

    def fetch(url: str) -> bytes:
        fetches.append(url)
        return json.dumps({"keys": published}).encode()

    source = JwksUrlKeys("https://id.example/jwks", fetch=fetch, clock=clock)
    verifier = BearerVerifier(
        [source], issuer=settings.jwt_issuer, audience=settings.jwt_audience, leeway_seconds=30
    )
    token = craft(header(issuer), claims(settings), dev_sign)
    rejected(verifier, token)  # first fetch: empty set
    assert len(fetches) == 1
    published.append(issuer.public_jwk())  # the provider rotates the key in
    for _ in range(5):
        rejected(verifier, token)  # unknown kid, but the refetch budget is spent
    assert len(fetches) == 1
    clock.now += 30
    assert verifier.verify(token).user_id == "u1"
    assert len(fetches) == 2
    for _ in range(5):
        verifier.verify(token)  # cached
    assert len(fetches) == 2


def test_jwks_url_keeps_last_good_keys_when_a_fetch_fails(
    settings: Settings, dev_sign: Signer, issuer: DevIssuer
) -> None:
    clock = FakeClock()
    up = [True]

    def fetch(url: str) -> bytes:
        if not up[0]:
            raise OSError("provider down")
        return json.dumps(issuer.jwks()).encode()

    source = JwksUrlKeys("https://id.example/jwks", fetch=fetch, clock=clock, ttl_seconds=60)
    verifier = BearerVerifier(
        [source], issuer=settings.jwt_issuer, audience=settings.jwt_audience, leeway_seconds=30
    )
    token = craft(header(issuer), claims(settings), dev_sign)
    verifier.verify(token)
    up[0] = False
    clock.now += 600
    assert verifier.verify(token).tenant_id == "t1"


def test_jwks_url_never_fetched_fails_closed(settings: Settings, issuer: DevIssuer) -> None:
    def fetch(url: str) -> bytes:
        raise OSError("provider down")

    source = JwksUrlKeys("https://id.example/jwks", fetch=fetch, clock=FakeClock())
    verifier = BearerVerifier(
        [source], issuer=settings.jwt_issuer, audience=settings.jwt_audience, leeway_seconds=30
    )
    with pytest.raises(KeysUnavailable):
        verifier.verify(issuer.mint("t1", "u1", None))


# --- the dev issuer's key file -----------------------------------------------------------


def test_dev_key_is_created_once_private_and_reused(settings: Settings) -> None:
    first = DevIssuer.load_or_create(settings)
    path = settings.state_path / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DevIssuer.load_or_create(settings).kid == first.kid
    assert [p.name for p in settings.state_path.iterdir()] == [KEY_FILE_NAME]  # no temp left


def test_concurrent_first_use_yields_one_key(settings: Settings) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        kids = set(pool.map(lambda _: DevIssuer.load_or_create(settings).kid, range(64)))
    assert len(kids) == 1


def test_concurrent_first_use_across_processes_yields_one_key(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path / "state"))
    reports = tmp_path / "reports"
    reports.mkdir()
    children = []
    for index in range(8):
        pid = os.fork()
        if pid == 0:  # child: create the key or lose the race, then report the kid it uses
            code = 1
            try:
                kid = DevIssuer.load_or_create(settings).kid
                (reports / str(index)).write_text(kid)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    kids = {path.read_text() for path in reports.iterdir()}
    assert kids == {DevIssuer.load_or_create(settings).kid}


def test_kid_is_the_rfc7638_thumbprint(issuer: DevIssuer) -> None:
    jwk = issuer.jwks()["keys"][0]
    assert jwk["kid"] == issuer.kid == jwk_thumbprint(issuer.public_key)
    assert {jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]} == {"OKP", "Ed25519", "EdDSA", "sig"}
    assert "d" not in jwk


def test_thumbprint_matches_rfc8037_example() -> None:
    key = key_from_jwk(
        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    )
    assert jwk_thumbprint(key.key) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


# --- scopes ------------------------------------------------------------------------------


def test_parse_scope() -> None:
    assert parse_scope("live:read live:write") == frozenset({"live:read", "live:write"})
    assert parse_scope(" ".join(sorted(KNOWN_SCOPES))) == KNOWN_SCOPES
    assert parse_scope("") == frozenset()
    assert parse_scope("openid live:read", allow_unknown=True) == {"openid", "live:read"}
    for bad in (
        "live:read ",
        " live:read",
        "live:read  live:write",
        "live:read\tx",
        'a"b',
        "live:réad",
        "openid",
    ):
        with pytest.raises(ValueError):
            parse_scope(bad)


def test_require_scope() -> None:
    principal = Principal(
        tenant_id="t", user_id="u", scopes=frozenset({"live:read"}), credential="bearer"
    )
    require_scope(principal, "live:read")
    with pytest.raises(InsufficientScope) as info:
        require_scope(principal, "live:write")
    assert info.value.scope == "live:write"
    with pytest.raises(ValueError):
        require_scope(principal, "live:wrte")


# ---- the cache of verified tokens -----------------------------------------------------


def test_a_verified_token_is_not_verified_again(
    verifier: BearerVerifier, issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jwt

    decodes: list[str] = []
    real = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        decodes.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    token = issuer.mint("acme", "alice", "live:read")
    first = verifier.verify(token)
    assert verifier.verify(token) == first and decodes == [token]
    # Another token (even one byte apart) is verified on its own.
    other = issuer.mint("acme", "alice", "live:read")
    assert verifier.verify(other).user_id == "alice" and decodes == [token, other]
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(AuthenticationError):
        verifier.verify(tampered)


def test_a_cached_token_still_expires(
    verifier: BearerVerifier, issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.auth import bearer

    start = time.time()
    token = issuer.mint("acme", "alice", "live:read", ttl_seconds=120)
    verifier.verify(token)
    leeway = Settings().jwt_leeway_seconds
    monkeypatch.setattr(bearer.time, "time", lambda: start + 120 + leeway + 1)
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(token)


def test_the_cache_is_consulted_for_at_most_its_window(
    verifier: BearerVerifier, issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the window the token is verified afresh (a withdrawn key stops working)."""
    from adapters.auth import bearer

    token = issuer.mint("acme", "alice", "live:read", ttl_seconds=3600)
    verifier.verify(token)
    start = time.time()
    verifier._sources = ()  # the provider withdrew every key
    monkeypatch.setattr(bearer.time, "time", lambda: start + 1)
    assert verifier.verify(token).user_id == "alice"
    monkeypatch.setattr(bearer.time, "time", lambda: start + bearer.VERIFIED_CACHE_SECONDS + 1)
    with pytest.raises(AuthenticationError):
        verifier.verify(token)


def test_the_cache_is_bounded(
    verifier: BearerVerifier, issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.auth import bearer

    monkeypatch.setattr(bearer, "VERIFIED_CACHE_SIZE", 5)
    for i in range(23):
        verifier.verify(issuer.mint("acme", f"u{i}", "live:read"))
        assert len(verifier._verified) <= 5
