"""The live session aggregate: started, billed in whole seconds, ended once."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.billing import (
    Bill,
    EndReason,
    bill_gap,
    reap_decision,
    reap_due,
    session_ends_at,
)
from domain.errors import SessionNotActive

SESSION_TYPES: tuple[str, ...] = ("voice", "avatar")


class LiveSession(Aggregate):
    @event("Started")
    def __init__(
        self,
        *,
        tenant_id: str,
        user_id: str,
        session_type: str,
        started_at: datetime,
        ledger_id: UUID,
        max_session_seconds: int,
        idle_timeout_seconds: int,
        credential: str,
        credential_id: str | None,
    ) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.session_type = session_type
        self.started_at = started_at
        self.ledger_id = ledger_id
        self.max_session_seconds = max_session_seconds
        self.idle_timeout_seconds = idle_timeout_seconds
        self.credential = credential
        self.credential_id = credential_id
        self.bill_point = started_at
        # The last heartbeat: the idle window runs from here (the bill point may trail it
        # by the fraction of a second not yet billed).
        self.last_seen = started_at
        self.session_seconds = 0
        self.ended_at: datetime | None = None
        self.end_reason: str | None = None
        self.remaining_at_end: int | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> LiveSession:
        """Every attribute is an immutable value, so a copy needs only its own list of
        pending events (the repository copies each cached aggregate a command loads: a
        generic deepcopy of the datetimes and UUIDs is most of a load's CPU)."""
        copied = object.__new__(LiveSession)
        copied.__dict__.update(self.__dict__)
        copied._pending_events = list(self._pending_events)
        return copied

    @property
    def is_active(self) -> bool:
        return self.ended_at is None

    def owned_by(self, tenant_id: str, user_id: str) -> bool:
        return self.tenant_id == tenant_id and self.user_id == user_id

    def check_active(self) -> None:
        if not self.is_active:
            raise SessionNotActive(str(self.id), self.end_reason or "client")

    def ends_at(self, remaining_quota: int) -> datetime:
        return session_ends_at(
            bill_point=self.bill_point,
            remaining_quota=remaining_quota,
            session_seconds=self.session_seconds,
            max_session_seconds=self.max_session_seconds,
        )

    def decide_bill(self, now: datetime, remaining_quota: int) -> Bill:
        """The bill of a heartbeat (or end) at `now`. A session already silent for the
        idle timeout is over, exactly as if the reaper had come first: a late heartbeat
        cannot revive it, so the outcome never depends on which of the two runs first."""
        self.check_active()
        overdue = self.decide_reap(now, remaining_quota)
        if overdue is not None:
            return overdue
        return bill_gap(
            bill_point=self.bill_point,
            now=now,
            idle_timeout_seconds=self.idle_timeout_seconds,
            remaining_quota=remaining_quota,
            session_seconds=self.session_seconds,
            max_session_seconds=self.max_session_seconds,
        )

    def decide_reap(self, now: datetime, remaining_quota: int) -> Bill | None:
        if not self.is_active:
            return None
        return reap_decision(
            bill_point=self.bill_point,
            now=now,
            idle_timeout_seconds=self.idle_timeout_seconds,
            remaining_quota=remaining_quota,
            session_seconds=self.session_seconds,
            max_session_seconds=self.max_session_seconds,
            last_seen=self.last_seen,
        )

    def reap_due(self, remaining_quota: int) -> datetime | None:
        """When the reaper should end this session if no heartbeat comes (None: ended)."""
        if not self.is_active:
            return None
        return reap_due(
            bill_point=self.bill_point,
            idle_timeout_seconds=self.idle_timeout_seconds,
            remaining_quota=remaining_quota,
            session_seconds=self.session_seconds,
            max_session_seconds=self.max_session_seconds,
            last_seen=self.last_seen,
        )

    def apply_bill(
        self, bill: Bill, seen_at: datetime | None = None, remaining_quota: int | None = None
    ) -> None:
        """Record a bill decided by `decide_bill`/`decide_reap` (ending the session if it
        reached a limit). A zero-second bill that moves nothing records nothing.
        `remaining_quota` is what the bill was decided against: an ending session records
        the quota left after it, which every later end answer repeats."""
        seen_moves = (
            bill.end_reason is None and seen_at is not None and seen_at > self.last_seen
        )
        if bill.seconds > 0 or bill.bill_point != self.bill_point or seen_moves:
            at = seen_at if bill.end_reason is None and seen_at is not None else bill.bill_point
            self._billed(seconds=bill.seconds, bill_point=bill.bill_point, at=at)
        if bill.end_reason is not None and bill.ended_at is not None:
            left = None if remaining_quota is None else max(0, remaining_quota - bill.seconds)
            self._ended(reason=bill.end_reason, ended_at=bill.ended_at, remaining_seconds=left)

    def end(self, reason: EndReason, now: datetime, remaining_quota: int) -> None:
        """End the session at `now`, billing the last gap first. If a limit was reached
        before `now`, the session ended there, for that limit's reason."""
        bill = self.decide_bill(now, remaining_quota)
        if bill.end_reason is None:
            bill = Bill(seconds=bill.seconds, bill_point=bill.bill_point, end_reason=reason,
                        ended_at=now)
        self.apply_bill(bill, remaining_quota=remaining_quota)

    class Billed(Aggregate.Event):
        """`seconds` billed up to `bill_point`, at a heartbeat seen `at`.

        Version 2 added `at` (the heartbeat's moment, from which the idle window runs).
        Version 1 rows have none: an old heartbeat's moment is its bill point."""

        class_version = 2

        seconds: int
        bill_point: datetime
        at: datetime

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["at"] = state["bill_point"]

    @event(Billed)
    def _billed(self, *, seconds: int, bill_point: datetime, at: datetime) -> None:
        self.session_seconds += seconds
        self.bill_point = bill_point
        self.last_seen = max(self.last_seen, at)

    class Ended(Aggregate.Event):
        """The session ended at `ended_at` for `reason`, leaving `remaining_seconds` of the
        period's quota (what its end answer says, however often it is asked).

        Version 2 added `remaining_seconds`; version 1 rows have none, and their end
        answer reads the ledger as it is now."""

        class_version = 2

        reason: str
        ended_at: datetime
        remaining_seconds: int | None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["remaining_seconds"] = None

    @event(Ended)
    def _ended(self, *, reason: str, ended_at: datetime, remaining_seconds: int | None) -> None:
        self.ended_at = ended_at
        self.end_reason = reason
        self.remaining_at_end = remaining_seconds

    def summary(self) -> dict[str, Any]:
        return {
            "session_id": str(self.id),
            "session_type": self.session_type,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "session_seconds": self.session_seconds,
        }
