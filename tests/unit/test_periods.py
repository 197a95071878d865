"""Billing periods: calendar months in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.periods import period_bounds


@pytest.mark.parametrize(
    ("at", "start", "end"),
    [
        (datetime(2024, 5, 17, 12, 30, tzinfo=UTC), (2024, 5, 1), (2024, 6, 1)),
        (datetime(2024, 5, 1, 0, 0, tzinfo=UTC), (2024, 5, 1), (2024, 6, 1)),
        (datetime(2024, 5, 31, 23, 59, 59, 999_999, tzinfo=UTC), (2024, 5, 1), (2024, 6, 1)),
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), (2024, 12, 1), (2025, 1, 1)),
        (datetime(2024, 12, 1, tzinfo=UTC), (2024, 12, 1), (2025, 1, 1)),
        (datetime(2025, 1, 1, tzinfo=UTC), (2025, 1, 1), (2025, 2, 1)),
        (datetime(2024, 2, 29, 18, tzinfo=UTC), (2024, 2, 1), (2024, 3, 1)),
        (datetime(2023, 2, 28, 18, tzinfo=UTC), (2023, 2, 1), (2023, 3, 1)),
        (datetime(2024, 11, 30, 23, tzinfo=UTC), (2024, 11, 1), (2024, 12, 1)),
    ],
)
def test_calendar_month_in_utc(
    at: datetime, start: tuple[int, int, int], end: tuple[int, int, int]
) -> None:
    s, e = period_bounds(at)
    assert s == datetime(*start, tzinfo=UTC)
    assert e == datetime(*end, tzinfo=UTC)
    assert s.utcoffset() == timedelta(0)
    assert e.utcoffset() == timedelta(0)


def test_non_utc_input_is_converted_to_utc_first() -> None:
    # 00:30 on 1 March in UTC+2 is still 29 February in UTC.
    plus_two = timezone(timedelta(hours=2))
    s, e = period_bounds(datetime(2024, 3, 1, 0, 30, tzinfo=plus_two))
    assert (s, e) == (datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC))

    # 20:00 on 31 December in UTC-5 is already 1 January in UTC.
    minus_five = timezone(timedelta(hours=-5))
    s, e = period_bounds(datetime(2024, 12, 31, 20, 0, tzinfo=minus_five))
    assert (s, e) == (datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC))

    # 23:00 on 31 December in UTC-1 is exactly the start of January in UTC.
    minus_one = timezone(timedelta(hours=-1))
    s, _ = period_bounds(datetime(2024, 12, 31, 23, 0, tzinfo=minus_one))
    assert s == datetime(2025, 1, 1, tzinfo=UTC)


@given(
    moment=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 1), timezones=st.just(UTC)
    ),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
)
def test_bounds_contain_the_moment_and_are_one_month_apart(
    moment: datetime, offset_minutes: int
) -> None:
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    start, end = period_bounds(local)
    assert (start, end) == period_bounds(moment)  # the same instant, the same period
    assert start <= moment < end
    assert start.day == 1 and end.day == 1
    assert (start.hour, start.minute, start.second, start.microsecond) == (0, 0, 0, 0)
    assert start.tzinfo == UTC and end.tzinfo == UTC
    assert (end.year * 12 + end.month) - (start.year * 12 + start.month) == 1
    assert 28 <= (end - start).days <= 31
    # Consecutive periods tile time: the end starts the next period.
    assert period_bounds(end)[0] == end
    assert period_bounds(end - timedelta(microseconds=1)) == (start, end)
