"""What the use-case mixins (profile, transcripts) need of the application they are mixed
into: the LiveApplication's plumbing, typed as a protocol so each mixin stays its own file."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate

from application.idempotency import IdempotencyRequest
from application.principal import Principal
from application.results import Answer
from application.settings import Settings
from domain.session import LiveSession
from domain.transcript import RawEntry

if TYPE_CHECKING:
    from application.live import Decision

A = TypeVar("A", bound=Aggregate)


class Host(Protocol):
    settings: Settings

    def load(self, cls: type[A], aggregate_id: UUID) -> A | None: ...

    def command(
        self, decide: Callable[[], Decision], idem: IdempotencyRequest | None
    ) -> Answer: ...

    def finalise_transcript(
        self,
        session_id: UUID,
        end_reason: str,
        now: Callable[[], datetime],
        cut_off: RawEntry | None = None,
    ) -> Answer: ...

    def _plan_for(self, tenant_id: str, user_id: str) -> tuple[str, int, int]: ...

    def _owned_session(self, principal: Principal, session_id: str) -> LiveSession: ...
