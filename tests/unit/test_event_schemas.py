"""The published event schemas (docs/events/) are the ones the code generates."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from adapters.audit.event_schemas import (
    UnversionedChange,
    published,
    render,
    schemas,
    unversioned_changes,
    write,
)
from adapters.eventstore.chain import GENESIS, event_digest, link, walk

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events"


def test_published_schemas_match_the_code() -> None:
    generated = schemas()
    published = {p.name.removesuffix(".json"): p.read_bytes() for p in DOCS.glob("*.json")}
    assert set(published) == set(generated), (
        "run `xentree-live audit schemas --write docs/events`"
    )
    for event_type, schema in generated.items():
        assert published[event_type] == render(schema), (
            f"{event_type} changed: run `xentree-live audit schemas --write docs/events`"
        )


def test_a_changed_schema_comes_with_a_class_version_bump() -> None:
    published = {
        p.name.removesuffix(".json"): msgspec.json.decode(p.read_bytes())
        for p in DOCS.glob("*.json")
    }
    problems = unversioned_changes(published, schemas())
    assert not problems, "\n".join(problems)


def test_the_version_check_catches_a_change_without_a_bump() -> None:
    generated = schemas()
    billed = generated["xentree.live.LiveSession.Billed"]
    assert billed["x-class-version"] == 2
    assert generated["xentree.live.LiveSession.Ended"]["x-class-version"] == 2
    assert generated["xentree.live.LiveSession.Started"]["x-class-version"] == 1
    changed = msgspec.json.decode(msgspec.json.encode(billed))
    changed["$defs"]["LiveSessionBilled"]["required"].remove("at")
    [problem] = unversioned_changes({"t": changed}, {"t": billed})
    assert "class_version is still 2" in problem and "upcast_v2_v3" in problem
    assert unversioned_changes({"t": changed}, {"t": {**billed, "x-class-version": 3}}) == []
    lowered = unversioned_changes({"t": billed}, {"t": {**billed, "x-class-version": 1}})
    assert "went down" in lowered[0]
    assert unversioned_changes({"t": billed}, {"t": billed}) == []


def test_regenerating_refuses_a_changed_shape_without_a_bump(tmp_path: Path) -> None:
    """`audit schemas --write` over schemas published before: a shape published under the
    code's version must be the code's shape, else nothing is written."""
    write(tmp_path)
    assert published(tmp_path) == schemas()
    billed = tmp_path / "xentree.live.LiveSession.Billed.json"
    before = msgspec.json.decode(billed.read_bytes())
    assert before["x-class-version"] == 2
    # As if v2 had been published without `at`, and the code had added it since.
    before["$defs"]["LiveSessionBilled"]["required"].remove("at")
    del before["$defs"]["LiveSessionBilled"]["properties"]["at"]
    billed.write_bytes(render(before))
    stale = tmp_path / "xentree.live.Gone.Away.json"
    stale.write_bytes(b"{}")
    with pytest.raises(UnversionedChange, match="class_version is still 2"):
        write(tmp_path)
    assert msgspec.json.decode(billed.read_bytes()) == before and stale.exists()
    # Published as v1, the same change is what a bump to v2 made: it is written.
    billed.write_bytes(render({**before, "x-class-version": 1}))
    write(tmp_path)
    assert billed.read_bytes() == render(schemas()["xentree.live.LiveSession.Billed"])
    assert not stale.exists()


def test_regenerating_refuses_a_published_file_that_is_no_json(tmp_path: Path) -> None:
    (tmp_path / "xentree.live.LiveSession.Billed.json").write_bytes(b"{not json")
    with pytest.raises(ValueError, match="is not a JSON Schema"):
        write(tmp_path)


def test_every_aggregate_event_has_a_schema_without_secrets() -> None:
    generated = schemas()
    for expected in (
        "xentree.live.LiveSession.Started", "xentree.live.UsageLedger.UsageBilled",
        "xentree.live.Account.NicknameChanged", "xentree.live.ApiKey.Issued",
        "xentree.live.Transcript.EntriesAppended", "xentree.live.SigningKey.Created",
        "xentree.live.IntegrationGrant.Revoked", "xentree.live.IntegrationTenant.AllRevoked",
    ):
        assert expected in generated
    issued = generated["xentree.live.ApiKey.Issued"]
    data = issued["$defs"][issued["properties"]["data"]["$ref"].rpartition("/")[2]]
    assert "key_hash" not in data["properties"]
    assert "tenant_id" in data["properties"]


def _row(position: int, state: bytes, previous: bytes) -> tuple[object, ...]:
    digest = event_digest(position, "agg", position, "domain.x:A.E", state)
    return (position, position, "agg", position, "domain.x:A.E", state, link(previous, digest))


def test_walk_recomputes_links_and_stops_at_the_first_break() -> None:
    rows, previous = [], GENESIS
    for position in (1, 2, 4):  # a gap in positions (a rolled-back insert) is fine
        state = msgspec.json.encode({"timestamp": {"_data_": f"2026-11-24T12:00:0{position}"}})
        row = _row(position, state, previous)
        rows.append(row)
        previous = row[-1]  # type: ignore[assignment]
    verdict, at = walk(rows, checkpoint=2)
    assert verdict.ok and verdict.position == 4 and verdict.head == previous
    assert at == rows[1][-1]
    altered = [rows[0], (*rows[1][:5], rows[1][5] + b" ", rows[1][6]), rows[2]]
    verdict, _ = walk(altered)
    assert not verdict.ok and verdict.broken_at == 2 and verdict.position == 1
    removed = [rows[0], (2, None, None, None, None, None, rows[1][6]), rows[2]]
    assert walk(removed)[0].broken_at == 2
    unchained = [*rows, (5, 5, "agg", 5, "t", b"{}", None)]
    assert walk(unchained)[0].broken_at == 5
