"""The composition root: wires settings, the event store and the application once."""

from __future__ import annotations

from typing import cast

from adapters.eventstore.recorder import LiveRecorder
from adapters.eventstore.schema import infrastructure_env
from adapters.integration.vault import SealedKeyVault, load_master_key
from application.live import LiveApplication
from application.settings import Settings


def build_application(settings: Settings, *, create_table: bool = False) -> LiveApplication:
    app = LiveApplication(
        settings,
        env=infrastructure_env(settings, create_table=create_table),
    )
    # Private signing keys live beside the events, sealed under the master key.
    app.key_vault = SealedKeyVault(
        load_master_key(settings), recorder_of(app).datastore.get_connection
    )
    return app


def recorder_of(app: LiveApplication) -> LiveRecorder:
    return cast(LiveRecorder, app.recorder)
