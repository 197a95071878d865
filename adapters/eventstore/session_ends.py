"""The ids of sessions whose end was just committed, as PostgreSQL notifications.

The append function sends `NOTIFY xentree_sessions_ended, '<id>,<id>'` in the transaction
that stores a session's Ended event, so a listener hears of it when (and only if) it
commits, without reading the event log. The realtime bridge listens, to close the socket
of a session ended elsewhere (a revoked token, the reaper, the REST API) at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from uuid import UUID

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "xentree_sessions_ended"
RECONNECT_SECONDS = 1.0


def follow_session_ends(
    conninfo: str,
    on_end: Callable[[UUID], None],
    on_listening: Callable[[], None],
    stop: threading.Event,
) -> None:
    """Call `on_end` with each ended session's id until `stop` is set. `on_listening` runs
    each time listening (re)starts: whatever ended while nobody listened is for it to find."""
    while not stop.is_set():
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                on_listening()
                while not stop.is_set():
                    for notice in conn.notifies(timeout=0.5):
                        for text in notice.payload.split(","):
                            try:
                                on_end(UUID(text))
                            except ValueError:
                                log.warning("not a session id on %s: %r", CHANNEL, text)
        except psycopg.Error:
            log.warning("listening for session ends failed; listening again", exc_info=True)
            stop.wait(RECONNECT_SECONDS)
