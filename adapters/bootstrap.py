"""The composition root: wires settings, the event store and the application once."""

from __future__ import annotations

from typing import cast

from adapters.eventstore.recorder import LiveRecorder
from adapters.eventstore.schema import infrastructure_env
from application.live import LiveApplication
from application.settings import Settings


def build_application(settings: Settings, *, create_table: bool = False) -> LiveApplication:
    app = LiveApplication(
        settings,
        env=infrastructure_env(settings, create_table=create_table),
    )
    return app


def recorder_of(app: LiveApplication) -> LiveRecorder:
    return cast(LiveRecorder, app.recorder)
