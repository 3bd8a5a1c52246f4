"""Health follows the database: a real server on PostgreSQL reports NOT_SERVING while PostgreSQL is
down and SERVING again once it is back, without a restart, and nothing stored is lost.

The test stops and starts a PostgreSQL server of its own (never a shared one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cronwire.v1 import execution_pb2, job_service_pb2
from cronwire_server.app import SERVICE_NAMES
from tests.support import ServerProcess, start_server, wait_for
from tests.system.helpers import Api, execution_in
from tests.throwaway_postgres import ThrowawayPostgres

pytestmark = pytest.mark.postgres

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED


@pytest.fixture
def server(tmp_path: Path, throwaway_postgres: ThrowawayPostgres) -> Iterator[ServerProcess]:
    running = start_server(throwaway_postgres.create_database("cronwire"), tmp_path)
    yield running
    running.stop()
    print(running.log())  # shown when the test failed


def _statuses(channel: grpc.Channel) -> dict[str, int]:
    stub = health_pb2_grpc.HealthStub(channel)
    found = {}
    for service in ("", *SERVICE_NAMES):
        request = health_pb2.HealthCheckRequest(service=service)
        found[service] = stub.Check(request, timeout=5).status
    return found


def _all(channel: grpc.Channel, status: int) -> bool:
    return set(_statuses(channel).values()) == {status}


def test_health_follows_the_database_and_nothing_is_lost(
    server: ServerProcess, throwaway_postgres: ThrowawayPostgres
) -> None:
    api = Api(server.target)
    channel = grpc.insecure_channel(server.target)
    try:
        job = api.create_job("echo", "shell", parameters={"argv": ["echo", "kept"]})
        schedule = api.create_schedule("hourly", job.name, trigger={"cron": {"expression": "0 * * * *"}})
        first = api.run_job(job.name)
        wait_for(execution_in(api, first.name, SUCCEEDED), 20, "the first run to succeed")
        assert _all(channel, SERVING)

        throwaway_postgres.stop("fast")
        wait_for(lambda: _all(channel, NOT_SERVING), 15, "NOT_SERVING while PostgreSQL is down")
        throwaway_postgres.start()
        wait_for(lambda: _all(channel, SERVING), 15, "SERVING once PostgreSQL is back")

        assert api.get_schedule(schedule.name).name == schedule.name
        assert api.jobs.GetJob(job_service_pb2.GetJobRequest(name=job.name), timeout=15).job.name == job.name
        assert api.get(first.name).output == "kept\n"
        again = api.run_job(job.name)
        wait_for(execution_in(api, again.name, SUCCEEDED), 30, "a new run after the outage")
    finally:
        channel.close()
        api.close()
    log = server.log()
    assert "the database is unreachable" in log, log
    assert log.count("health SERVING") == 1, log  # once back, not flapping
    assert server.stop() == 0
