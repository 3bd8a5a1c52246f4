"""Lease renewal does not depend on the event loop: while a server's loop is held (as a stuck
request or a long conversion would hold it) for three times the lease, the running job's lease is
renewed, its processes are not fenced, and its code runs once, to success."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import grpc
import psycopg
import pytest

from cronwire.v1 import execution_pb2
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire_server.app import create_server
from cronwire_server.config import Settings
from tests.integration.api.test_execution_service import make_job, run, wait_state
from tests.support import eventually

# Seconds; a run is fenced when no renewal was sent for three quarters of it, so a 2 s lease
# left a loaded machine 1.5 s for one renewal round trip (a fence was seen in a full run).
LEASE = 3.0
HELD = 3 * LEASE
JOB_SECONDS = HELD + 2


def lease_of(url: str, execution_id: str) -> datetime:
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        row = conn.execute(
            "SELECT lease_expires_at FROM executions WHERE id = %s", (execution_id,)
        ).fetchone()
    assert row is not None
    assert isinstance(row[0], datetime)
    return row[0]


def hold_the_loop_watching_the_lease(url: str, execution_id: str) -> list[datetime]:
    """Called from the loop the server runs on (this test's): nothing else runs on it meanwhile."""
    leases = []
    until = time.monotonic() + HELD
    while time.monotonic() < until:
        leases.append(lease_of(url, execution_id))
        time.sleep(LEASE / 4)
    return leases


@pytest.mark.postgres
async def test_a_held_event_loop_neither_fences_nor_loses_a_running_job(
    fresh_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    url = fresh_database_url("postgres")
    settings = Settings(listen="127.0.0.1:0", database_url=url, allow_root_jobs=True, lease_seconds=LEASE)
    server = await create_server(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            jobs, executions = JobServiceStub(channel), ExecutionServiceStub(channel)
            runs = tmp_path / "runs"
            script = f'echo "attempt $CRONWIRE_ATTEMPT" >> {runs}; sleep {JOB_SECONDS}'
            job = await make_job(
                jobs,
                "steady",
                executor="shell",
                parameters={"argv": ["/bin/sh", "-c", script]},
                retryPolicy={"maxAttempts": 3, "initialBackoff": "0.1s"},
            )
            queued = await run(jobs, job)
            execution_id = queued.name.rsplit("/", 1)[1]
            await wait_state(executions, queued.name, {execution_pb2.EXECUTION_STATE_RUNNING})
            await eventually(lambda: runs.exists() and runs.read_text(), 10, "the job's code to start")

            leases = hold_the_loop_watching_the_lease(url, execution_id)
            assert len(set(leases)) >= HELD / LEASE, leases  # renewed all along
            assert leases == sorted(leases)

            ended = await wait_state(
                executions, queued.name, {execution_pb2.EXECUTION_STATE_SUCCEEDED}, within=JOB_SECONDS + 15
            )
            assert ended.attempt == 1
            assert runs.read_text() == "attempt 1\n"  # one attempt ran, and was never killed
    finally:
        await server.stop(grace=0)
