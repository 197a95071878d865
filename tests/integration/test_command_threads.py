"""Commands on the event store run in threads of their own (XENTREE_API_COMMAND_THREADS),
so blocking work in the API's other threads cannot hold them up (real PostgreSQL, the
API in process)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from adapters.auth.dev_issuer import DevIssuer
from adapters.eventstore.schema import migrate
from adapters.http.app import create_app
from adapters.http.threads import LoopThreads
from application.settings import Settings
from ops.stack import free_port
from tests.support.services import scratch_database


def test_commands_run_in_their_own_threads(database_url: str, tmp_path: Path) -> None:
    with scratch_database(database_url) as database:
        settings = Settings(
            database_url=database,
            kafka_bootstrap=f"127.0.0.1:{free_port()}",
            state_dir=str(tmp_path),
            command_threads=2,
            api_threads=1,
        )
        migrate(settings)
        token = DevIssuer.load_or_create(settings).mint("t-threads", "u-threads", None)
        headers = {"Authorization": f"Bearer {token}"}
        app = create_app(settings)
        ran_in: dict[str, str] = {}
        release = threading.Event()
        with TestClient(app=app) as client:
            services = app.state.services
            commands = services.commands
            assert isinstance(commands, LoopThreads)
            assert len(commands._threads) == 2

            live, recorder = services.live, services.recorder
            start, keys_of = live.start_session, recorder.api_keys_of

            def recording_start(*args: Any, **kwargs: Any) -> Any:
                ran_in["start"] = threading.current_thread().name
                return start(*args, **kwargs)

            def blocked_keys_of(*args: Any, **kwargs: Any) -> Any:
                ran_in["keys"] = threading.current_thread().name
                release.wait(10)
                return keys_of(*args, **kwargs)

            live.start_session = recording_start
            recorder.api_keys_of = blocked_keys_of
            # The API's one general thread is taken by a read that waits...
            with ThreadPoolExecutor(1) as side:
                listing = side.submit(client.get, "/api/live/api-keys", headers=headers)
                while "keys" not in ran_in and not listing.done():
                    threading.Event().wait(0.01)
                # ...and a command still runs, in a command thread.
                started = client.post(
                    "/api/live/session/start", json={"session_type": "voice"}, headers=headers,
                    timeout=5,
                )
                still_waiting = not listing.done()
                release.set()
                listed = listing.result(10)
        assert services.commands is None  # the lifespan let its threads go

    assert started.status_code == 201, started.text
    assert still_waiting
    assert listed.status_code == 200, listed.text
    assert ran_in["start"].startswith("xentree-command"), ran_in
    assert ran_in["keys"].startswith("xentree-api"), ran_in
