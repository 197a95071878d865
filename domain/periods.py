"""Billing periods: calendar months in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


def period_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The [start, end) of the calendar month (UTC) that contains `at`."""
    at = at.astimezone(UTC)
    return _month(at.year, at.month)


@lru_cache(maxsize=256)
def _month(year: int, month: int) -> tuple[datetime, datetime]:
    """The month's bounds, made once (every quota read and command asks)."""
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC) if month == 12 else datetime(
        year, month + 1, 1, tzinfo=UTC
    )
    return start, end
