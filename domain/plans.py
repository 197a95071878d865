"""Plans and their entitlements."""

from __future__ import annotations

from typing import Final, Literal

PlanName = Literal["free", "pro", "enterprise", "custom"]
PLAN_NAMES: Final[tuple[str, ...]] = ("free", "pro", "enterprise", "custom")
