"""When the bridge acts on a session's deadline (`session_ends_at`): pure arithmetic.

The bridge sends `quota.warning` once WARNING_SECONDS before the end, and at the end runs
a heartbeat, which bills exactly to the limit and ends the session. It wakes END_MARGIN
after the deadline so that the heartbeat's server time is surely past it (a heartbeat a
hair early bills a second short and ends nothing; the bridge then simply asks again).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal, NamedTuple

WARNING_SECONDS = 60
END_MARGIN_SECONDS = 0.05

Action = Literal["warn", "end", "wait"]


class Step(NamedTuple):
    action: Action
    delay: float  # seconds to wait first (0 for warn and end)


def next_step(now: datetime, ends_at: datetime, warned: bool) -> Step:
    left = (ends_at - now).total_seconds()
    if left <= 0:
        return Step("end", 0.0)
    if not warned:
        if left <= WARNING_SECONDS:
            return Step("warn", 0.0)
        return Step("wait", left - WARNING_SECONDS)
    return Step("wait", left + END_MARGIN_SECONDS)


def seconds_left(now: datetime, ends_at: datetime) -> int:
    """Whole seconds until the deadline, rounded up (a warning never says 0 too early)."""
    return max(0, math.ceil((ends_at - now).total_seconds()))
