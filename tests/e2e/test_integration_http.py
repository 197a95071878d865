"""Integration tokens through HTTP against the real processes (SPEC section 5)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from adapters.auth.jwk import jwk_thumbprint, key_from_jwk
from tests.e2e.conftest import Stack, User
from tests.e2e.test_sessions_http import problem_of, wait_until

ADMIN = "integration:manage integration:verify live:read live:write"
GRANT = "/api/integration/grant"
VERIFY = "/api/integration/verify"
ROTATE = "/api/integration/rotate"
REVOKE = "/api/integration/revoke"
REVOKE_ALL = "/api/integration/revoke-all"
KEYS_ROTATE = "/api/integration/keys/rotate"
RATE_HEADERS = (
    "RateLimit-Policy", "RateLimit", "X-RateLimit-Limit", "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


def grant(admin: User, subject: str = "embed-1", scopes: list[str] | None = None,
          **extra: object) -> dict:  # type: ignore[type-arg]
    body = {"subject": subject, "scopes": scopes or ["live:read", "live:write"], **extra}
    r = admin.post(GRANT, body)
    assert r.status_code == 201, r.text
    return r.json()


def verify(admin: User, token: str) -> dict:  # type: ignore[type-arg]
    r = admin.post(VERIFY, {"token": token})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(stack: Stack, token: str) -> User:
    """The embed user a token stands for, as a client."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return User(stack, claims["tid"], claims["sub"], {"Authorization": f"Bearer {token}"})


def test_grant_and_verify_introspection(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    r = admin.post(GRANT, {"subject": "embed-1", "scopes": ["live:read"], "ttl_seconds": 60})
    assert r.status_code == 201, r.text
    assert r.headers["Cache-Control"] == "no-store"
    for name in RATE_HEADERS:
        assert name in r.headers, name
    issued = r.json()
    assert issued["token_type"] == "Bearer" and issued["expires_in"] == 60
    header = jwt.get_unverified_header(issued["token"])
    assert header == {"alg": "EdDSA", "typ": "xtl-int+jwt", "kid": issued["kid"]}

    r = admin.post(VERIFY, {"token": issued["token"]})
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    for name in RATE_HEADERS:
        assert name in r.headers, name
    info = r.json()
    assert info["active"] is True
    assert (info["sub"], info["tid"], info["scope"], info["jti"], info["kid"]) == (
        "embed-1", admin.tenant, "live:read", issued["jti"], issued["kid"]
    )
    assert info["exp"] - info["iat"] == 60

    # The published key verifies the token on its own, as a relying party would.
    jwks = stack.client.get(f"/api/integration/jwks?tenantId={admin.tenant}")
    assert jwks.status_code == 200 and "public" in jwks.headers["Cache-Control"]
    keys = jwks.json()["keys"]
    assert [k["kid"] for k in keys] == [issued["kid"]]
    assert {k["alg"] for k in keys} == {"EdDSA"} and {k["use"] for k in keys} == {"sig"}
    assert not any("d" in k for k in keys)
    public = key_from_jwk(keys[0]).key
    assert isinstance(public, Ed25519PublicKey)
    claims = jwt.decode(issued["token"], public, algorithms=["EdDSA"],
                        audience="xentree-live-embed")
    assert claims["jti"] == issued["jti"] and claims["nbf"] == claims["iat"]
    # expires_at is the token's exp to the second, not a moment after it.
    assert datetime.fromisoformat(issued["expires_at"]).timestamp() == claims["exp"]

    fp = stack.client.get(f"/api/integration/fingerprint?tenantId={admin.tenant}")
    assert fp.status_code == 200, fp.text
    assert fp.json() == {
        "tenantId": admin.tenant, "kid": issued["kid"], "alg": "EdDSA",
        "fingerprint": jwk_thumbprint(public),
    }


def test_grant_validation(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    for body in (
        {"subject": "e", "scopes": ["live:read"], "ttl_seconds": 29},
        {"subject": "e", "scopes": ["live:read"], "ttl_seconds": 601},
        {"subject": "e", "scopes": ["integration:manage"]},
        {"subject": "e", "scopes": ["nonsense"]},
        {"subject": "has space", "scopes": ["live:read"]},
    ):
        problem_of(admin.post(GRANT, body), 422, "invalid_request")
    # Wrong types and unknown fields: 422 too, with the rate-limit headers.
    for body in (
        {"subject": 5, "scopes": ["live:read"]},
        {"subject": "e", "scopes": "live:read"},
        {"subject": "e", "scopes": ["live:read"], "ttl_seconds": [60]},
        {"subject": "e", "scopes": ["live:read"], "admin": True},
        {"scopes": ["live:read"]},
        [],
    ):
        r = admin.post(GRANT, body)
        problem_of(r, 422, "invalid_request")
        assert "RateLimit" in r.headers
    r = stack.client.post(GRANT, content=b"{", headers={**admin.headers,
                                                         "Content-Type": "application/json"})
    problem_of(r, 400, "invalid_request")
    for body in ({}, {"token": "x", "more": 1}):
        problem_of(admin.post(VERIFY, body), 422, "invalid_request")
    problem_of(admin.post(REVOKE, {}), 422, "invalid_request")
    problem_of(admin.post(REVOKE, {"jti": "a", "token": "b"}), 422, "invalid_request")
    problem_of(admin.post(REVOKE_ALL, {"issued_before": "yesterday"}), 422, "invalid_request")
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    problem_of(admin.post(REVOKE_ALL, {"issued_before": future}), 422, "invalid_request")


def test_a_caller_grants_only_scopes_it_holds(stack: Stack) -> None:
    reader = stack.user("integration:manage live:read")
    grant(reader, scopes=["live:read"])
    refused = problem_of(reader.post(GRANT, {"subject": "e", "scopes": ["live:write"]}), 403,
                         "insufficient_scope")
    assert refused["scope"] == "live:write"
    # A scope no integration token may hold is a bad value, whoever asks.
    problem_of(reader.post(GRANT, {"subject": "e", "scopes": ["audit:read"]}), 422,
               "invalid_request")


def test_scopes_and_credentials_are_checked(stack: Stack) -> None:
    plain = stack.user()
    problem_of(plain.post(GRANT, {"subject": "e", "scopes": ["live:read"]}), 403,
               "insufficient_scope")
    problem_of(plain.post(VERIFY, {"token": "x"}), 403, "insufficient_scope")
    problem_of(plain.post(REVOKE, {"jti": "x"}), 403, "insufficient_scope")
    problem_of(plain.post(KEYS_ROTATE), 403, "insufficient_scope")
    r = stack.client.post(VERIFY, json={"token": "x"})
    problem_of(r, 401, "unauthenticated")
    assert "WWW-Authenticate" in r.headers
    # An integration token cannot manage integration tokens, whatever it holds.
    admin = stack.user(ADMIN)
    embed = bearer(stack, grant(admin)["token"])
    problem_of(embed.post(GRANT, {"subject": "e", "scopes": ["live:read"]}), 403,
               "insufficient_scope")


def test_token_is_a_credential_on_live_endpoints_until_revoked(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    issued = grant(admin, subject=f"embed-{time.monotonic_ns()}")
    embed = bearer(stack, issued["token"])
    started = embed.start()
    sid = started["session_id"]
    r = embed.post("/api/live/session/heartbeat", {"session_id": sid})
    assert r.status_code == 200, r.text
    assert embed.get("/api/live/quota").status_code == 200

    r = admin.post(REVOKE, {"token": issued["token"], "reason": "logout"})
    assert r.status_code == 200, r.text
    assert r.json()["jti"] == issued["jti"]
    revoked_at = r.json()["revoked_at"]

    # Immediately: the token is dead everywhere and its session ended for that reason.
    assert verify(admin, issued["token"]) == {"active": False}
    problem_of(embed.post("/api/live/session/heartbeat", {"session_id": sid}), 401,
               "unauthenticated")
    owner = User(stack, admin.tenant, embed.user_id,
                 {"Authorization": "Bearer " + stack.issuer.mint(
                     admin.tenant, embed.user_id, "live:read live:write", 600)})
    r = owner.post("/api/live/session/end", {"session_id": sid})
    assert r.status_code == 200, r.text
    assert r.json()["end_reason"] == "token_revoked"

    # Revoking again is idempotent, by jti too.
    again = admin.post(REVOKE, {"jti": issued["jti"]})
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked_at


def test_scopes_of_the_token_bound_what_it_may_do(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    reader = bearer(stack, grant(admin, scopes=["live:read"])["token"])
    assert reader.get("/api/live/quota").status_code == 200
    problem_of(reader.post("/api/live/session/start", {"session_type": "voice"}), 403,
               "insufficient_scope")


def test_rotate_revokes_the_old_jti_and_keeps_subject_and_scopes(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    old = grant(admin, subject="embed-r", scopes=["live:read"], ttl_seconds=90)
    r = admin.post(ROTATE, {"token": old["token"]})
    assert r.status_code == 201, r.text
    for name in RATE_HEADERS:
        assert name in r.headers, name
    new = r.json()
    assert new["jti"] != old["jti"] and new["expires_in"] == 90
    assert verify(admin, old["token"]) == {"active": False}
    info = verify(admin, new["token"])
    assert info["active"] and info["sub"] == "embed-r" and info["scope"] == "live:read"
    # The old token cannot be rotated twice.
    problem_of(admin.post(ROTATE, {"token": old["token"]}), 404, "not_found")
    problem_of(admin.post(ROTATE, {"token": "garbage"}), 404, "not_found")


def test_a_retried_rotation_answers_the_first_new_token(stack: Stack) -> None:
    """The first rotation revoked the token it was given; its retry (same key, same body)
    still answers that rotation's new token, and no third token is made."""
    admin = stack.user(ADMIN)
    old = grant(admin, subject="embed-rr")
    key = {"Idempotency-Key": "rotate-once"}
    first = admin.post(ROTATE, {"token": old["token"]}, **key)
    again = admin.post(ROTATE, {"token": old["token"]}, **key)
    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json()
    assert verify(admin, first.json()["token"])["active"] is True
    problem_of(admin.post(ROTATE, {"token": first.json()["token"]}, **key), 409, "conflict")


def test_a_signing_key_rotation_takes_no_fields(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    r = admin.post(KEYS_ROTATE, {"x": 1})
    assert problem_of(r, 422, "invalid_request")["field"] == "x"
    r = stack.client.post(KEYS_ROTATE, content=b"{bad", headers={
        **admin.headers, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    kid = grant(admin)["kid"]
    assert admin.post(KEYS_ROTATE, {}).status_code == 200
    assert grant(admin)["kid"] != kid


def test_idempotent_grant_replays_the_same_token(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    body = {"subject": "embed-i", "scopes": ["live:read"]}
    first = admin.post(GRANT, body, **{"Idempotency-Key": "g-1"})
    again = admin.post(GRANT, body, **{"Idempotency-Key": "g-1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert first.headers["X-Event-Position"] == again.headers["X-Event-Position"]
    other = admin.post(GRANT, {**body, "ttl_seconds": 60}, **{"Idempotency-Key": "g-1"})
    problem_of(other, 409, "conflict")


def test_revoke_all_revokes_earlier_grants_only(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    early = grant(admin, subject=f"embed-a-{time.monotonic_ns()}")
    embed = bearer(stack, early["token"])
    sid = embed.start()["session_id"]
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    time.sleep(0.05)
    late = grant(admin)
    r = admin.post(REVOKE_ALL, {"issued_before": cutoff.isoformat()})
    assert r.status_code == 200, r.text
    assert datetime.fromisoformat(r.json()["issued_before"]) == cutoff
    assert verify(admin, early["token"]) == {"active": False}
    assert verify(admin, late["token"])["active"] is True
    fresh = grant(admin)
    assert verify(admin, fresh["token"])["active"] is True
    owner = User(stack, admin.tenant, embed.user_id,
                 {"Authorization": "Bearer " + stack.issuer.mint(
                     admin.tenant, embed.user_id, "live:read live:write", 600)})
    r = owner.post("/api/live/session/end", {"session_id": sid})
    assert r.json()["end_reason"] == "token_revoked"


def test_tenants_are_isolated(stack: Stack) -> None:
    a, b = stack.user(ADMIN), stack.user(ADMIN)
    token_a = grant(a)["token"]
    token_b = grant(b)["token"]
    jti_a = jwt.decode(token_a, options={"verify_signature": False})["jti"]
    # B can neither verify, rotate nor revoke A's token; A's token still works for A.
    assert verify(b, token_a) == {"active": False}
    problem_of(b.post(ROTATE, {"token": token_a}), 404, "not_found")
    problem_of(b.post(REVOKE, {"token": token_a}), 404, "not_found")
    problem_of(b.post(REVOKE, {"jti": jti_a}), 404, "not_found")
    assert b.post(REVOKE_ALL, {"issued_before": datetime.now(UTC).isoformat()}).status_code == 200
    assert verify(a, token_a)["active"] is True
    assert verify(b, token_b) == {"active": False}
    # Each tenant's JWKS holds its own keys only.
    keys_a = stack.client.get(f"/api/integration/jwks?tenantId={a.tenant}").json()["keys"]
    keys_b = stack.client.get(f"/api/integration/jwks?tenantId={b.tenant}").json()["keys"]
    assert not {k["kid"] for k in keys_a} & {k["kid"] for k in keys_b}
    # A token of A presented with B's tenant in its claims would need B's key: B's kid
    # with A's claims fails the signature; A's kid with B's tid fails the key's tenant.
    assert stack.client.get("/api/integration/jwks?tenantId=nobody").json() == {"keys": []}
    problem_of(stack.client.get("/api/integration/fingerprint?tenantId=nobody"), 404,
               "not_found")
    problem_of(stack.client.get("/api/integration/jwks?tenantId=a%20b"), 400, "invalid_request")


def test_signing_key_rotation_keeps_old_tokens_valid(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    before = grant(admin)
    r = admin.post(KEYS_ROTATE)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["previous_kid"] == before["kid"] and rotated["kid"] != before["kid"]
    until = datetime.fromisoformat(rotated["previous_published_until"])
    assert until > datetime.now(UTC) + timedelta(seconds=600)
    after = grant(admin)
    assert after["kid"] == rotated["kid"]
    assert verify(admin, before["token"])["active"] is True
    assert verify(admin, after["token"])["active"] is True
    kids = [k["kid"] for k in stack.client.get(
        f"/api/integration/jwks?tenantId={admin.tenant}").json()["keys"]]
    assert kids == [before["kid"], after["kid"]]
    fp = stack.client.get(f"/api/integration/fingerprint?tenantId={admin.tenant}").json()
    assert fp["kid"] == after["kid"]


def test_private_keys_are_sealed_and_never_in_events(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    kid = grant(admin)["kid"]
    with psycopg.connect(stack.env["XENTREE_DATABASE_URL"]) as conn:
        sealed = conn.execute(
            "SELECT sealed FROM signing_keys_private WHERE kid = %s", (kid,)
        ).fetchone()
        states = conn.execute("SELECT state FROM xentree_live_events").fetchall()
    assert sealed is not None and len(bytes(sealed[0])) == 1 + 12 + 32 + 16
    blob = b"".join(bytes(s[0]) for s in states)
    assert b'"d"' not in blob and b"PRIVATE" not in blob


def test_revocation_projection_follows_from_kafka(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    issued = grant(admin)
    r = admin.post(REVOKE, {"jti": issued["jti"], "reason": "compromised"})
    position = int(r.headers["X-Event-Position"])

    def projected() -> tuple[object, ...] | None:
        with psycopg.connect(stack.env["XENTREE_DATABASE_URL"]) as conn:
            row = conn.execute(
                "SELECT reason, revoked_at, position FROM rm_revocations WHERE jti = %s",
                (issued["jti"],),
            ).fetchone()
        return row if row is not None and row[2] >= position else None

    row = wait_until(projected, timeout=30)
    assert row[0] == "compromised"


@pytest.mark.parametrize(
    "token",
    [
        "", "a", "a.b", "a.b.c", "a.b.c.d", "....", "x" * 1_000_000,
        "eyJhbGciOiJub25lIn0.e30.", "%%%.%%%.%%%",
        json.dumps({"payload": "e30", "signatures": [{"protected": "e30", "signature": "AA"}]}),
        base64.urlsafe_b64encode(b'{"alg":"EdDSA","typ":"xtl-int+jwt"}').decode() + ".e30.AA",
    ],
    ids=range(11),
)
def test_junk_tokens_are_inactive_not_errors(stack: Stack, token: str) -> None:
    admin = stack.user(ADMIN)
    assert verify(admin, token) == {"active": False}
    if token:  # and as credentials they are a plain 401
        r = stack.client.get("/api/live/quota", headers={"Authorization": f"Bearer {token}"})
        problem_of(r, 401, "unauthenticated")


def test_rate_limit_answers_429_with_headers(stack: Stack) -> None:
    """A second API process with small limits, on the same database: its counters are the
    database's, so both processes share them."""
    from ops.stack import free_port, wait_for_http
    from tests.support.services import start_app_processes

    port = free_port()
    env = {**stack.env, "XENTREE_API_PORT": str(port), "XENTREE_API_WORKERS": "1",
           "XENTREE_RATE_LIMIT_GRANT": "3", "XENTREE_RATE_LIMIT_VERIFY": "5",
           "XENTREE_RATE_LIMIT_ROTATE": "3", "XENTREE_RATE_LIMIT_WINDOW_SECONDS": "3600"}
    apps = start_app_processes(
        env["XENTREE_DATABASE_URL"], env["XENTREE_KAFKA_BOOTSTRAP"], ["api"], env=env
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/healthz", timeout=60)
        admin = stack.user(ADMIN)
        with httpx.Client(base_url=url, timeout=30) as client:
            answers = [
                client.post(GRANT, json={"subject": "e", "scopes": ["live:read"]},
                            headers=admin.headers)
                for _ in range(4)
            ]
            assert [a.status_code for a in answers] == [201, 201, 201, 429]
            assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
            limited = problem_of(answers[3], 429, "rate_limited")
            assert limited["status"] == 429
            h = answers[3].headers
            assert int(h["Retry-After"]) >= 1
            assert h["RateLimit-Policy"] == '"grant";q=3;w=3600'
            assert h["RateLimit"].startswith('"grant";r=0;t=')
            assert h["X-RateLimit-Limit"] == "3" and int(h["X-RateLimit-Reset"]) > time.time()
            # Another tenant has its own budget; another endpoint too.
            other = stack.user(ADMIN)
            r = client.post(GRANT, json={"subject": "e", "scopes": ["live:read"]},
                            headers=other.headers)
            assert r.status_code == 201
            token = answers[0].json()["token"]
            codes = [client.post(VERIFY, json={"token": token}, headers=admin.headers)
                     .status_code for _ in range(6)]
            assert codes == [200] * 5 + [429]
    finally:
        apps.stop()


def test_openapi_documents_every_integration_endpoint(stack: Stack) -> None:
    r = stack.client.get("/schema/openapi.json")
    assert r.status_code == 200, r.text
    paths = r.json()["paths"]
    for path in ("grant", "verify", "rotate", "revoke", "revoke-all", "jwks", "fingerprint",
                 "keys/rotate"):
        assert f"/api/integration/{path}" in paths, path
    assert "429" in paths["/api/integration/verify"]["post"]["responses"]


def test_coercible_values_of_the_wrong_type_are_refused(stack: Stack) -> None:
    """The framework would turn "60" into 60 and an epoch number into a time; the contract
    checks types, so these are 422 naming the field, and nothing is granted or revoked."""
    admin = stack.user(ADMIN)
    for body, field in (
        ({"subject": "e", "scopes": ["live:read"], "ttl_seconds": "60"}, "ttl_seconds"),
        ({"subject": "e", "scopes": ["live:read"], "ttl_seconds": 60.0}, "ttl_seconds"),
        ({"subject": "e", "scopes": ["live:read", 5]}, "scopes[1]"),
    ):
        r = admin.post(GRANT, body)
        assert problem_of(r, 422, "invalid_request")["field"] == field
        assert "RateLimit" in r.headers
    issued = grant(admin)
    for cutoff in (0, int(time.time()), True):
        r = admin.post(REVOKE_ALL, {"issued_before": cutoff})
        assert problem_of(r, 422, "invalid_request")["field"] == "issued_before"
    assert verify(admin, issued["token"])["active"] is True
    problem_of(admin.post(GRANT, {"subject": "e", "scopes": ["live:read"], "admin": True}), 422,
               "invalid_request")


@pytest.mark.parametrize(
    "value", [5, None, True, 1.5, [], ["a.b.c"], {"token": "a.b.c"}], ids=range(7)
)
def test_verify_of_a_token_that_is_not_a_string_is_a_bad_body(
    stack: Stack, value: object
) -> None:
    """RFC 7662's token is a string: any other JSON value is a body of the wrong type
    (422 naming the field), while any string at all is introspected."""
    admin = stack.user(ADMIN)
    r = admin.post(VERIFY, {"token": value})
    assert problem_of(r, 422, "invalid_request")["field"] == "token"
    for name in RATE_HEADERS:
        assert name in r.headers, name
    r = admin.post(VERIFY, {"token": str(value)})
    assert r.status_code == 200 and r.json() == {"active": False}, r.text


def test_verify_takes_the_rfc_7662_type_hint(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    token = grant(admin)["token"]
    for hint in ("access_token", "refresh_token", None):
        r = admin.post(VERIFY, {"token": token, "token_type_hint": hint})
        assert r.status_code == 200 and r.json()["active"] is True, r.text
    r = admin.post(VERIFY, {"token": "junk", "token_type_hint": "access_token"})
    assert r.status_code == 200 and r.json() == {"active": False}


def test_a_missing_body_is_a_clear_400(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    for path in (GRANT, VERIFY, ROTATE, REVOKE, REVOKE_ALL):
        r = stack.client.post(path, content=b"", headers={**admin.headers,
                                                          "Content-Type": "application/json"})
        body = problem_of(r, 400, "invalid_request")
        assert "JSON body" in body["detail"], body


def test_refused_credentials_still_get_rate_limit_headers(stack: Stack) -> None:
    """Every answer of grant, verify and rotate carries the rate-limit headers: a missing
    credential (401) and one without the scope (403) too."""
    plain = stack.user()
    embed = bearer(stack, grant(stack.user(ADMIN))["token"])
    for path, body in ((GRANT, {"subject": "e", "scopes": ["live:read"]}),
                       (VERIFY, {"token": "x"}), (ROTATE, {"token": "x"})):
        for headers, status, code in (
            ({}, 401, "unauthenticated"),
            ({"Authorization": "Bearer not.a.token"}, 401, "unauthenticated"),
            (plain.headers, 403, "insufficient_scope"),
            (embed.headers, 403, "insufficient_scope"),
        ):
            r = stack.client.post(path, json=body, headers=headers)
            problem_of(r, status, code)
            for name in RATE_HEADERS:
                assert name in r.headers, (path, status, name)
            assert r.headers["RateLimit-Policy"].startswith(f'"{path.rsplit("/", 1)[1]}";q=')


def test_revoke_reason_is_optional_free_text(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    for reason in ("user logged out", "compromised", None):
        issued = grant(admin)
        body = {"jti": issued["jti"]} if reason is None else {"jti": issued["jti"],
                                                               "reason": reason}
        r = admin.post(REVOKE, body)
        assert r.status_code == 200, r.text
        assert set(r.json()) == {"jti", "revoked_at"} and r.json()["jti"] == issued["jti"]
        assert verify(admin, issued["token"]) == {"active": False}
    issued = grant(admin)
    for reason in ("", "x" * 201, "two\nlines", "rotated", 5):
        r = admin.post(REVOKE, {"jti": issued["jti"], "reason": reason})
        assert problem_of(r, 422, "invalid_request")["field"] == "reason", reason
    assert verify(admin, issued["token"])["active"] is True


def test_revoke_all_takes_a_slightly_fast_client_clock_as_now(stack: Stack) -> None:
    admin = stack.user(ADMIN)
    early = grant(admin)
    sent = datetime.now(UTC) + timedelta(seconds=2)
    r = admin.post(REVOKE_ALL, {"issued_before": sent.isoformat()})
    assert r.status_code == 200, r.text
    applied = datetime.fromisoformat(r.json()["issued_before"])
    assert applied <= datetime.now(UTC) < sent
    assert verify(admin, early["token"]) == {"active": False}
    assert verify(admin, grant(admin)["token"])["active"] is True  # a later grant lives
