"""The auditor's argument types and the dev stack's application role, without services."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

from adapters.audit.cli import instant, position
from adapters.audit.digest import MAX_DIGEST_BYTES, DigestError, load_digest
from ops.launcher import APP_ROLE, app_env


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T12:00:00Z", datetime(2026, 11, 24, 12, tzinfo=UTC)),
        ("2026-11-24t12:00:00z", datetime(2026, 11, 24, 12, tzinfo=UTC)),
        ("2026-11-24 12:00:00Z", datetime(2026, 11, 24, 12, tzinfo=UTC)),
        (" 2026-11-24T12:00:00.5+01:00 ",
         datetime(2026, 11, 24, 12, 0, 0, 500000, tzinfo=timezone(timedelta(hours=1)))),
        ("2026-11-24T12:00:00", datetime(2026, 11, 24, 12, tzinfo=UTC)),  # no offset: UTC
    ],
)
def test_instants_in_rfc3339_spellings(text: str, expected: datetime) -> None:
    assert instant(text) == expected
    assert instant(text).tzinfo is not None


@pytest.mark.parametrize("text", ["", "garbage", "2026-13-01T00:00:00Z", "12:00", "+25:00"])
def test_what_is_no_instant_is_an_argument_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="RFC 3339"):
        instant(text)


def test_positions_are_whole_numbers_from_zero() -> None:
    assert position("0") == 0 and position("42") == 42
    for text in ("-1", "1.5", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="not a position"):
            position(text)


def _digest(**fields: object) -> bytes:
    good = {"position": 3, "head": "ab" * 32, "time": "2026-11-24T12:00:00Z", "key_id": "k1"}
    return msgspec.json.encode({**good, **fields})


def test_a_digest_file_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "digest.json"
    path.write_bytes(_digest())
    assert load_digest(path).position == 3
    for fields, says in [
        ({"position": -1}, "position"),
        ({"head": "AB" * 32}, "head"),
        ({"head": "ab" * 31}, "head"),
        ({"key_id": ""}, "key_id"),
        ({"signature": "x" * 1000}, "signature"),
    ]:
        path.write_bytes(_digest(**fields))
        with pytest.raises(DigestError, match=says):
            load_digest(path)


def test_a_digest_file_is_not_read_past_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * MAX_DIGEST_BYTES + _digest())
    with pytest.raises(DigestError, match="over"):
        load_digest(path)
    with pytest.raises(DigestError, match="over"):
        load_digest(Path("/dev/zero"))  # would never end


def test_the_dev_stack_runs_its_apps_as_the_application_role() -> None:
    env = app_env({"HOME": "/h"}, "postgresql://x@h/db", "h:9", own_postgres=True)
    assert env["XENTREE_DATABASE_ROLE"] == APP_ROLE == "xentree_app"
    assert (env["XENTREE_DATABASE_URL"], env["XENTREE_KAFKA_BOOTSTRAP"]) == (
        "postgresql://x@h/db", "h:9",
    )
    # An explicit choice wins, even "no role"; a server of somebody else's is left alone.
    explicit = {"XENTREE_DATABASE_ROLE": ""}
    assert app_env(explicit, "u", "b", own_postgres=True)["XENTREE_DATABASE_ROLE"] == ""
    assert "XENTREE_DATABASE_ROLE" not in app_env({}, "u", "b", own_postgres=False)
