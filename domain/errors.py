"""Domain exceptions: each names a broken rule; adapters map them to problem answers."""

from __future__ import annotations


class DomainError(Exception):
    """A command was refused by a business rule.

    `event_position` is set when the refusal came with a change that was saved first (a
    heartbeat that ran out the quota ended the session): the position of its last event,
    which the answer reports like any other command's."""

    event_position: int | None = None


class QuotaExceeded(DomainError):
    def __init__(self, *, period_end: str, session_id: str | None = None) -> None:
        super().__init__("the monthly live quota is used up")
        self.period_end = period_end
        self.session_id = session_id


class SessionAlreadyActive(DomainError):
    def __init__(self, session_id: str) -> None:
        super().__init__("the user already has the maximum number of active sessions")
        self.session_id = session_id


class SessionNotActive(DomainError):
    def __init__(self, session_id: str, end_reason: str) -> None:
        super().__init__(f"the session has ended ({end_reason})")
        self.session_id = session_id
        self.end_reason = end_reason


class NotFound(DomainError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class ScopeNotHeld(DomainError):
    """A caller asked to hand on a scope it does not hold itself (a grant, an API key)."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"the caller does not hold the scope {scope}")
        self.scope = scope


class InvalidValue(DomainError):
    """A value broke a domain rule (nickname, plan, ...); `field` names the input."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason
