"""Alembic environment: runs on the connection `cronwire_server.storage.migrate` hands over.

There is no alembic.ini; the URL never goes through Alembic's config parser.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from cronwire_server.storage.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite can only alter tables by copying them; batch mode does that.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through cronwire_server.storage.migrate.upgrade(url)")
    _run(connection)


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
_main()
