"""Times read back from PostgreSQL are answered in UTC even when the database's TimeZone is
something else (real PostgreSQL, the API in process)."""

from __future__ import annotations

from pathlib import Path

import psycopg
from litestar.testing import TestClient
from psycopg import sql

from adapters.auth.dev_issuer import DevIssuer
from adapters.eventstore.schema import migrate
from adapters.http.app import create_app
from application.settings import Settings, parse_database_url
from tests.support.services import scratch_database


def test_stored_times_come_back_as_utc(database_url: str, tmp_path: Path) -> None:
    with scratch_database(database_url) as database:
        name = parse_database_url(database).dbname
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET TimeZone = 'Asia/Tokyo'").format(
                    sql.Identifier(name)
                )
            )
        settings = Settings(
            database_url=database, kafka_bootstrap="127.0.0.1:1", state_dir=str(tmp_path)
        )
        migrate(settings)
        token = DevIssuer.load_or_create(settings).mint("t-utc", "u-utc", None)
        headers = {"Authorization": f"Bearer {token}"}
        with TestClient(app=create_app(settings)) as client:
            created = client.post("/api/live/api-keys", json={"scopes": ["live:read"]},
                                  headers=headers)
            listed = client.get("/api/live/api-keys", headers=headers)

    assert created.status_code == 201, created.text
    assert listed.status_code == 200, listed.text
    (item,) = listed.json()["items"]
    # Read from the write-side key index, a timestamptz column: without the session's
    # TimeZone pinned it would say +09:00.
    assert item["created_at"].endswith("Z"), item
    assert item["created_at"] == created.json()["created_at"]
