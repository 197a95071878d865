"""The idle-session reaper: ends sessions idle past the timeout or past a limit.

Each pass loads only the sessions that may be due (see `Reaper`). Safe with several
reapers: each end is a command on the session and its ledger under
optimistic concurrency, so two reapers (or a reaper and a late heartbeat) cannot both end
or bill the same session; the loser reloads and finds it already ended."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

from adapters.bootstrap import build_application, recorder_of
from application.live import LiveApplication
from application.settings import Settings

log = logging.getLogger("xentree.reaper")


def active_session_ids(app: LiveApplication) -> list[UUID]:
    with app.recorder.datastore.get_connection() as conn, conn.cursor() as curs:  # type: ignore[attr-defined]
        curs.execute("SELECT session_id FROM active_sessions ORDER BY since")
        return [row["session_id"] for row in curs.fetchall()]


# A session the server ended while a realtime bridge held it (its quota ran out, its token
# was revoked) is the bridge's to finalise, with the turn the end cut off, within moments.
# A live transcript still recording this long after its session ended has lost its bridge:
# the reaper finalises it. Sessions reaped idle have no bridge; theirs is finalised at once.
ABANDONED_AFTER_SECONDS = 10.0
SWEEP_SECONDS = 2.0


def abandoned_transcripts(app: LiveApplication, ended_before: datetime) -> list[UUID]:
    """Sessions that ended before `ended_before` whose live transcript is still recording,
    as the read models see them (a lagging read model only delays the sweep)."""
    with app.recorder.datastore.get_connection() as conn, conn.cursor() as curs:  # type: ignore[attr-defined]
        curs.execute(
            "SELECT s.session_id FROM rm_transcripts t "
            "JOIN rm_sessions s ON s.session_id::text = t.session_id "
            "WHERE t.status = 'recording' AND s.ended_at < %s ORDER BY s.ended_at LIMIT 500",
            (ended_before,),
        )
        return [row["session_id"] for row in curs.fetchall()]


# A session's due time can only come sooner when another session of its user spends the
# quota it was counting on, or a plan shrinks it: look at every session about this often
# anyway (spread over the interval, so the rechecks do not come in one burst).
RECHECK_SECONDS = 30.0


class Reaper:
    """Passes over the active sessions, loading each only when it may be due: when it was
    last looked at, the reaper learned when it would end if no heartbeat came, and a
    heartbeat only moves that later. The bill never depends on when the reaper comes (it
    is decided from the session's own history), only how soon an ended session says so."""

    def __init__(self, app: LiveApplication, now: Callable[[], datetime]) -> None:
        self._app = app
        self._now = now
        self._due: dict[UUID, datetime] = {}

    def pass_once(self) -> dict[str, str]:
        """One pass; the sessions it ended, with their reasons."""
        ended: dict[str, str] = {}
        # Revoke ends its token's sessions before answering; a session whose start
        # committed just after that sweep (it authenticated before the revoke) ends here.
        for session_id in recorder_of(self._app).sessions_with_revoked_tokens():
            if self._app.end_for(session_id, "token_revoked", self._now):
                ended[str(session_id)] = "token_revoked"
        active = active_session_ids(self._app)
        still = set(active)
        self._due = {sid: due for sid, due in self._due.items() if sid in still}
        for session_id in active:
            due = self._due.get(session_id)
            if due is not None and due > self._now():
                continue
            reaped = self._app.reap(session_id, self._now)
            if reaped.end_reason is not None:
                ended[str(session_id)] = reaped.end_reason
            if reaped.due is None:
                self._due.pop(session_id, None)
            else:
                recheck = RECHECK_SECONDS * random.uniform(0.5, 1.0)
                self._due[session_id] = min(reaped.due, self._now() + timedelta(seconds=recheck))
        return ended

    def finalise_abandoned(self) -> list[UUID]:
        """Finalise the live transcripts whose bridge went away with their session; the
        sessions whose transcript this finalised."""
        cutoff = self._now() - timedelta(seconds=ABANDONED_AFTER_SECONDS)
        finalised = []
        for session_id in abandoned_transcripts(self._app, cutoff):
            try:
                if self._app.finalise_abandoned_transcript(session_id, self._now):
                    finalised.append(session_id)
            except Exception:  # one that cannot be finalised must not hold up the others
                log.exception("finalising the transcript of session %s failed", session_id)
        return finalised


def run_reaper(settings: Settings, stop: threading.Event, now: Callable[[], datetime]) -> None:
    app = build_application(settings)
    reaper = Reaper(app, now)
    swept_at = 0.0
    try:
        while not stop.is_set():
            try:
                for session_id, reason in reaper.pass_once().items():
                    log.info("ended session %s: %s", session_id, reason)
                if time.monotonic() - swept_at >= SWEEP_SECONDS:
                    swept_at = time.monotonic()
                    for finalised in reaper.finalise_abandoned():
                        log.info("finalised the abandoned transcript of session %s",
                                 finalised)
            except Exception:  # keep reaping after a database blip; the next pass retries
                log.exception("reaper pass failed")
            stop.wait(settings.reaper_interval_seconds)
    finally:
        app.close()
