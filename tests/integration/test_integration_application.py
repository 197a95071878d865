"""Integration-token use cases on real PostgreSQL: key creation and retirement, the rows
that commit with the events, rotation's atomic revoke, and concurrent first use."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import psycopg
import pytest

from adapters.auth.jwk import jwk_thumbprint
from adapters.bootstrap import build_application
from adapters.eventstore.schema import migrate
from adapters.integration.store import IntegrationStore
from application.integration import GrantRecorded, SigningKeyRotated
from application.live import LiveApplication
from application.principal import Principal
from application.settings import Settings
from domain.errors import NotFound
from tests.support.clock import Clock
from tests.support.services import scratch_database


@pytest.fixture(scope="module")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    # A database of its own: tenant-owned events (keys, cut-offs) have no user, which
    # other modules' whole-history checks of user-owned events need not know about.
    with scratch_database(database_url) as own_database:
        s = Settings(database_url=own_database, db_pool_size=10, db_max_overflow=10,
                     state_dir=str(tmp_path_factory.mktemp("state")))
        migrate(s)
        yield s


@pytest.fixture
def app(settings: Settings) -> Iterator[LiveApplication]:
    a = build_application(settings)
    yield a
    a.close()


@pytest.fixture
def store(app: LiveApplication) -> IntegrationStore:
    return IntegrationStore(app.recorder.datastore.get_connection)  # type: ignore[attr-defined]


def admin() -> Principal:
    return Principal(
        tenant_id=f"t-{secrets.token_hex(4)}",
        user_id="admin",
        scopes=frozenset({"integration:manage", "live:read", "live:write"}),
        credential="bearer",
    )


def granted(app: LiveApplication, p: Principal, clock: Clock, ttl: int = 120) -> GrantRecorded:
    answer = app.grant_integration_token(p, "embed", ["live:read"], ttl, clock)
    return msgspec.json.decode(answer.body, type=GrantRecorded)


def test_first_grant_creates_the_key_and_rows_commit_with_events(
    app: LiveApplication, store: IntegrationStore, settings: Settings
) -> None:
    p, clock = admin(), Clock()
    g = granted(app, p, clock)
    assert store.current_key(p.tenant_id)["kid"] == g.kid  # type: ignore[index]
    status = store.grant_status(g.jti)
    assert status is not None and status.active and status.kid == g.kid
    with psycopg.connect(settings.database_url) as conn:
        sealed = conn.execute("SELECT sealed FROM signing_keys_private WHERE kid = %s",
                              (g.kid,)).fetchone()
    assert sealed is not None
    assert granted(app, p, clock).kid == g.kid  # the same key signs the next grant

    app.revoke_integration_token(p, g.jti, "logout", clock)
    status = store.grant_status(g.jti)
    assert status is not None and status.revoked and not status.active


def test_rotation_revokes_the_old_grant_in_the_same_write(
    app: LiveApplication, store: IntegrationStore
) -> None:
    p, clock = admin(), Clock()
    old = granted(app, p, clock, ttl=300)
    new = msgspec.json.decode(app.rotate_integration_token(p, old.jti, clock).body,
                              type=GrantRecorded)
    assert new.claims.sub == old.claims.sub and new.claims.scope == old.claims.scope
    assert new.expires_in == 300
    assert not store.grant_status(old.jti).active  # type: ignore[union-attr]
    assert store.grant_status(new.jti).active  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        app.rotate_integration_token(p, old.jti, clock)
    with pytest.raises(NotFound):
        app.rotate_integration_token(admin(), new.jti, clock)  # another tenant


def test_superseded_keys_are_published_until_their_tokens_expire_then_retired(
    app: LiveApplication, store: IntegrationStore, settings: Settings
) -> None:
    p, clock = admin(), Clock()
    first = granted(app, p, clock, ttl=600)
    clock.advance(1)
    rotated = msgspec.json.decode(app.rotate_signing_key(p, clock).body, type=SigningKeyRotated)
    assert rotated.previous_kid == first.kid
    kids = [k["kid"] for k in store.published_keys(p.tenant_id, clock())]
    assert kids == [first.kid, rotated.kid]

    clock.advance(600 + settings.jwt_leeway_seconds - 1)
    assert len(store.published_keys(p.tenant_id, clock())) == 2
    clock.advance(1)
    assert [k["kid"] for k in store.published_keys(p.tenant_id, clock())] == [rotated.kid]
    # The next command on the tenant records the retirement as an event.
    granted(app, p, clock)
    with psycopg.connect(settings.database_url) as conn:
        retired = conn.execute("SELECT retired_at FROM signing_keys WHERE kid = %s",
                               (first.kid,)).fetchone()
    assert retired is not None and retired[0] == clock()


def test_concurrent_first_grants_agree_on_one_key(app: LiveApplication) -> None:
    p, clock = admin(), Clock()
    with ThreadPoolExecutor(8) as pool:
        kids = set(pool.map(lambda _: granted(app, p, clock).kid, range(8)))
    assert len(kids) == 1


def test_revoke_all_cut_off_uses_the_grants_exact_times(
    app: LiveApplication, store: IntegrationStore
) -> None:
    p, clock = admin(), Clock()
    clock.advance(0.2)
    early = granted(app, p, clock)
    clock.advance(0.3)
    cutoff = clock()
    clock.advance(0.3)  # the same whole second as the cut-off
    late = granted(app, p, clock)
    app.revoke_all_integration_tokens(p, cutoff, clock)
    assert not store.grant_status(early.jti).active  # type: ignore[union-attr]
    assert store.grant_status(late.jti).active  # type: ignore[union-attr]


def test_private_keys_open_from_another_process_with_the_same_master_key(
    settings: Settings, app: LiveApplication
) -> None:
    p, clock = admin(), Clock()
    kid = granted(app, p, clock).kid
    other = build_application(settings)  # a fresh vault: nothing cached
    try:
        tenant_id, key = other.key_vault.private_key(kid)  # type: ignore[union-attr]
        assert tenant_id == p.tenant_id
        assert jwk_thumbprint(key.public_key()) == kid
    finally:
        other.close()
    wrong = build_application(msgspec.structs.replace(
        settings, master_key=secrets.token_hex(32), state_dir=str(Path(settings.state_dir))
    ))
    try:
        from adapters.integration.vault import SealedKeyError

        with pytest.raises(SealedKeyError):
            wrong.key_vault.private_key(kid)  # type: ignore[union-attr]
    finally:
        wrong.close()
