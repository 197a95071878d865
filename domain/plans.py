"""Plans and their entitlements."""

from __future__ import annotations

from typing import Final, Literal

PlanName = Literal["free", "pro", "enterprise", "custom"]
PLAN_NAMES: Final[tuple[str, ...]] = ("free", "pro", "enterprise", "custom")
# The largest entitlement or session length a plan may give, in seconds (about 31 years):
# far past any real plan, and far inside what every read model and timestamp can hold, so
# a mistyped value is refused here instead of becoming an event no projection can apply.
MAX_PLAN_SECONDS: Final[int] = 10**9
