"""The idle-session reaper: ends sessions idle past the timeout or past a limit.

Safe with several reapers: each end is a command on the session and its ledger under
optimistic concurrency, so two reapers (or a reaper and a late heartbeat) cannot both end
or bill the same session; the loser reloads and finds it already ended."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

from adapters.bootstrap import build_application, recorder_of
from application.live import LiveApplication
from application.settings import Settings

log = logging.getLogger("xentree.reaper")


def active_session_ids(app: LiveApplication) -> list[UUID]:
    with app.recorder.datastore.get_connection() as conn, conn.cursor() as curs:  # type: ignore[attr-defined]
        curs.execute("SELECT session_id FROM active_sessions ORDER BY since")
        return [row["session_id"] for row in curs.fetchall()]


def reap_once(app: LiveApplication, now: Callable[[], datetime]) -> dict[str, str]:
    """One pass over the active sessions; the ones ended, with their reasons."""
    ended: dict[str, str] = {}
    # Revoke ends its token's sessions before answering; a session whose start committed
    # just after that sweep (it authenticated before the revoke) is ended here.
    for session_id in recorder_of(app).sessions_with_revoked_tokens():
        if app.end_for(session_id, "token_revoked", now):
            ended[str(session_id)] = "token_revoked"
    for session_id in active_session_ids(app):
        reason = app.reap(session_id, now)
        if reason is not None:
            ended[str(session_id)] = reason
    return ended


def run_reaper(settings: Settings, stop: threading.Event, now: Callable[[], datetime]) -> None:
    app = build_application(settings)
    try:
        while not stop.is_set():
            try:
                for session_id, reason in reap_once(app, now).items():
                    log.info("ended session %s: %s", session_id, reason)
            except Exception:  # keep reaping after a database blip; the next pass retries
                log.exception("reaper pass failed")
            stop.wait(settings.reaper_interval_seconds)
    finally:
        app.close()
