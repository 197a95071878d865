"""The profile read model: one row per account (a user's plan and nickname)."""

from __future__ import annotations

import msgspec

from projections.stream import Event, Step, event_name, step

AGGREGATE_TYPE = "Account"


class ProfileRow(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: str
    user_id: str
    nickname: str | None
    plan: str | None
    version: int
    position: int


def apply(row: ProfileRow | None, event: Event) -> ProfileRow | None:
    """The row after `event`, or None when the event does not change it (a duplicate, a
    gap, or another aggregate's event)."""
    if event.type.rpartition(".")[0] != f"xentree.live.{AGGREGATE_TYPE}":
        return None
    if step(row.version if row else None, event.aggregateversion) is not Step.APPLY:
        return None
    d, name = event.data, event_name(event)
    if row is None:
        if name != "Registered":
            return None
        return ProfileRow(
            tenant_id=d["tenant_id"],
            user_id=d["user_id"],
            nickname=None,
            plan=None,
            version=event.aggregateversion,
            position=event.position,
        )
    tracked = msgspec.structs.replace(row, version=event.aggregateversion, position=event.position)
    if name == "PlanAssigned":
        return msgspec.structs.replace(tracked, plan=d["plan"])
    if name == "NicknameChanged":
        return msgspec.structs.replace(tracked, nickname=d["nickname"])
    return tracked
