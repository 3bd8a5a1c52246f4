"""Execution retention: finished executions beyond the newest N of a job, or older than the age
limit, are pruned with their output in the background; active ones and what they refer to stay."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import json_format

import cronwire
from cronwire.cli import main
from cronwire.v1 import execution_pb2, execution_service_pb2, job_pb2, job_service_pb2
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire_server.app import RunningServer, create_server
from cronwire_server.config import Settings
from cronwire_server.storage.tables import execution_logs
from tests.integration.client.conftest import ThreadedServer
from tests.integration.ops.helpers import in_database, shift_times
from tests.support import eventually

PARENT = "namespaces/ops"
TIMEOUT = 15.0
E = execution_pb2
ENDED = {E.EXECUTION_STATE_SUCCEEDED, E.EXECUTION_STATE_FAILED}


class Api:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.last_seen: list[str] = []  # the states all_ended saw last, for failure messages
        self.jobs = JobServiceStub(channel)
        self.executions = ExecutionServiceStub(channel)

    async def create_job(self, job_id: str, **fields: Any) -> str:
        job = json_format.ParseDict(fields, job_pb2.Job())
        request = job_service_pb2.CreateJobRequest(parent=PARENT, job_id=job_id, job=job)
        return (await self.jobs.CreateJob(request, timeout=TIMEOUT)).job.name

    async def run(self, job: str, **arguments: Any) -> str:
        request = job_service_pb2.RunJobRequest(name=job)
        request.arguments.update(arguments)
        return (await self.jobs.RunJob(request, timeout=TIMEOUT)).execution.name

    async def get(self, name: str) -> execution_pb2.Execution:
        request = execution_service_pb2.GetExecutionRequest(name=name)
        return (await self.executions.GetExecution(request, timeout=TIMEOUT)).execution

    async def executions_of(self, job: str) -> list[execution_pb2.Execution]:
        request = execution_service_pb2.ListExecutionsRequest(parent=PARENT, job=job, page_size=1000)
        return list((await self.executions.ListExecutions(request, timeout=TIMEOUT)).executions)

    async def all_ended(self, job: str, count: int) -> list[execution_pb2.Execution] | None:
        found = await self.executions_of(job)
        self.last_seen = [execution_pb2.ExecutionState.Name(e.state) for e in found]
        return found if len(found) == count and all(e.state in ENDED for e in found) else None


async def _server(database_url: str, **settings: Any) -> RunningServer:
    return await create_server(Settings(listen="127.0.0.1:0", database_url=database_url, **settings))


@pytest.fixture
async def worker(database_url: str) -> AsyncIterator[tuple[RunningServer, Api]]:
    """A server that runs executions and keeps them all: it has no dispatcher role, so no
    pruner (one would apply the jobs' own retention whenever its pass came, e.g. a first pass
    that waited for the SQLite writer until the test's runs had ended)."""
    running = await _server(
        database_url,
        roles=frozenset({"api", "worker"}),
        execution_retention_count=0,
        execution_retention_days=0,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield running, Api(channel)
    await running.stop(grace=0)


def _id(name: str) -> str:
    return name.rsplit("/", 1)[1]


async def _logged(database_url: str, names: list[str]) -> set[str]:
    """Which of the executions still have output chunks stored."""
    query = sa.select(execution_logs.c.execution_id).where(
        execution_logs.c.execution_id.in_([_id(n) for n in names])
    )
    rows = await in_database(database_url, lambda conn: conn.execute(query).all())
    return {row.execution_id for row in rows}


async def test_each_job_keeps_its_newest_executions_and_their_output(
    worker: tuple[RunningServer, Api], database_url: str
) -> None:
    _, api = worker
    echo = {"executor": "shell", "parameters": {"argv": ["sh", "-c", 'echo "run $CRONWIRE_ARGUMENTS"']}}
    trimmed = await api.create_job("trimmed", **echo)
    other = await api.create_job("other", **echo)
    runs = []
    for n in range(6):
        runs.append(await api.run(trimmed, n=n))
        await eventually(lambda: api.all_ended(trimmed, len(runs)), 20, f"run {n} to end")
    others = [await api.run(other, n=n) for n in range(3)]
    await eventually(lambda: api.all_ended(other, 3), 20, "the other job's runs to end")
    assert await _logged(database_url, runs + others) == {_id(n) for n in runs + others}

    pruning = await _server(database_url, roles=frozenset({"dispatcher"}), execution_retention_count=3)
    try:
        kept = await eventually(
            lambda: api.all_ended(trimmed, 3), 20, "the job's history to shrink to its newest three"
        )
    finally:
        await pruning.stop(grace=0)
    assert sorted(e.name for e in kept) == sorted(runs[3:])
    for n, name in enumerate(runs[3:], start=3):
        assert (await api.get(name)).output == f'run {{"n": {n}}}\n'
    for name in runs[:3]:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.get(name)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert await _logged(database_url, runs) == {_id(n) for n in runs[3:]}
    # A job with no more than three runs keeps them all.
    assert sorted(e.name for e in await api.executions_of(other)) == sorted(others)
    assert await _logged(database_url, others) == {_id(n) for n in others}


async def test_old_finished_executions_go_recent_and_active_ones_stay(
    worker: tuple[RunningServer, Api], database_url: str
) -> None:
    _, api = worker
    quick = await api.create_job("quick", executor="noop")
    slow = await api.create_job("slow", executor="shell", parameters={"argv": ["sleep", "30"]})
    flaky = await api.create_job(
        "flaky",
        executor="shell",
        parameters={"argv": ["false"]},
        retryPolicy={"maxAttempts": 2, "initialBackoff": "3600s"},
    )
    finished = [await api.run(quick) for _ in range(4)]
    await eventually(lambda: api.all_ended(quick, 4), 20, "the quick runs to end")
    running = await api.run(slow)
    await eventually(lambda: _in_state(api, running, E.EXECUTION_STATE_RUNNING), 20, "the slow run to start")
    failed = await api.run(flaky)
    retry = await eventually(lambda: _retry_of(api, flaky, failed), 20, "the retry to be queued")

    # Ten days ago: two of the quick runs, the running one, the failed attempt the retry waits on.
    old = [finished[0], finished[1], running, failed]
    await shift_times(
        database_url,
        [_id(n) for n in old],
        -timedelta(days=10),
        "scheduled_time",
        "due_time",
        "create_time",
        "start_time",
        "end_time",
    )

    pruning = await _server(database_url, roles=frozenset({"dispatcher"}), execution_retention_days=1)
    try:
        left = await eventually(lambda: api.all_ended(quick, 2), 20, "the old quick runs to be pruned")
    finally:
        await pruning.stop(grace=0)
    assert sorted(e.name for e in left) == sorted(finished[2:])
    assert (await api.get(running)).state == E.EXECUTION_STATE_RUNNING
    assert (await api.get(failed)).state == E.EXECUTION_STATE_FAILED
    assert (await api.get(retry)).state == E.EXECUTION_STATE_QUEUED


async def _in_state(api: Api, name: str, state: int) -> bool:
    return (await api.get(name)).state == state


async def _retry_of(api: Api, job: str, first: str) -> str | None:
    for execution in await api.executions_of(job):
        if execution.state == E.EXECUTION_STATE_QUEUED and execution.parent_execution == first:
            return execution.name
    return None


async def test_a_job_keeps_its_executions_by_its_own_rules(
    worker: tuple[RunningServer, Api], database_url: str
) -> None:
    _, api = worker
    default = await api.create_job("default", executor="noop")
    longer = await api.create_job("longer", executor="noop", executionRetention={"maxCount": 5})
    forever = await api.create_job("forever", executor="noop", executionRetention={})
    hourly = await api.create_job("hourly", executor="noop", executionRetention={"maxAge": "3600s"})
    runs = {job: [await api.run(job) for _ in range(6)] for job in (default, longer, forever, hourly)}
    for job in runs:
        try:
            await eventually(lambda job=job: api.all_ended(job, 6), 60, f"the runs of {job} to end")  # type: ignore[misc]
        except AssertionError as error:
            raise AssertionError(f"{error}; their states: {api.last_seen}") from None
    await shift_times(
        database_url, [_id(n) for n in runs[hourly][:2]], -timedelta(hours=2), "create_time", "end_time"
    )

    pruning = await _server(
        database_url, roles=frozenset({"dispatcher"}), execution_retention_count=3, execution_retention_days=0
    )
    try:
        kept = await eventually(lambda: api.all_ended(default, 3), 20, "the server's policy to apply")
        kept_longer = await eventually(lambda: api.all_ended(longer, 5), 20, "the job's count to apply")
        kept_hourly = await eventually(lambda: api.all_ended(hourly, 4), 20, "the job's age to apply")
    finally:
        await pruning.stop(grace=0)
    assert sorted(e.name for e in kept) == sorted(runs[default][3:])
    assert sorted(e.name for e in kept_longer) == sorted(runs[longer][1:])
    assert sorted(e.name for e in kept_hourly) == sorted(runs[hourly][2:])
    assert len(await api.executions_of(forever)) == 6


async def test_a_jobs_retention_is_read_validated_and_cleared(worker: tuple[RunningServer, Api]) -> None:
    running, _ = worker
    async with cronwire.AsyncClient(f"127.0.0.1:{running.port}", namespace="ops") as client:
        own = cronwire.ExecutionRetention(max_count=50, max_age=timedelta(days=2))
        created = await client.create_job("kept", executor="noop", execution_retention=own)
        assert created.execution_retention == own
        assert (await client.get_job("kept")).execution_retention == own
        assert (await client.create_job("plain", executor="noop")).execution_retention is None
        with pytest.raises(cronwire.InvalidArgument) as raised:
            await client.create_job(
                "bad", executor="noop", execution_retention=cronwire.ExecutionRetention(max_count=-1)
            )
        assert [v.field for v in raised.value.field_violations] == ["job.execution_retention.max_count"]
        cleared = await client.update_job("kept", execution_retention=None)
        assert cleared.execution_retention is None
        forever = cronwire.ExecutionRetention()
        assert (await client.update_job("kept", execution_retention=forever)).execution_retention == forever


def test_the_cli_sets_and_clears_a_jobs_retention(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ThreadedServer(database_url)
    try:
        monkeypatch.setenv("CRONWIRE_SERVER", server.target)
        monkeypatch.delenv("CRONWIRE_TOKEN", raising=False)

        def cw(*argv: str) -> Any:
            capsys.readouterr()
            assert main([*argv, "-o", "json"]) == 0, capsys.readouterr().err
            return json.loads(capsys.readouterr().out)["execution_retention"]

        assert cw("jobs", "create", "kept", "--executor", "noop", "--keep", "5", "--keep-for", "2d") == {
            "max_count": 5,
            "max_age": "2d",
        }
        assert cw("jobs", "update", "kept", "--keep", "7") == {"max_count": 7, "max_age": "2d"}
        assert cw("jobs", "update", "kept", "--keep-for", "0") == {"max_count": 7, "max_age": None}
        assert cw("jobs", "update", "kept", "--server-retention") is None
        assert cw("jobs", "create", "plain", "--executor", "noop") is None
    finally:
        server.stop()
