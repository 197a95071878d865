"""eventsourcing's PostgreSQL infrastructure factory, with connections that switch to the
application role (`POSTGRES_OPTIONS`, libpq startup options such as `-c role=xentree_app`).

The library builds its pool from separate keyword arguments and has no setting for
startup options; its pool is created closed, so adding them here, before the first
connection, applies them to every connection it will ever open."""

from __future__ import annotations

from eventsourcing import postgres
from eventsourcing.utils import Environment, EnvType


class Factory(postgres.PostgresFactory):
    POSTGRES_OPTIONS = "POSTGRES_OPTIONS"

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        options = self.env.get(self.POSTGRES_OPTIONS)
        if options:
            kwargs = self.datastore.pool.kwargs
            assert isinstance(kwargs, dict)
            kwargs["options"] = options
