"""A PostgreSQL server of a test's own: initdb in a temporary directory, a free port, removed after.

Fault tests stop, restart and kill it as an operator's outage would, without touching the machine's
shared server. initdb refuses to run as root, so as root the server runs as the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import in_ci
from tests.support import wait_for


def _binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayPostgres:
    """One PostgreSQL cluster in `directory`, listening on 127.0.0.1:`port` only."""

    def __init__(self, bindir: Path, directory: Path) -> None:
        self._bindir = bindir
        self.directory = directory
        self.data = directory / "data"
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self._bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-o", options, "-w", "start"
        )
        wait_for(self.accepts_connections, 30, "the throwaway PostgreSQL to accept connections", interval=0.1)

    def stop(self, mode: str = "fast") -> None:
        """Stop it: `fast` (sessions ended, clean) or `immediate` (as a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def terminate_sessions(self, database: str) -> int:
        """End every session on `database` (pg_terminate_backend), as a failover would; how many."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchone()
        return int(row[0]) if row else 0

    def log(self) -> str:
        path = self.directory / "log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A started throwaway server, stopped and deleted after the test; skipped (failed in CI) when
    this machine has no PostgreSQL server binaries."""
    bindir = _binaries()
    if bindir is None:
        reason = "no PostgreSQL server binaries (initdb) to start a throwaway server"
        if in_ci():
            pytest.fail(f"{reason}; CI is set, so this test may not be skipped", pytrace=False)
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="cronwire-pg-"))
    server = ThrowawayPostgres(bindir, directory)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
