"""A throwaway PostgreSQL database for one benchmark run."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def libpq_url(url: str) -> str:
    """`postgresql+psycopg://...` (SQLAlchemy's spelling) as a URL psycopg accepts."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {scheme}://...")
    return urlunsplit(parts._replace(scheme="postgresql"))


def with_database(url: str, database: str) -> str:
    """The same URL (driver, credentials, query) pointing at another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """Create `cronwire_bench_<random>` on the server of `url`, yield its URL, drop it after."""
    name = f"cronwire_bench_{secrets.token_hex(4)}"
    admin = libpq_url(url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            # FORCE: a server that did not stop cleanly may still hold connections.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def wal_position(url: str) -> int:
    """The server's current WAL insert position, in bytes. Its difference over a run is what the
    whole PostgreSQL server wrote to its log (other databases' writes included: an upper bound),
    a figure that, unlike CPU time, does not move with the machine's load."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0
