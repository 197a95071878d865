"""Billing periods: calendar months in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def period_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The [start, end) of the calendar month (UTC) that contains `at`."""
    at = at.astimezone(UTC)
    start = datetime(at.year, at.month, 1, tzinfo=UTC)
    end = (
        datetime(at.year + 1, 1, 1, tzinfo=UTC)
        if at.month == 12
        else datetime(at.year, at.month + 1, 1, tzinfo=UTC)
    )
    return start, end
