"""Idempotent commands: a retry with the same key and request returns the first answer.

The answer is stored in the same transaction as the command's events (the event store
adapter writes the record passed to `save(..., idempotency=...)`), so a crash can never
leave an effect without its answer, or an answer without its effect. Dedupe is durable.

A refusal is an answer too: a retry of a start refused for an active session is refused
the same way after that session has ended, not carried out then. It is stored as the
domain error to raise again (status `REFUSED`), which the adapters map to the same problem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol
from uuid import UUID

import msgspec

from domain.errors import DomainError

# The stored status of a refusal; its body is a `Refusal`.
REFUSED = 0


class IdempotencyMismatch(Exception):
    """The key was used before with a different request."""


class StoredAnswer(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    position: int | None


class IdempotencyRecord(msgspec.Struct, frozen=True):
    owner: str  # who may replay it: the caller's tenant/user
    key: str
    fingerprint: str  # hash of method, path and body
    status: int
    body: bytes


class IdempotencyStore(Protocol):
    def find(self, owner: str, key: str) -> tuple[str, StoredAnswer] | None:
        """The fingerprint and stored answer for (owner, key), if any."""

    def put(self, record: IdempotencyRecord, position: int | None) -> bool:
        """Store an answer for a command that wrote no events; False if the key exists."""

    def last_position(self, aggregate_ids: Sequence[UUID]) -> int | None:
        """Where an answer that wrote no events stands: the position of the last event of
        the aggregates it decided on (None if they have none)."""


def owner_of(tenant_id: str, user_id: str) -> str:
    """Whose answers a key names. Ids never hold white space, so no two (tenant, user)
    pairs share an owner."""
    return f"{tenant_id} {user_id}"


def fingerprint(method: str, path: str, body: bytes) -> str:
    h = hashlib.sha256()
    h.update(method.encode())
    h.update(b"\x00")
    h.update(path.encode())
    h.update(b"\x00")
    h.update(body)
    return h.hexdigest()


class IdempotencyRequest(msgspec.Struct, frozen=True):
    owner: str
    key: str
    fingerprint: str

    def record(self, status: int, body: bytes) -> IdempotencyRecord:
        return IdempotencyRecord(
            owner=self.owner, key=self.key, fingerprint=self.fingerprint, status=status, body=body
        )


class Refusal(msgspec.Struct, frozen=True):
    error: str  # the DomainError class
    args: list[Any]
    fields: dict[str, Any]


def refusal_body(exc: DomainError) -> bytes:
    fields = {k: v for k, v in vars(exc).items() if k != "event_position"}
    return msgspec.json.encode(Refusal(type(exc).__name__, list(exc.args), fields))


def refused_again(answer: StoredAnswer) -> DomainError:
    """The domain error a stored refusal was, as it was raised the first time."""
    refusal = msgspec.json.decode(answer.body, type=Refusal)
    cls = {c.__name__: c for c in _domain_errors(DomainError)}[refusal.error]
    exc = cls.__new__(cls)
    Exception.__init__(exc, *refusal.args)
    exc.__dict__.update(refusal.fields)
    exc.event_position = answer.position
    return exc


def _domain_errors(cls: type[DomainError]) -> Iterator[type[DomainError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _domain_errors(sub)


def replay(store: IdempotencyStore, request: IdempotencyRequest | None) -> StoredAnswer | None:
    """The stored answer for this request, None if the key is new.

    Raises IdempotencyMismatch when the key was used for another request."""
    if request is None:
        return None
    found = store.find(request.owner, request.key)
    if found is None:
        return None
    stored_fingerprint, answer = found
    if stored_fingerprint != request.fingerprint:
        raise IdempotencyMismatch(request.key)
    return answer
