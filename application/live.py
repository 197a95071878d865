"""Session, quota and plan use cases: get → decide → save, atomically, with retry."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate, DomainEventProtocol, MutableOrImmutableAggregate
from eventsourcing.persistence import RecordConflictError, Recording, StoredEvent

from application.idempotency import (
    REFUSED,
    IdempotencyRequest,
    IdempotencyStore,
    refusal_body,
    refused_again,
    replay,
)
from application.integration import IntegrationUseCases
from application.principal import Principal
from application.profile import ProfileUseCases
from application.results import (
    Answer,
    ApiKeyInfo,
    HeartbeatAccepted,
    PlanAssigned,
    SessionEnded,
    SessionStarted,
)
from application.settings import Settings
from application.transcripts import TranscriptUseCases
from domain.account import Account
from domain.api_key import ApiKey
from domain.billing import END_REASONS, EndReason
from domain.errors import DomainError, InvalidValue, NotFound, QuotaExceeded, SessionNotActive
from domain.ids import account_id, api_key_id, ledger_id
from domain.ledger import UsageLedger
from domain.periods import period_bounds
from domain.session import SESSION_TYPES, LiveSession

T = TypeVar("T")
A = TypeVar("A", bound=Aggregate)

MAX_ATTEMPTS = 30
CLIENT_END_REASONS: tuple[str, ...] = ("client", "client_disconnected", "upstream_lost")


@dataclass(frozen=True)
class Reaped:
    """What the reaper did to a session: ended it (`end_reason`), or left it until `due`,
    when it will end unless a heartbeat comes first (None: nothing to wait for)."""

    end_reason: str | None
    due: datetime | None


class PairedReads(Protocol):
    """The event store's read of several aggregates' newer events in one query."""

    def select_events_after(
        self, versions: Sequence[tuple[UUID, int]]
    ) -> Sequence[StoredEvent]: ...


# What a decision hands back: the aggregates to save, the status, and the result (or an
# error to raise once the aggregates are saved).
Decision = tuple[Sequence[Aggregate], int, msgspec.Struct | Exception]


class CacheReads(threading.local):
    """Per thread: whether the decision being made may take a session and its ledger from
    the aggregate cache as they are, without asking the store for newer events first, and
    each copy it took so, with its version then (see LiveApplication.command)."""

    def __init__(self) -> None:
        self.allowed = False
        self.taken: list[tuple[Aggregate, int]] = []

    def begin(self, allowed: bool) -> list[tuple[Aggregate, int]]:
        self.allowed, self.taken = allowed, []
        return self.taken

    def take(self, *copies: Aggregate) -> None:
        self.taken += ((copy, copy.version) for copy in copies)


def unchecked(
    taken: Sequence[tuple[Aggregate, int]], aggregates: Sequence[Aggregate]
) -> list[tuple[UUID, int]]:
    """The copies in `taken` that saving `aggregates` does not check against the store, as
    (id, version when taken). Saving a copy with new events checks it: their versions must
    follow the stored ones."""
    saving = {id(a) for a in aggregates if a.pending_events}
    return [(copy.id, version) for copy, version in taken if id(copy) not in saving]


class LiveApplication(
    IntegrationUseCases, ProfileUseCases, TranscriptUseCases, Application[UUID]
):
    """The write side. Construct it with the infrastructure env from the composition root."""

    name = "xentree_live"
    snapshotting_intervals = {UsageLedger: 50, LiveSession: 50}

    def __init__(
        self,
        settings: Settings,
        env: dict[str, str] | None = None,
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        super().__init__(env=env)
        self.settings = settings
        self._cache_reads = CacheReads()
        # By default the event store's recorder keeps the answers, in the events' transaction.
        self.idempotency: IdempotencyStore = (
            idempotency if idempotency is not None else cast(IdempotencyStore, self.recorder)
        )

    # ---- plumbing -------------------------------------------------------------------

    def load(self, cls: type[A], aggregate_id: UUID) -> A | None:
        try:
            agg: Aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return agg if isinstance(agg, cls) else None

    def command(
        self,
        decide: Callable[[], Decision],
        idem: IdempotencyRequest | None,
    ) -> Answer:
        """Run a decision with optimistic concurrency: on a conflicting write, reload and
        decide again. The answer is stored with the events when an idempotency key is given.

        A decision whose outcome is an error that still changed state (a heartbeat that ran
        out the quota ends the session, then answers 402) saves first, then raises. A
        refusal is remembered under the idempotency key like any answer (with the state it
        changed), and a retry raises it again."""
        answered = self.answered(idem)
        if answered is not None:
            return answered
        for attempt in range(MAX_ATTEMPTS):
            # The first decision takes a session and its ledger as this process last saw
            # them (the aggregate cache), without asking the store for newer events first.
            # Saving them checks them: a stale one conflicts, and the decision is made
            # again from the store. Those it does not save with new events (a refusal, a
            # heartbeat with no whole second to bill) are checked after the decision
            # instead, in one query, and if one was stale the decision is made again.
            taken = self._cache_reads.begin(attempt == 0)
            try:
                try:
                    aggregates, status, outcome = decide()
                except DomainError as refusal:
                    if not self._unchanged([(a.id, version) for a, version in taken]):
                        continue
                    self._remember_refusal(idem, refusal)
                    raise
                finally:
                    self._cache_reads.allowed = False
                if not self._unchanged(unchecked(taken, aggregates)):
                    continue
                if isinstance(outcome, Exception):
                    if not isinstance(outcome, DomainError):
                        self.save(*aggregates)
                        raise outcome
                    refused = idem.record(REFUSED, refusal_body(outcome)) if idem else None
                    if not any(agg.pending_events for agg in aggregates):
                        self._remember_refusal(idem, outcome)
                        raise outcome
                    saved = self.save(*aggregates, idempotency=refused)
                    self._cache_saved(aggregates)
                    outcome.event_position = max(r.notification.id for r in saved)
                    raise outcome
                body = msgspec.json.encode(outcome)
                record = idem.record(status, body) if idem is not None else None
                if not any(agg.pending_events for agg in aggregates):
                    # Nothing new to say: the answer stands at its aggregates' last events.
                    position = self.idempotency.last_position([a.id for a in aggregates])
                    if record is not None and not self.idempotency.put(record, position):
                        return self._replay_or_raise(idem)
                    return Answer(status, body, position)
                recordings = self.save(*aggregates, idempotency=record)
                self._cache_saved(aggregates)
            except RecordConflictError:
                if idem is not None and replay(self.idempotency, idem) is not None:
                    return self._replay_or_raise(idem)
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
                continue
            return Answer(status, body, max(r.notification.id for r in recordings))
        raise RuntimeError("too much contention on one user's quota; retry")

    def save(
        self,
        *objs: MutableOrImmutableAggregate[UUID] | DomainEventProtocol[UUID] | None,
        **kwargs: Any,
    ) -> list[Recording[UUID]]:
        """The library's save, collecting an aggregate's events without its two runtime
        Protocol checks (`isinstance` against a Protocol costs ~10 µs an aggregate in Python
        3.11, a few per cent of a command's API time); anything else it collects itself."""
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for obj in objs:
            if isinstance(obj, Aggregate):
                processing_event.events.extend(obj.collect_events())
                processing_event.aggregates[obj.id] = obj
            else:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)  # the library's hook (its deprecated `notify` is not called)
        return recordings

    def _unchanged(self, versions: Sequence[tuple[UUID, int]]) -> bool:
        """Whether the store holds no event newer than these versions (one query, none
        for none)."""
        if not versions:
            return True
        return not cast(PairedReads, self.recorder).select_events_after(versions)

    def answered(self, idem: IdempotencyRequest | None) -> Answer | None:
        """The answer already given to this idempotent request, if any; a refusal given to
        it is raised again (IdempotencyMismatch when its key was used for another request)."""
        stored = replay(self.idempotency, idem)
        if stored is None:
            return None
        if stored.status == REFUSED:
            raise refused_again(stored)
        return Answer(stored.status, stored.body, stored.position)

    def _remember_refusal(self, idem: IdempotencyRequest | None, refusal: DomainError) -> None:
        """Keep a refusal that changed nothing as the answer to its idempotency key (a
        concurrent first answer under the same key wins; the caller then hears this one)."""
        if idem is not None:
            self.idempotency.put(idem.record(REFUSED, refusal_body(refusal)), None)

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        """Snapshot an aggregate that is due from memory, where it stands at the version just
        stored, rather than the library's way of reading and replaying it from the store
        again (a read and a replay on every 50th heartbeat). One saved past the due
        version in the same call is left to the library."""
        if self.snapshots is None:
            return
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            if aggregate is None:
                continue
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval is None or event.originator_version % interval:
                continue
            snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
            if aggregate.version == event.originator_version and snapshot_class is not None:
                self.snapshots.put([snapshot_class.take(aggregate)])
            else:
                self.take_snapshot(event.originator_id, event.originator_version)

    def _cache_saved(self, aggregates: Sequence[Aggregate]) -> None:
        """Saved aggregates are the freshest state there is: cache copies, so the next
        command on them (the end of a session just started) starts from the cache. An
        ended session is dropped instead: no command changes it again, and kept it would
        push live sessions and ledgers out of the cache (a burst of short sessions evicted
        every long one, whose next heartbeats then loaded them from the store)."""
        cache = self.repository.cache
        if cache is not None:
            for aggregate in aggregates:
                if isinstance(aggregate, LiveSession) and not aggregate.is_active:
                    self._uncache(aggregate.id)
                else:
                    cache.put(aggregate.id, deepcopy(aggregate))

    def _uncache(self, aggregate_id: UUID) -> None:
        cache = self.repository.cache
        if cache is not None:
            try:
                cache.get(aggregate_id, evict=True)
            except KeyError:
                pass

    def _replay_or_raise(self, idem: IdempotencyRequest | None) -> Answer:
        answer = self.answered(idem)
        assert answer is not None
        return answer

    def _plan_for(self, tenant_id: str, user_id: str) -> tuple[str, int, int]:
        account = self.load(Account, account_id(tenant_id, user_id))
        if account is not None and account.plan is not None:
            assert account.limit_seconds is not None and account.max_session_seconds is not None
            return account.plan, account.limit_seconds, account.max_session_seconds
        plan = self.settings.default_plan
        return plan, self.settings.plan_seconds(plan), self.settings.plans.max_session_seconds

    def ledger_for(self, tenant_id: str, user_id: str, at: datetime) -> UsageLedger:
        """The user's ledger for the period containing `at`, opened if new."""
        start, end = period_bounds(at)
        ledger_key = ledger_id(tenant_id, user_id, start)
        if self._cache_reads.allowed:
            cached = self._cached_copy(UsageLedger, ledger_key)
            if cached is not None:
                self._cache_reads.take(cached)
                return cached
        ledger = self.load(UsageLedger, ledger_key)
        if ledger is not None:
            return ledger
        plan, limit, max_session = self._plan_for(tenant_id, user_id)
        return UsageLedger(
            tenant_id=tenant_id,
            user_id=user_id,
            period_start=start,
            period_end=end,
            plan=plan,
            limit_seconds=limit,
            max_session_seconds=max_session,
        )

    def _owned_session(self, principal: Principal, session_id: str) -> LiveSession:
        return self._owned_session_and_ledger(principal, session_id)[0]

    def _owned_session_and_ledger(
        self, principal: Principal, session_id: str
    ) -> tuple[LiveSession, UsageLedger]:
        try:
            sid = UUID(session_id)
        except ValueError:
            raise NotFound("session") from None
        found = self._session_and_ledger(sid)
        if found is None or not found[0].owned_by(principal.tenant_id, principal.user_id):
            raise NotFound("session")
        return found

    def _session_and_ledger(self, session_id: UUID) -> tuple[LiveSession, UsageLedger] | None:
        """A session and its ledger, as they are now. Both are usually in the aggregate
        cache, and then one query brings both up to date (the library's loads would ask
        once for each); in a command's first decision, none (see `command`)."""
        session = self._cached_copy(LiveSession, session_id)
        ledger = self._cached_copy(UsageLedger, session.ledger_id) if session else None
        if session is None or ledger is None:
            loaded = self.load(LiveSession, session_id)
            return None if loaded is None else (loaded, self._ledger_of(loaded))
        if self._cache_reads.allowed:
            self._cache_reads.take(session, ledger)
        else:
            self._fast_forward([session, ledger])
        return session, ledger

    def _cached_copy(self, cls: type[A], aggregate_id: UUID) -> A | None:
        """A copy of the cached aggregate, taken under the repository's fast-forward lock
        for it (its loads update cached aggregates in place)."""
        repository = self.repository
        if repository.cache is None:
            return None
        lock = repository._use_fastforward_lock(aggregate_id)
        try:
            with lock:
                try:
                    found = repository.cache.get(aggregate_id)
                except KeyError:
                    return None
                return deepcopy(found) if isinstance(found, cls) else None
        finally:
            repository._disuse_fastforward_lock(aggregate_id)

    def _fast_forward(self, copies: Sequence[Aggregate]) -> None:
        """Apply the newer stored events to copies of cached aggregates, in one query, and
        cache the fresh state."""
        reader = cast(PairedReads, self.recorder)
        newer: dict[UUID, list[StoredEvent]] = {a.id: [] for a in copies}
        for stored in reader.select_events_after([(a.id, a.version) for a in copies]):
            newer[UUID(str(stored.originator_id))].append(stored)
        for aggregate in copies:
            if not newer[aggregate.id]:
                continue
            for stored in newer[aggregate.id]:
                event = self.mapper.to_domain_event(stored)
                assert isinstance(event, Aggregate.Event)
                event.mutate(aggregate)
            assert self.repository.cache is not None
            self.repository.cache.put(aggregate.id, deepcopy(aggregate))

    # ---- use cases ------------------------------------------------------------------

    def start_session(
        self,
        principal: Principal,
        session_type: str,
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        if session_type not in SESSION_TYPES:
            raise InvalidValue("session_type", "must be 'voice' or 'avatar'")

        def decide() -> Decision:
            at = now()
            ledger = self.ledger_for(principal.tenant_id, principal.user_id, at)
            session = LiveSession(
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                session_type=session_type,
                started_at=at,
                ledger_id=ledger.id,
                max_session_seconds=ledger.max_session_seconds,
                idle_timeout_seconds=self.settings.idle_timeout_seconds,
                credential=principal.credential,
                credential_id=principal.credential_id,
            )
            ledger.start_session(
                str(session.id), session_type, at, self.settings.max_concurrent_sessions
            )
            result = SessionStarted(
                session_id=str(session.id),
                session_type=session_type,
                started_at=at,
                heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds,
                idle_timeout_seconds=self.settings.idle_timeout_seconds,
                remaining_seconds=ledger.remaining_seconds,
                session_ends_at=session.ends_at(ledger.remaining_seconds),
                period_end=ledger.period_end,
                realtime_url=self.settings.realtime_url,
            )
            return (session, ledger), 201, result

        return self.command(decide, idem)

    def heartbeat(
        self,
        principal: Principal,
        session_id: str,
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        def decide() -> Decision:
            session, ledger = self._owned_session_and_ledger(principal, session_id)
            if not session.is_active:
                raise self._not_active_error(session, ledger)
            at = now()
            bill = session.decide_bill(at, ledger.remaining_seconds)
            session.apply_bill(bill, seen_at=at, remaining_quota=ledger.remaining_seconds)
            ledger.charge(session_id, bill.seconds, ended=bill.end_reason is not None)
            if bill.end_reason is not None:
                # The session ended on this heartbeat: saved, then the client is told why.
                return (session, ledger), 200, self._not_active_error(session, ledger)
            result = HeartbeatAccepted(
                session_id=session_id,
                billed_seconds=bill.seconds,
                session_seconds=session.session_seconds,
                remaining_seconds=ledger.remaining_seconds,
                session_ends_at=session.ends_at(ledger.remaining_seconds),
            )
            return (session, ledger), 200, result

        return self.command(decide, idem)

    def end_session(
        self,
        principal: Principal,
        session_id: str,
        reason: str,
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        if reason not in CLIENT_END_REASONS:
            raise InvalidValue("reason", f"must be one of {', '.join(CLIENT_END_REASONS)}")

        def decide() -> Decision:
            session, ledger = self._owned_session_and_ledger(principal, session_id)
            if session.is_active:
                self._end(session, ledger, reason, now())  # type: ignore[arg-type]
            assert session.ended_at is not None and session.end_reason is not None
            left = session.remaining_at_end
            result = SessionEnded(
                session_id=session_id,
                ended_at=session.ended_at,
                end_reason=session.end_reason,
                session_seconds=session.session_seconds,
                remaining_seconds=ledger.remaining_seconds if left is None else left,
            )
            return (session, ledger), 200, result

        return self.command(decide, idem)

    def end_for(self, session_id: UUID, reason: EndReason, now: Callable[[], datetime]) -> bool:
        """End a session on the server's own authority (revoked token, lost upstream).
        True if this call ended it."""
        if reason not in END_REASONS:
            raise InvalidValue("reason", "unknown end reason")
        for _ in range(MAX_ATTEMPTS):
            found = self._session_and_ledger(session_id)
            if found is None or not found[0].is_active:
                return False
            session, ledger = found
            self._end(session, ledger, reason, now())
            try:
                self.save(session, ledger)
            except RecordConflictError:
                continue
            self._uncache(session.id)
            # Its transcript is the bridge's to finalise (with a turn the end cut off); if
            # the bridge is gone too, the reaper's sweep of abandoned transcripts does.
            return True
        return False

    def reap(self, session_id: UUID, now: Callable[[], datetime]) -> Reaped:
        """End the session if it is idle or past a limit; else say when it will be due."""
        for _ in range(MAX_ATTEMPTS):
            found = self._session_and_ledger(session_id)
            if found is None or not found[0].is_active:
                return Reaped(None, None)
            session, ledger = found
            bill = session.decide_reap(now(), ledger.remaining_seconds)
            if bill is None:
                return Reaped(None, session.reap_due(ledger.remaining_seconds))
            session.apply_bill(bill, remaining_quota=ledger.remaining_seconds)
            ledger.charge(str(session.id), bill.seconds, ended=True)
            try:
                self.save(session, ledger)
            except RecordConflictError:
                continue
            self._uncache(session.id)
            assert bill.end_reason is not None
            if bill.end_reason == "idle_timeout":
                # Nobody heartbeats it, so no realtime bridge holds it any more (a bridge
                # heartbeats while its socket is open): finalise its transcript now. Other
                # ends (the quota, the maximum length) may come while a bridge still holds
                # the session, and the bridge finalises it with the turn the end cut off:
                # finalising it here first would lose that turn.
                self.finalise_abandoned_transcript(session_id, now)
            return Reaped(bill.end_reason, None)
        return Reaped(None, None)

    def assign_plan(
        self,
        tenant_id: str,
        user_id: str,
        plan: str,
        seconds: int | None,
        max_session_seconds: int | None,
        now: Callable[[], datetime],
    ) -> Answer:
        def decide() -> Decision:
            limit = seconds if seconds is not None else self._plan_limit(plan)
            max_session = max_session_seconds or self.settings.plans.max_session_seconds
            account = self.load(Account, account_id(tenant_id, user_id)) or Account(
                tenant_id=tenant_id, user_id=user_id
            )
            account.assign_plan(plan, limit, max_session)
            # The current period's ledger takes the new entitlement at once.
            ledger = self.ledger_for(tenant_id, user_id, now())
            ledger.change_plan(plan, limit, max_session)
            result = PlanAssigned(
                tenant_id=tenant_id,
                user_id=user_id,
                plan=plan,
                limit_seconds=limit,
                max_session_seconds=max_session,
            )
            return (account, ledger), 200, result

        return self.command(decide, None)

    def _plan_limit(self, plan: str) -> int:
        if plan == "custom":
            raise InvalidValue("seconds", "a custom plan needs --seconds")
        if plan not in ("free", "pro", "enterprise"):
            raise InvalidValue("plan", f"unknown plan {plan!r}")
        return self.settings.plan_seconds(plan)

    def issue_api_key(
        self,
        principal: Principal,
        key_id: str,
        key_hash: str,
        name: str,
        scopes: list[str],
        now: Callable[[], datetime],
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        """Record a new key (its hash only). The answer holds no secret: the caller adds
        the key to the response it shows once, and an idempotent replay shows it no more."""

        def decide() -> Decision:
            key = ApiKey(
                key_id=key_id,
                tenant_id=principal.tenant_id,
                user_id=principal.user_id,
                key_hash=key_hash,
                scopes=sorted(scopes),
                name=name,
                issued_at=now(),
            )
            return (key,), 201, self._key_info(key)

        return self.command(decide, idem)

    def revoke_api_key(
        self, principal: Principal, key_id: str, now: Callable[[], datetime]
    ) -> Answer:
        def decide() -> Decision:
            key = self.load(ApiKey, api_key_id(key_id))
            if key is None or not (
                key.tenant_id == principal.tenant_id and key.user_id == principal.user_id
            ):
                raise NotFound("api key")
            key.revoke(now())
            return (key,), 200, self._key_info(key)

        return self.command(decide, None)

    @staticmethod
    def _key_info(key: ApiKey) -> ApiKeyInfo:
        return ApiKeyInfo(
            key_id=key.key_id,
            name=key.name,
            scopes=list(key.scopes),
            created_at=key.issued_at,
            revoked_at=key.revoked_at,
        )

    # ---- helpers --------------------------------------------------------------------

    def _ledger_of(self, session: LiveSession) -> UsageLedger:
        ledger = self.load(UsageLedger, session.ledger_id)
        if ledger is None:
            raise RuntimeError(f"ledger {session.ledger_id} of session {session.id} is missing")
        return ledger

    def _end(
        self, session: LiveSession, ledger: UsageLedger, reason: EndReason, at: datetime
    ) -> None:
        before = session.session_seconds
        session.end(reason, at, ledger.remaining_seconds)
        ledger.charge(str(session.id), session.session_seconds - before, ended=True)

    @staticmethod
    def _not_active_error(session: LiveSession, ledger: UsageLedger) -> Exception:
        if session.end_reason == "quota_exceeded":
            return QuotaExceeded(
                period_end=ledger.period_end.isoformat(), session_id=str(session.id)
            )
        return SessionNotActive(str(session.id), session.end_reason or "client")

    def session_view(self, principal: Principal, session_id: str) -> dict[str, Any]:
        """The write side's view of one session, for tests and the reaper."""
        return self._owned_session(principal, session_id).summary()
