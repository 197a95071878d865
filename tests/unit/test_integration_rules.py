"""Integration-token domain rules, the key vault's sealing, the revocation projection and
the rate-limit headers: pure, no services."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from adapters.integration.vault import SealedKeyError, parse_master_key, seal, unseal
from adapters.ratelimit import MAX_LEASE, Lease, Policy, RateLimiter, RateLimitState
from domain.errors import InvalidValue, ScopeNotHeld
from domain.integration import check_grant, check_revoke_reason, published_until, token_claims
from domain.integration_grant import IntegrationGrant
from domain.integration_tenant import IntegrationTenant
from domain.signing_key import SigningKey
from projections.revocations import CutoffRow, RevocationRow, apply_grant, apply_tenant

T0 = datetime(2026, 3, 1, 12, 0, 0, 500_000, tzinfo=UTC)
BOTH = frozenset({"live:read", "live:write", "integration:manage"})


# ---- grant rules --------------------------------------------------------------------


def test_check_grant_sorts_and_dedupes() -> None:
    assert check_grant(["live:write", "live:read", "live:write"], 120, BOTH) == [
        "live:read", "live:write"
    ]


@pytest.mark.parametrize(
    ("scopes", "ttl", "field"),
    [
        (["live:read"], 29, "ttl_seconds"),
        (["live:read"], 601, "ttl_seconds"),
        ([], 120, "scopes"),
        (["integration:manage"], 120, "scopes"),
        (["integration:verify"], 120, "scopes"),
        (["audit:read"], 120, "scopes"),
    ],
)
def test_check_grant_refuses(scopes: list[str], ttl: int, field: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        check_grant(scopes, ttl, BOTH)
    assert caught.value.field == field


def test_a_grant_never_holds_more_than_its_granter() -> None:
    with pytest.raises(ScopeNotHeld) as caught:
        check_grant(["live:write"], 120, frozenset({"integration:manage", "live:read"}))
    assert caught.value.scope == "live:write"


@given(st.integers(min_value=30, max_value=600), st.integers(min_value=0, max_value=999_999))
def test_token_times_are_whole_seconds_within_the_grant(ttl: int, micros: int) -> None:
    issued = T0.replace(microsecond=micros)
    c = token_claims(
        issuer="i", audience="a", subject="s", tenant_id="t", scopes=["live:read"], jti="j",
        issued_at=issued, expires_at=issued + timedelta(seconds=ttl),
    )
    assert c.iat == c.nbf == int(issued.timestamp())
    assert c.exp - c.iat == ttl
    assert c.exp <= (issued + timedelta(seconds=ttl)).timestamp()


def test_superseded_key_outlives_every_token_it_signed() -> None:
    assert published_until(T0, 30) == T0 + timedelta(seconds=630)


# ---- aggregates ---------------------------------------------------------------------


def _grant() -> IntegrationGrant:
    return IntegrationGrant(
        jti="j1", tenant_id="t", subject="s", scopes=["live:read"], kid="k",
        issued_at=T0, expires_at=T0 + timedelta(seconds=120), granted_by="admin",
        rotated_from=None,
    )


def test_grant_revoke_is_idempotent_and_rotation_revokes() -> None:
    g = _grant()
    assert g.is_live(T0) and not g.is_live(T0 + timedelta(seconds=120))
    g.revoke(T0 + timedelta(seconds=1), "logout")
    g.revoke(T0 + timedelta(seconds=2), "compromised")
    assert g.revoked_at == T0 + timedelta(seconds=1)
    assert [type(e).__name__ for e in g.collect_events()] == ["Granted", "Revoked"]
    r = _grant()
    r.rotate(T0 + timedelta(seconds=5), "j2")
    assert r.revoked_at is not None and r.rotated_to == "j2" and not r.is_live(T0)


def test_revoke_all_only_raises_the_cut_off_and_not_into_the_future() -> None:
    t = IntegrationTenant(tenant_id="t")
    t.revoke_all(T0, T0 + timedelta(seconds=1))
    t.revoke_all(T0 - timedelta(hours=1), T0 + timedelta(seconds=2))
    assert t.revoked_before == T0
    with pytest.raises(InvalidValue):
        t.revoke_all(T0 + timedelta(hours=1), T0)
    assert [type(e).__name__ for e in t.collect_events()] == ["Registered", "AllRevoked"]


def test_revoke_all_takes_a_slightly_fast_client_clock_as_now() -> None:
    t = IntegrationTenant(tenant_id="t")
    t.revoke_all(T0 + timedelta(seconds=3), T0)
    assert t.revoked_before == T0
    with pytest.raises(InvalidValue):
        t.revoke_all(T0 + timedelta(seconds=6), T0)


@pytest.mark.parametrize(
    ("reason", "recorded"),
    [(None, "unspecified"), ("compromised", "compromised"), ("user logged out", "user logged out")],
)
def test_revoke_reasons_are_free_text(reason: str | None, recorded: str) -> None:
    assert check_revoke_reason(reason) == recorded


@pytest.mark.parametrize("reason", ["", "   ", "x" * 201, "bad\nline", "nul\x00", "rotated"])
def test_revoke_reasons_refused(reason: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        check_revoke_reason(reason)
    assert caught.value.field == "reason"


def test_signing_key_retires_only_after_its_publication() -> None:
    key = SigningKey(kid="k", tenant_id="t", algorithm="EdDSA",
                     public_jwk={"kty": "OKP", "crv": "Ed25519", "x": "AA"}, created_at=T0)
    key.retire(T0 + timedelta(days=1))
    assert key.retired_at is None  # still current: never superseded
    key.supersede(T0, T0 + timedelta(seconds=630))
    assert not key.due_for_retirement(T0 + timedelta(seconds=629))
    key.retire(T0 + timedelta(seconds=629))
    assert key.retired_at is None
    key.retire(T0 + timedelta(seconds=630))
    assert key.retired_at == T0 + timedelta(seconds=630)
    names = [type(e).__name__ for e in key.collect_events()]
    assert names == ["Created", "Superseded", "Retired"]
    # The private key is nowhere in the events.
    assert not any("d" in getattr(e, "public_jwk", {}) for e in key.collect_events())


# ---- sealing ------------------------------------------------------------------------


def test_sealed_keys_open_only_with_their_master_key_and_binding() -> None:
    master = secrets.token_bytes(32)
    private = Ed25519PrivateKey.generate()
    sealed = seal(master, "acme", "kid1", private)
    opened = unseal(master, "acme", "kid1", sealed)
    assert opened.public_key() == private.public_key()
    for args in (
        (secrets.token_bytes(32), "acme", "kid1", sealed),
        (master, "globex", "kid1", sealed),  # copied onto another tenant's row
        (master, "acme", "kid2", sealed),
        (master, "acme", "kid1", sealed[:-1] + bytes([sealed[-1] ^ 1])),
        (master, "acme", "kid1", b"\x02" + sealed[1:]),
        (master, "acme", "kid1", b""),
    ):
        with pytest.raises(SealedKeyError):
            unseal(*args)


def test_master_key_formats() -> None:
    raw = secrets.token_bytes(32)
    assert parse_master_key(raw.hex()) == raw
    import base64

    assert parse_master_key(base64.urlsafe_b64encode(raw).decode()) == raw
    for bad in ("", "abc", "zz" * 32, raw.hex()[:-2]):
        with pytest.raises(ValueError):
            parse_master_key(bad)


# ---- the revocation projection ------------------------------------------------------


def _event(aggregate: str, name: str, version: int, position: int, **data: Any) -> Any:
    return SimpleNamespace(
        type=f"xentree.live.{aggregate}.{name}", subject="s", aggregateversion=version,
        position=position, data=data,
    )


def test_revocation_rows_follow_grants_by_version() -> None:
    granted = _event("IntegrationGrant", "Granted", 1, 10, jti="j", tenant_id="t",
                     issued_at=T0.isoformat(), expires_at=T0.isoformat())
    row = apply_grant(None, granted)
    assert isinstance(row, RevocationRow) and row.revoked_at is None
    assert apply_grant(row, granted) is None  # a duplicate changes nothing
    revoked = _event("IntegrationGrant", "Revoked", 2, 11, revoked_at=T0.isoformat(),
                     reason="logout")
    row2 = apply_grant(row, revoked)
    assert row2 is not None and (row2.revoked_at, row2.reason, row2.position) == (
        T0, "logout", 11
    )
    gap = _event("IntegrationGrant", "Rotated", 4, 13, rotated_at=T0.isoformat(),
                 successor_jti="k")
    assert apply_grant(row2, gap) is None
    assert apply_grant(None, _event("LiveSession", "Started", 1, 1)) is None


def test_rotation_is_a_revocation_in_the_projection() -> None:
    row = apply_grant(None, _event("IntegrationGrant", "Granted", 1, 1, jti="j",
                                   tenant_id="t", issued_at=T0.isoformat(),
                                   expires_at=T0.isoformat()))
    rotated = apply_grant(row, _event("IntegrationGrant", "Rotated", 2, 2,
                                      rotated_at=T0.isoformat(), successor_jti="k"))
    assert rotated is not None and rotated.reason == "rotated"


def test_cut_off_rows_only_rise() -> None:
    row = apply_tenant(None, _event("IntegrationTenant", "Registered", 1, 1, tenant_id="t"))
    assert isinstance(row, CutoffRow) and row.revoked_before is None
    row = apply_tenant(row, _event("IntegrationTenant", "KeyActivated", 2, 2, kid="k",
                                   previous_kid=None, activated_at=T0.isoformat()))
    assert row is not None and row.version == 2 and row.revoked_before is None
    row = apply_tenant(row, _event("IntegrationTenant", "AllRevoked", 3, 3,
                                   issued_before=T0.isoformat(), revoked_at=T0.isoformat()))
    assert row is not None and row.revoked_before == T0


# ---- rate-limit headers -------------------------------------------------------------


def test_rate_limit_headers_follow_the_draft_syntax() -> None:
    state = RateLimitState(policy=Policy("verify", 6000, 60), remaining=5999,
                           reset_seconds=37, reset_at=1_800_000_037, allowed=True)
    assert state.headers() == {
        "RateLimit-Policy": '"verify";q=6000;w=60',
        "RateLimit": '"verify";r=5999;t=37',
        "X-RateLimit-Limit": "6000",
        "X-RateLimit-Remaining": "5999",
        "X-RateLimit-Reset": "1800000037",
    }


def test_rate_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RateLimiter(lambda: None, {"x": Policy("x", 0, 60)})  # type: ignore[arg-type,return-value]


def _lease(limit: int, next_: int, last: int, seconds_left: float = 30.0) -> Lease:
    # `offset` puts the database's clock at epoch 1,000,000 now; the window ends later.
    return Lease(policy=Policy("verify", limit, 60), next=next_, last=last,
                 end=1_000_000 + seconds_left, offset=1_000_000 - time.monotonic())


def test_a_lease_spends_its_reserved_calls_then_asks_for_more() -> None:
    lease = _lease(limit=100, next_=11, last=13)
    states = [lease.take() for _ in range(3)]
    assert [s.remaining for s in states if s is not None] == [89, 88, 87]
    assert all(s is not None and s.allowed for s in states)
    assert lease.take() is None  # spent, and the window still has room: reserve again
    assert lease.next_size() == (100 - 13) // 16


def test_a_lease_over_the_limit_refuses_without_asking() -> None:
    lease = _lease(limit=5, next_=5, last=6)
    first, second = lease.take(), lease.take()
    assert first is not None and first.allowed and first.remaining == 0
    assert second is not None and not second.allowed and second.remaining == 0
    # Spent with the counter over the limit: refused from memory until the window ends.
    for _ in range(3):
        again = lease.take()
        assert again is not None and not again.allowed
    assert lease.next_size() == 1


def test_an_ended_window_needs_a_new_lease() -> None:
    lease = _lease(limit=100, next_=1, last=50, seconds_left=-0.01)
    assert lease.take() is None


def test_lease_sizes_shrink_near_the_limit() -> None:
    assert _lease(limit=6000, next_=1, last=1).next_size() == MAX_LEASE
    assert _lease(limit=6000, next_=1, last=5990).next_size() == 1
    assert _lease(limit=3, next_=1, last=1).next_size() == 1
    assert _lease(limit=1000, next_=1, last=680).next_size() == 20
