"""A background loop that keeps failing while the database answers (here: the server's database role
lost a privilege the event sequencer needs) is restarted, logged with its traceback, and reported:
health NOT_SERVING, the replica registry and `cronwire status` name the loop. Once the cause is gone
the loop works again and so does health, without a restart of the server.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql
from sqlalchemy.engine import make_url

from cronwire.v1 import cluster_service_pb2, cluster_service_pb2_grpc
from tests.support import ServerProcess, start_server, wait_for
from tests.system.helpers import Api

pytestmark = pytest.mark.postgres

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def limited_url(fresh_database_url: Callable[[str], str]) -> Iterator[str]:
    """A migrated database and the URL of a role that may use its tables, and nothing more."""
    owner = _libpq(fresh_database_url("postgres"))
    role = f"cw_limited_{secrets.token_hex(4)}"
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}").format(sql.Identifier(role))
        )
    yield make_url(owner).set(username=role).render_as_string(hide_password=False)
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _grant(url: str, grant: bool) -> None:
    parsed = make_url(url)
    owner = parsed.set(username="postgres").render_as_string(hide_password=False)
    statement = "GRANT UPDATE ON events TO {}" if grant else "REVOKE UPDATE ON events FROM {}"
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(sql.Identifier(str(parsed.username))))


def _health(server: ServerProcess) -> int:
    with grpc.insecure_channel(server.target) as channel:
        request = health_pb2.HealthCheckRequest()
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def _loops_down(server: ServerProcess) -> list[str]:
    with grpc.insecure_channel(server.target) as channel:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        status = stub.GetClusterStatus(cluster_service_pb2.GetClusterStatusRequest(), timeout=5)
    (replica,) = status.replicas
    return list(replica.loops_down)


def _cronwire(server: ServerProcess, *argv: str) -> str:
    beside = Path(sys.executable).with_name("cronwire")
    command = str(beside) if beside.exists() else shutil.which("cronwire")
    assert command, "the `cronwire` console script is not installed (pip install -e .)"
    env = {**os.environ, "CRONWIRE_SERVER": server.target}
    env.pop("CRONWIRE_TOKEN", None)
    done = subprocess.run([command, *argv], env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def _replica_row(status: str) -> list[str]:
    """The cells of the one replica's row of `cronwire status`: the line below the REPLICA header."""
    lines = status.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("REPLICA"))
    return lines[header + 1].split()


def test_a_loop_that_keeps_failing_is_restarted_and_reported_down(limited_url: str, tmp_path: Path) -> None:
    server = start_server(limited_url, tmp_path, "--replica-heartbeat-seconds", "0.5")
    api = Api(server.target)
    try:
        wait_for(lambda: _health(server) == SERVING, 10, "SERVING at start")
        _grant(limited_url, grant=False)
        api.create_job("first", "noop")  # an event the sequencer cannot number now
        wait_for(lambda: _health(server) == NOT_SERVING, 30, "NOT_SERVING while the sequencer fails")
        wait_for(lambda: _loops_down(server) == ["sequencer"], 10, "the registry to name the loop")
        # The replica's row of the table, whose last column is LOOPS DOWN.
        assert _replica_row(_cronwire(server, "status"))[-1] == "sequencer"

        _grant(limited_url, grant=True)
        wait_for(lambda: _health(server) == SERVING, 30, "SERVING once the sequencer works again")
        wait_for(lambda: _loops_down(server) == [], 10, "the registry to show every loop up")
        assert _replica_row(_cronwire(server, "status"))[-1] == "-"
    finally:
        api.close()
        assert server.stop() == 0
    log = server.log()
    assert "sequencer failed; restarting it" in log, log
    assert "InsufficientPrivilege" in log, log  # the traceback is there
    assert "background loops down: sequencer: health NOT_SERVING" in log, log
