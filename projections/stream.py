"""What every projection sees of an event, and the per-aggregate version rule that makes
applying an event idempotent: an aggregate's events apply one after another, by version."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Protocol


class Event(Protocol):
    """The parts of a relayed envelope a projection reads."""

    @property
    def type(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def aggregateversion(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def data(self) -> dict[str, Any]: ...


class Step(enum.Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"  # already applied: redelivered or republished
    GAP = "gap"  # an earlier event of the aggregate is missing


def step(row_version: int | None, event_version: int) -> Step:
    expected = 1 if row_version is None else row_version + 1
    if event_version == expected:
        return Step.APPLY
    return Step.DUPLICATE if event_version < expected else Step.GAP


def event_name(event: Event) -> str:
    """`xentree.live.LiveSession.Billed` -> `Billed`."""
    return event.type.rpartition(".")[2]


def timestamp(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
