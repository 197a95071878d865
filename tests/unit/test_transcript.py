"""Transcript rules and the transcript aggregate, without services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidValue
from domain.ids import live_transcript_id
from domain.transcript import (
    BATCH_BYTES,
    BATCH_ENTRIES,
    MAX_ENTRIES,
    RawEntry,
    Transcript,
    TranscriptFinalised,
    check_entries,
    format_timestamp,
    parse_timestamp,
)

T0 = datetime(2026, 4, 16, 10, 0, tzinfo=UTC)


def entry(i: int = 0, **kw: object) -> RawEntry:
    fields: dict[str, object] = {
        "role": "user" if i % 2 == 0 else "ai",
        "text": f"line {i}",
        "timestamp": format_timestamp(T0 + timedelta(seconds=i)),
    }
    fields.update(kw)
    return RawEntry(**fields)  # type: ignore[arg-type]


def new_transcript() -> Transcript:
    return Transcript(
        id=uuid4(), tenant_id="t", user_id="u", session_id=None, started_at=T0,
        created_at=T0, live=False,
    )


def rule(raws: list[RawEntry]) -> InvalidValue:
    with pytest.raises(InvalidValue) as caught:
        check_entries(raws)
    return caught.value


def test_the_seed_example_is_valid() -> None:
    raws = [
        RawEntry(role="user", text="Hello Xentree", timestamp="2026-04-16T10:00:03Z"),
        RawEntry(role="ai", text="Hi, how can I help you today?",
                 timestamp="2026-04-16T10:00:05Z"),
    ]
    entries = check_entries(raws)
    assert [e.timestamp for e in entries] == [
        T0 + timedelta(seconds=3), T0 + timedelta(seconds=5)
    ]
    assert entries[0].as_data() == {
        "role": "user", "text": "Hello Xentree", "timestamp": "2026-04-16T10:00:03Z",
        "interrupted": False,
    }


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        ({"role": "system"}, "transcripts[3].role", "'user' or 'ai'"),
        ({"text": ""}, "transcripts[3].text", "1-10000"),
        ({"text": "x" * 10_001}, "transcripts[3].text", "1-10000"),
        ({"text": "   "}, "transcripts[3].text", "whitespace"),
        ({"text": "a\x00b"}, "transcripts[3].text", "U+0000"),
        ({"text": "a\ud800b"}, "transcripts[3].text", "U+D800"),
        ({"timestamp": "yesterday"}, "transcripts[3].timestamp", "RFC 3339"),
        ({"timestamp": "2026-04-16T10:00:03"}, "transcripts[3].timestamp", "RFC 3339"),
        ({"timestamp": "2026-02-30T10:00:03Z"}, "transcripts[3].timestamp", "valid"),
        ({"timestamp": "2026-04-16T09:00:00Z"}, "transcripts[3].timestamp", "earlier"),
    ],
)
def test_a_bad_entry_is_named_by_its_index(bad: dict[str, str], field: str, reason: str) -> None:
    raws = [entry(i) for i in range(6)]
    raws[3] = msgspec.structs.replace(raws[3], **bad)
    error = rule(raws)
    assert error.field == field and reason in error.reason


def test_text_of_exactly_the_limits_and_line_breaks_are_fine() -> None:
    check_entries([entry(0, text="x"), entry(1, text="é" * 10_000), entry(2, text="a\nb\tc")])


def test_at_most_5000_entries() -> None:
    error = rule([entry(0)] * (MAX_ENTRIES + 1))
    assert error.field == "transcripts" and "5000" in error.reason
    assert len(check_entries([entry(0)] * MAX_ENTRIES)) == MAX_ENTRIES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-04-16T10:00:03Z", T0 + timedelta(seconds=3)),
        ("2026-04-16T12:00:03+02:00", T0 + timedelta(seconds=3)),
        ("2026-04-16t10:00:03.5z", T0 + timedelta(seconds=3.5)),
        ("2026-04-16T10:00:03.123456789Z", T0 + timedelta(seconds=3, microseconds=123456)),
    ],
)
def test_rfc3339_timestamps(text: str, expected: datetime) -> None:
    assert parse_timestamp(text, "f") == expected


def test_any_number_of_fraction_digits_is_rfc3339() -> None:
    at = parse_timestamp("2026-04-16T10:00:03." + "1" * 12 + "Z", "f")
    assert at == T0 + timedelta(seconds=3, microseconds=111111)


@pytest.mark.parametrize(
    "text",
    [
        "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
        "9999-12-31T23:59:59-23:59",  # after year 9999 once in UTC
    ],
)
def test_times_outside_the_utc_calendar_are_refused_not_crashed(text: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        parse_timestamp(text, "transcripts[0].timestamp")
    assert caught.value.field == "transcripts[0].timestamp"
    assert "1-9999" in caught.value.reason


@given(st.datetimes(timezones=st.just(UTC)))
def test_timestamps_round_trip(at: datetime) -> None:
    assert parse_timestamp(format_timestamp(at), "f") == at


def test_a_whole_transcript_is_stored_in_bounded_batches() -> None:
    transcript = new_transcript()
    transcript.append([entry(i) for i in range(1_234)])
    transcript.finalise(T0 + timedelta(hours=1), None)
    events = transcript.collect_events()
    appended = [e for e in events if type(e).__name__ == "EntriesAppended"]
    assert [len(e.entries) for e in appended] == [500, 500, 234]  # type: ignore[attr-defined]
    assert type(events[-1]).__name__ == "Finalised"
    assert len(transcript.entries) == 1_234 and transcript.is_final


def test_batches_stay_small_in_bytes_too() -> None:
    transcript = new_transcript()
    transcript.append([entry(i, text="€" * 10_000) for i in range(60)])
    for event in transcript.collect_events()[1:]:
        encoded = msgspec.json.encode(event.entries)  # type: ignore[attr-defined]
        assert len(event.entries) <= BATCH_ENTRIES  # type: ignore[attr-defined]
        assert len(encoded) <= BATCH_BYTES


def test_appends_continue_the_index_and_the_time_order() -> None:
    transcript = new_transcript()
    transcript.append([entry(0), entry(1)])
    with pytest.raises(InvalidValue) as caught:
        transcript.append([entry(5), entry(0)])
    assert caught.value.field == "transcripts[3].timestamp"
    transcript.append([entry(2, interrupted=True)])
    assert transcript.entries[-1]["interrupted"] is True


def test_ended_before_started_is_refused_and_finalise_is_once() -> None:
    transcript = new_transcript()
    with pytest.raises(InvalidValue) as caught:
        transcript.finalise(T0 - timedelta(seconds=1), None)
    assert caught.value.field == "session_ended_at"
    transcript.finalise(T0, "client")
    transcript.finalise(T0 + timedelta(seconds=5), "idle_timeout")
    assert (transcript.ended_at, transcript.end_reason) == (T0, "client")
    with pytest.raises(TranscriptFinalised):
        transcript.append([entry(1)])


def test_a_live_transcript_id_is_derived_from_the_session() -> None:
    sid = uuid4()
    assert Transcript.live_id(sid) == Transcript.live_id(str(sid)) == live_transcript_id(str(sid))
    assert Transcript.live_id(uuid4()) != Transcript.live_id(sid)
