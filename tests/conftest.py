"""Shared fixtures: a fresh, migrated database per test on each backend, and a store on it.

PostgreSQL tests need a server: CRONWIRE_TEST_POSTGRES_URL, e.g.
postgresql://postgres@127.0.0.1:5432/postgres (the user must be allowed to create
databases). Without it they are skipped locally and fail in CI (env CI set), where
a silently skipped PostgreSQL test would hide a broken backend.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from cronwire_server.storage.migrate import upgrade
from cronwire_server.storage.sql_store import SqlStore, normalize_url, open_store

# Fixtures that live in modules of their own.
pytest_plugins = ["tests.throwaway_postgres"]

POSTGRES_URL_ENV = "CRONWIRE_TEST_POSTGRES_URL"

# Servers the tests start run jobs as the tests' user, even as root, so that jobs can use the
# tests' private temporary directories; the tests of job isolation set it off themselves.
os.environ.setdefault("CRONWIRE_ALLOW_ROOT_JOBS", "1")
BACKENDS = ("sqlite", "postgres")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _require_postgres_server() -> str:
    """The server's libpq URL, or skip (fail in CI) when none is configured."""
    url = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if url:
        # psycopg takes libpq URLs only, not SQLAlchemy's "postgresql+driver://".
        return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    reason = f"PostgreSQL tests need {POSTGRES_URL_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so they may not be skipped", pytrace=False)
    pytest.skip(reason)


def _with_database(server_url: str, database: str) -> str:
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


class TestDatabases:
    """Makes migrated databases fast by cloning a template migrated once per session.

    SQLite: a copy of a migrated file. PostgreSQL: CREATE DATABASE ... TEMPLATE.
    Every name carries a random part, so test sessions running side by side do not collide.
    """

    __test__ = False  # not a test class, despite the name

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._sqlite_template: Path | None = None
        self._pg_server: str | None = None
        self._pg_template: str | None = None

    def create(self, backend: str, directory: Path) -> str:
        """A new migrated database; its async SQLAlchemy URL (what the store and server take)."""
        if backend == "sqlite":
            path = directory / f"cronwire-{secrets.token_hex(4)}.db"
            shutil.copyfile(self._sqlite_template_path(), path)
            return normalize_url(f"sqlite:///{path}")
        if backend == "postgres":
            server, template = self._postgres_template()
            name = f"cw_test_{secrets.token_hex(6)}"
            self._admin(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
            return normalize_url(_with_database(server, name))
        raise ValueError(f"unknown backend {backend!r}; one of {BACKENDS}")

    def drop(self, url: str) -> None:
        """Drop a PostgreSQL database made by `create`, closing whatever is still connected."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "postgresql" and parsed.database:
            self._admin(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(parsed.database))
            )

    def close(self) -> None:
        if self._pg_template is not None:
            self._admin(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self._pg_template))
            )
            self._pg_template = None

    def _sqlite_template_path(self) -> Path:
        if self._sqlite_template is None:
            path = self._workdir / "template.db"
            upgrade(f"sqlite:///{path}")
            self._sqlite_template = path
        return self._sqlite_template

    def _postgres_template(self) -> tuple[str, str]:
        if self._pg_server is None or self._pg_template is None:
            server = _require_postgres_server()
            template = f"cw_template_{secrets.token_hex(6)}"
            self._pg_server = server
            self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
            self._pg_template = template
            # upgrade() leaves no session behind, as CREATE DATABASE ... TEMPLATE requires.
            upgrade(_with_database(server, template))
        return self._pg_server, self._pg_template

    def _admin(self, statement: sql.Composed) -> None:
        assert self._pg_server is not None
        # CREATE/DROP DATABASE cannot run inside a transaction.
        with psycopg.connect(self._pg_server, autocommit=True) as conn:
            conn.execute(statement)


@pytest.fixture(scope="session")
def test_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestDatabases]:
    databases = TestDatabases(tmp_path_factory.mktemp("database-templates"))
    yield databases
    databases.close()


@pytest.fixture
def fresh_database_url(test_databases: TestDatabases, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """A factory: `fresh_database_url("sqlite" | "postgres")` -> the URL of a new migrated database.

    Call it as often as a test needs; PostgreSQL databases are dropped after the test.
    """
    created: list[str] = []

    def make(backend: str) -> str:
        url = test_databases.create(backend, tmp_path)
        created.append(url)
        return url

    yield make
    for url in created:
        test_databases.drop(url)


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn: "sqlite", "postgres"."""
    return str(request.param)


@pytest.fixture
def database_url(backend: str, fresh_database_url: Callable[[str], str]) -> str:
    """A new migrated database on each backend, as an async SQLAlchemy URL."""
    return fresh_database_url(backend)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    """An open store on `database_url`, closed (pool disposed) after the test."""
    opened = await open_store(database_url)
    yield opened
    await opened.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`scripts/test` runs `-n 2 --dist loadgroup`) the system tests (several
    server processes, throwaway PostgreSQL servers, faults) run one after another on one worker,
    beside the rest of the suite on the other."""
    for item in items:
        if item.nodeid.startswith("tests/system/"):
            item.add_marker(pytest.mark.xdist_group("system"))
