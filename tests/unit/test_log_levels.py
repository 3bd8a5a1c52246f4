"""The server's log levels: at the default INFO, database libraries log nothing per statement;
at DEBUG their statements, never their parameters or rows."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cronwire_server import logs


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = root.level, list(root.handlers), {n: logging.getLogger(n).level for n in logs.QUIET_AT_DEBUG}
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_no_statement_is_logged_above_debug(level: str) -> None:
    logs.configure(level)
    for name in ("sqlalchemy.engine.Engine", "psycopg", "aiosqlite"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name


def test_debug_logs_statements_but_not_their_parameters() -> None:
    logs.configure("DEBUG")
    engine = logging.getLogger("sqlalchemy.engine.Engine")
    assert engine.isEnabledFor(logging.INFO)
    assert not engine.isEnabledFor(logging.DEBUG)
