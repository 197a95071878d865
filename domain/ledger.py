"""A user's usage ledger for one billing period: the consistency boundary for quota.

Every command that spends or reserves entitlement (start, bill, end) saves an event on
this aggregate in the same atomic write as the session's event, so optimistic concurrency
on the ledger serialises one user's concurrent sessions: they can never overspend.
The stream is bounded by the period, so loading it never grows with a user's history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain import ids
from domain.errors import QuotaExceeded, SessionAlreadyActive


class UsageLedger(Aggregate):
    @staticmethod
    def create_id(tenant_id: str, user_id: str, period_start: datetime) -> UUID:
        return ids.ledger_id(tenant_id, user_id, period_start)

    @event("Opened")
    def __init__(
        self,
        *,
        tenant_id: str,
        user_id: str,
        period_start: datetime,
        period_end: datetime,
        plan: str,
        limit_seconds: int,
        max_session_seconds: int,
    ) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.period_start = period_start
        self.period_end = period_end
        self.plan = plan
        self.limit_seconds = limit_seconds
        self.max_session_seconds = max_session_seconds
        self.used_seconds = 0
        # session id -> (session type, started at)
        self.active: dict[str, tuple[str, datetime]] = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> UsageLedger:
        """Immutable values but for `active` (a dict of tuples) and the pending events, so
        those two are copied and the rest shared (see LiveSession.__deepcopy__)."""
        copied = object.__new__(UsageLedger)
        copied.__dict__.update(self.__dict__)
        copied.active = dict(self.active)
        copied._pending_events = list(self._pending_events)
        return copied

    @property
    def remaining_seconds(self) -> int:
        return max(0, self.limit_seconds - self.used_seconds)

    def check_can_start(self, max_concurrent: int) -> None:
        if self.remaining_seconds <= 0:
            raise QuotaExceeded(period_end=self.period_end.isoformat())
        if len(self.active) >= max_concurrent:
            oldest = min(self.active.items(), key=lambda kv: kv[1][1])[0]
            raise SessionAlreadyActive(oldest)

    def start_session(
        self, session_id: str, session_type: str, started_at: datetime, max_concurrent: int
    ) -> None:
        self.check_can_start(max_concurrent)
        self._session_activated(
            session_id=session_id, session_type=session_type, started_at=started_at
        )

    @event("SessionActivated")
    def _session_activated(
        self, *, session_id: str, session_type: str, started_at: datetime
    ) -> None:
        self.active[session_id] = (session_type, started_at)

    def charge(self, session_id: str, seconds: int, ended: bool) -> None:
        """Record seconds billed to a session, and its end. Never past the limit: the
        session aggregate decided `seconds` against `remaining_seconds`."""
        if seconds > self.remaining_seconds:
            raise QuotaExceeded(period_end=self.period_end.isoformat(), session_id=session_id)
        if ended:
            self._session_closed(session_id=session_id, seconds=seconds)
        elif seconds > 0:
            self._usage_billed(session_id=session_id, seconds=seconds)

    @event("UsageBilled")
    def _usage_billed(self, *, session_id: str, seconds: int) -> None:
        self.used_seconds += seconds

    @event("SessionClosed")
    def _session_closed(self, *, session_id: str, seconds: int) -> None:
        self.used_seconds += seconds
        self.active.pop(session_id, None)

    def change_plan(self, plan: str, limit_seconds: int, max_session_seconds: int) -> None:
        if (plan, limit_seconds, max_session_seconds) != (
            self.plan,
            self.limit_seconds,
            self.max_session_seconds,
        ):
            self._plan_changed(
                plan=plan, limit_seconds=limit_seconds, max_session_seconds=max_session_seconds
            )

    @event("PlanChanged")
    def _plan_changed(self, *, plan: str, limit_seconds: int, max_session_seconds: int) -> None:
        self.plan = plan
        self.limit_seconds = limit_seconds
        self.max_session_seconds = max_session_seconds
