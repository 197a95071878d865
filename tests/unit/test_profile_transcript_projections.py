"""The profile and transcripts projections as pure functions of the event stream."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from domain.account import Account
from domain.transcript import RawEntry, Transcript, format_timestamp
from projections import profile, transcripts
from tests.support.envelopes import envelopes_of
from tests.unit.test_projections import fold

T0 = datetime(2026, 4, 16, 10, 0, tzinfo=UTC)


def test_profile_row_follows_the_account() -> None:
    account = Account(tenant_id="tenant-a", user_id="user-1")
    account.assign_plan("pro", 36_000, 3_600)
    account.change_nickname("Ana")
    account.change_nickname("Ana")
    account.change_nickname("Bea")
    events = list(envelopes_of(account))
    row = fold(profile.apply, events)
    assert (row.tenant_id, row.user_id, row.nickname, row.plan) == (
        "tenant-a", "user-1", "Bea", "pro"
    )
    assert row.version == account.version == 4
    # Redelivered, shuffled or foreign events change nothing.
    for event in random.sample(events, len(events)):
        assert profile.apply(row, event) is None
    session_like = list(envelopes_of(Transcript(
        id=uuid4(), tenant_id="t", user_id="u", session_id=None, started_at=T0,
        created_at=T0, live=True,
    )))
    assert profile.apply(None, session_like[0]) is None


def test_transcript_row_holds_every_entry_in_order() -> None:
    transcript = Transcript(
        id=uuid4(), tenant_id="tenant-a", user_id="user-1", session_id="s-1",
        started_at=T0, created_at=T0 + timedelta(minutes=5), live=False,
    )
    raws = [
        RawEntry(role="user" if i % 2 else "ai", text=f"line {i}",
                 timestamp=format_timestamp(T0 + timedelta(seconds=i)),
                 interrupted=i == 1_199)
        for i in range(1_200)
    ]
    transcript.append(raws)
    transcript.finalise(T0 + timedelta(minutes=4), "client")
    events = list(envelopes_of(transcript))
    row = None
    for event in events:
        new = transcripts.apply(row, event)
        assert new is not None
        row = new
        assert transcripts.apply(row, event) is None  # a duplicate
    assert row is not None
    assert (row.tenant_id, row.user_id, row.session_id) == ("tenant-a", "user-1", "s-1")
    assert (row.started_at, row.ended_at, row.created_at) == (
        T0, T0 + timedelta(minutes=4), T0 + timedelta(minutes=5)
    )
    assert (row.status, row.end_reason, row.entry_count) == ("complete", "client", 1_200)
    assert [e.text for e in row.entries] == [r.text for r in raws]
    assert row.entries[-1].interrupted and not row.entries[0].interrupted
    assert row.entries[3].timestamp == "2026-04-16T10:00:03Z"
    assert row.version == transcript.version == len(events)


def test_a_gap_leaves_the_transcript_row_alone() -> None:
    transcript = Transcript(
        id=uuid4(), tenant_id="t", user_id="u", session_id=None, started_at=T0,
        created_at=T0, live=True,
    )
    transcript.append([RawEntry(role="user", text="hi", timestamp=format_timestamp(T0))])
    transcript.finalise(T0, "client")
    first, _, last = envelopes_of(transcript)
    row = transcripts.apply(None, first)
    assert row is not None and row.status == "recording" and row.entries == ()
    assert transcripts.apply(row, last) is None
    assert transcripts.apply(None, last) is None
