"""Health follows the database: a real server on PostgreSQL reports NOT_SERVING while PostgreSQL is
down and SERVING again once it is back, without a restart, and nothing stored is lost.

This test stops the machine's PostgreSQL cluster for a few seconds (and always starts it again), so
it needs a user allowed to run pg_ctlcluster; without one it is skipped, except in CI.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cronwire.v1 import execution_pb2, job_service_pb2
from cronwire_server.app import SERVICE_NAMES
from tests.conftest import in_ci
from tests.integration.helpers import Api, execution_in
from tests.support import ServerProcess, start_server, wait_for

pytestmark = pytest.mark.postgres

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED


def _cluster() -> list[str]:
    """The pg_ctlcluster arguments of the local cluster, or skip (fail in CI) when it cannot be run."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if shutil.which("pg_ctlcluster") and versions and user in ("root", "postgres"):
        return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]
    reason = f"stopping PostgreSQL needs pg_ctlcluster run as root or postgres (running as {user})"
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so this test may not be skipped", pytrace=False)
    pytest.skip(reason)


def _postgres_ready() -> bool:
    return subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode == 0


@pytest.fixture
def server(tmp_path: Path, fresh_database_url: Callable[[str], str]) -> Iterator[ServerProcess]:
    running = start_server(fresh_database_url("postgres"), tmp_path)
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


def test_health_follows_the_database_and_nothing_is_lost(server: ServerProcess) -> None:
    cluster = _cluster()
    api = Api(server.target)
    channel = grpc.insecure_channel(server.target)
    try:
        job = api.create_job("echo", "shell", parameters={"argv": ["echo", "kept"]})
        schedule = api.create_schedule("hourly", job.name, trigger={"cron": {"expression": "0 * * * *"}})
        first = api.run_job(job.name)
        wait_for(execution_in(api, first.name, SUCCEEDED), 20, "the first run to succeed")
        assert _all(channel, SERVING)

        try:
            subprocess.run([*cluster, "stop", "-m", "fast"], check=True, capture_output=True)
            wait_for(lambda: _all(channel, NOT_SERVING), 15, "NOT_SERVING while PostgreSQL is down")
        finally:
            subprocess.run([*cluster, "start"], check=False, capture_output=True)
            wait_for(_postgres_ready, 60, "PostgreSQL to accept connections again")
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
    assert log.count("the database is unreachable") == 1, log
    assert log.count("the database answers again") == 1, log
    assert server.stop() == 0
