"""Run control over a real channel: backfill, job chains, live output, callbacks, statistics."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from cronwire.v1 import (
    execution_pb2,
    execution_service_pb2,
    job_pb2,
    job_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from tests.integration.api.test_execution_service import ENDED, PARENT, eventually, make_job, run, wait_state
from tests.integration.api.test_job_service import expect_error


async def list_executions(executions: ExecutionServiceStub, **fields: Any) -> list[execution_pb2.Execution]:
    request = json_format.ParseDict(
        {"parent": PARENT, "pageSize": 1000, **fields}, execution_service_pb2.ListExecutionsRequest()
    )
    return list((await executions.ListExecutions(request)).executions)


async def test_backfill_runs_one_execution_per_tick(
    jobs: JobServiceStub, schedules: ScheduleServiceStub, executions: ExecutionServiceStub
) -> None:
    job = await make_job(jobs, "nightly", executor="noop")
    schedule = schedule_pb2.Schedule(job=job, trigger={"cron": {"expression": "0 3 * * *"}}, time_zone="UTC")
    created = await schedules.CreateSchedule(
        schedule_service_pb2.CreateScheduleRequest(parent=PARENT, schedule_id="nightly", schedule=schedule)
    )
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    request = schedule_service_pb2.BackfillScheduleRequest(
        name=created.schedule.name, dry_run=True, max_concurrency=2
    )
    request.start_time.FromDatetime(today - timedelta(days=7))
    request.end_time.FromDatetime(today)
    dry = await schedules.BackfillSchedule(request)
    ticks = [t.fire_time.ToDatetime(tzinfo=UTC) for t in dry.fire_times]
    assert ticks == [today - timedelta(days=d) + timedelta(hours=3) for d in range(7, 0, -1)]
    assert list(dry.executions) == []
    assert await list_executions(executions) == []

    request.dry_run = False
    request.request_id = "backfill-week"
    done = await schedules.BackfillSchedule(request)
    assert len(done.executions) == 7
    again = await schedules.BackfillSchedule(request)
    assert list(again.executions) == list(done.executions)

    async def all_succeeded() -> list[execution_pb2.Execution] | None:
        found = await list_executions(executions, schedule=created.schedule.name)
        return (
            found
            if len(found) == 7 and all(e.state == execution_pb2.EXECUTION_STATE_SUCCEEDED for e in found)
            else None
        )

    found = await eventually(all_succeeded, 15, "seven backfilled executions to succeed")
    assert sorted(e.scheduled_time.ToDatetime(tzinfo=UTC) for e in found) == ticks
    assert {e.trigger for e in found} == {execution_pb2.EXECUTION_TRIGGER_BACKFILL}


async def test_backfill_refuses_bad_ranges(jobs: JobServiceStub, schedules: ScheduleServiceStub) -> None:
    job = await make_job(jobs, "often", executor="noop")
    schedule = schedule_pb2.Schedule(job=job, trigger={"cron": {"expression": "* * * * *"}})
    created = await schedules.CreateSchedule(
        schedule_service_pb2.CreateScheduleRequest(parent=PARENT, schedule_id="often", schedule=schedule)
    )
    now = datetime.now(UTC)
    for start, end in [(now - timedelta(days=2), now), (now - timedelta(hours=1), now + timedelta(hours=1))]:
        request = schedule_service_pb2.BackfillScheduleRequest(name=created.schedule.name)
        request.start_time.FromDatetime(start)
        request.end_time.FromDatetime(end)
        violations, _ = await expect_error(
            schedules.BackfillSchedule(request), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert "end_time" in violations
    violations, _ = await expect_error(
        schedules.BackfillSchedule(schedule_service_pb2.BackfillScheduleRequest(name=created.schedule.name)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "start_time" in violations


async def test_chains_trigger_on_success_and_on_failure(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    on_success = await make_job(jobs, "report", executor="noop")
    on_failure = await make_job(jobs, "page-someone", executor="noop")
    deps = [
        {"job": on_success, "condition": "DEPENDENCY_CONDITION_ON_SUCCESS"},
        {"job": on_failure, "condition": "DEPENDENCY_CONDITION_ON_FAILURE"},
    ]
    good = await make_job(jobs, "extract", executor="shell", parameters={"argv": ["true"]}, dependents=deps)
    bad = await make_job(
        jobs, "extract-bad", executor="shell", parameters={"argv": ["false"]}, dependents=deps
    )

    for parent_job, child_job in ((good, on_success), (bad, on_failure)):
        parent = await run(jobs, parent_job)

        async def child(
            parent_name: str = parent.name, job: str = child_job
        ) -> execution_pb2.Execution | None:
            found = [
                e for e in await list_executions(executions, job=job) if e.parent_execution == parent_name
            ]
            return found[0] if found and found[0].state in ENDED else None

        triggered = await eventually(child, 15, f"the dependent of {parent_job}")
        assert triggered.trigger == execution_pb2.EXECUTION_TRIGGER_DEPENDENCY
        assert triggered.state == execution_pb2.EXECUTION_STATE_SUCCEEDED
    # Each parent triggered only the dependent of its outcome.
    assert len(await list_executions(executions, job=on_success)) == 1
    assert len(await list_executions(executions, job=on_failure)) == 1


async def test_cycles_are_refused_at_create_and_update(jobs: JobServiceStub) -> None:
    a = await make_job(jobs, "a", executor="noop", dependents=[{"job": f"{PARENT}/jobs/b"}])
    await make_job(jobs, "b", executor="noop", dependents=[{"job": f"{PARENT}/jobs/c"}])
    violations, _ = await expect_error(
        make_job(jobs, "c", executor="noop", dependents=[{"job": a}]), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violations["job.dependents[0].job"].endswith("c -> a -> b -> c")
    await make_job(jobs, "c", executor="noop")
    change = json_format.ParseDict({"name": f"{PARENT}/jobs/c", "dependents": [{"job": a}]}, job_pb2.Job())
    violations, _ = await expect_error(
        jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=change)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "job.dependents[0].job" in violations


async def test_follow_logs_receives_output_before_the_run_ends(
    jobs: JobServiceStub, executions: ExecutionServiceStub, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    script = f'echo first; while [ ! -e "{release}" ]; do sleep 0.05; done; echo second'
    job = await make_job(jobs, "talky", executor="shell", parameters={"argv": ["sh", "-c", script]})
    execution = await run(jobs, job)
    stream = executions.StreamExecutionLogs(
        execution_service_pb2.StreamExecutionLogsRequest(name=execution.name, follow=True)
    )
    received: list[execution_service_pb2.StreamExecutionLogsResponse] = []
    async for message in stream:
        received.append(message)
        if message.data == "first\n":
            release.touch()  # only now may the job go on: the line came live
        if message.final_state:
            break
    assert "".join(m.data for m in received) == "first\nsecond\n"
    assert received[-1].final_state == execution_pb2.EXECUTION_STATE_SUCCEEDED
    # Resuming from an offset returns only the rest, then the end.
    rest = [
        m
        async for m in executions.StreamExecutionLogs(
            execution_service_pb2.StreamExecutionLogsRequest(name=execution.name, offset=len("first\n"))
        )
    ]
    assert "".join(m.data for m in rest) == "second\n"
    assert rest[-1].final_state == execution_pb2.EXECUTION_STATE_SUCCEEDED


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/done", received
    server.shutdown()
    server.server_close()


async def test_completion_callback_is_signed_and_recorded(
    jobs: JobServiceStub,
    executions: ExecutionServiceStub,
    webhook: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, received = webhook
    job = await make_job(
        jobs,
        "with-hook",
        executor="shell",
        parameters={"argv": ["false"]},
        callback={"url": url, "secret": "s3cret"},
    )
    execution = await run(jobs, job)

    async def delivered() -> execution_pb2.Execution | None:
        got = await executions.GetExecution(execution_service_pb2.GetExecutionRequest(name=execution.name))
        return got.execution if got.execution.callback_delivery.delivered else None

    ended = await eventually(delivered, 15, "the callback to be delivered")
    assert ended.callback_delivery.http_status == 204
    assert ended.callback_delivery.attempts == 1
    headers, body = received[0]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Cronwire-Signature"] == expected
    payload = json.loads(body)
    assert payload["execution"] == execution.name
    assert payload["job"] == job
    assert payload["state"] == "FAILED"
    assert payload["exit_code"] == 1


async def test_statistics_on_get_job(jobs: JobServiceStub, executions: ExecutionServiceStub) -> None:
    script = 'case "$CRONWIRE_ARGUMENTS" in *fail*) exit 1;; esac'
    job = await make_job(jobs, "counted", executor="shell", parameters={"argv": ["sh", "-c", script]})
    before = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=job))).job
    assert before.stats.total == 0
    names = [(await run(jobs, job, arguments=arguments)).name for arguments in ({}, {}, {"fail": True})]
    for name in names:
        await wait_state(executions, name, ENDED)
    after = (await jobs.GetJob(job_service_pb2.GetJobRequest(name=job))).job
    assert after.etag == before.etag  # the same version of the job, with its new statistics
    stats = after.stats
    assert (stats.total, stats.succeeded, stats.failed) == (3, 2, 1)
    assert stats.HasField("last_run_time")
    assert stats.HasField("p50_duration")
    assert not stats.HasField("next_run_time")


async def test_webhooks_to_private_addresses_are_refused_by_default(database_url: str) -> None:
    from cronwire_server.app import create_server
    from cronwire_server.config import Settings

    running = await create_server(
        Settings(listen="127.0.0.1:0", database_url=database_url, allow_root_jobs=True)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs, executions = JobServiceStub(channel), ExecutionServiceStub(channel)
            violations, _ = await expect_error(
                make_job(
                    jobs, "metadata", executor="http", parameters={"url": "http://169.254.169.254/latest"}
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "link-local" in violations["job.parameters.url"]
            violations, _ = await expect_error(
                make_job(jobs, "hook", executor="noop", callback={"url": "http://10.0.0.1/hook"}),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
            assert "job.callback.url" in violations
            # A name is resolved when the call is made: refused then, after DNS.
            job = await make_job(jobs, "local", executor="http", parameters={"url": "http://localhost:9/"})
            ended = await wait_state(executions, (await run(jobs, job)).name, ENDED)
            assert ended.state == execution_pb2.EXECUTION_STATE_FAILED
            assert ended.error.startswith("refused:")
    finally:
        await running.stop(grace=0)


async def test_a_python_job_that_raises_records_the_exception(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    job = await make_job(
        jobs, "parse", executor="python", parameters={"callable": "json:loads", "args": ["not json"]}
    )
    ended = await wait_state(executions, (await run(jobs, job)).name, ENDED)
    assert ended.state == execution_pb2.EXECUTION_STATE_FAILED
    assert ended.error.startswith("json.decoder.JSONDecodeError: Expecting value")
    exception = json_format.MessageToDict(ended.result)["exception"]
    assert exception["type"].endswith("JSONDecodeError")
    assert "Traceback" in exception["traceback"]
    fine = await make_job(
        jobs, "sum", executor="python", parameters={"callable": "math:fsum", "args": [[1, 2, 3]]}
    )
    done = await wait_state(executions, (await run(jobs, fine)).name, ENDED)
    assert done.state == execution_pb2.EXECUTION_STATE_SUCCEEDED
    assert json_format.MessageToDict(done)["result"] == 6


class _Flaky(BaseHTTPRequestHandler):
    calls: list[dict[str, str]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.calls.append(dict(self.headers))
        self.send_response(500 if len(self.calls) == 1 else 200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_an_http_job_is_retried_with_backoff_until_it_succeeds(
    jobs: JobServiceStub, executions: ExecutionServiceStub
) -> None:
    calls: list[dict[str, str]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Flaky", (_Flaky,), {"calls": calls}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job = await make_job(
            jobs,
            "webhook",
            executor="http",
            parameters={"url": url, "json": {"hello": "world"}},
            retryPolicy={"maxAttempts": 2, "initialBackoff": "0.3s"},
        )
        first = await run(jobs, job)

        async def two_attempts() -> list[execution_pb2.Execution] | None:
            found = await list_executions(executions, job=job)
            return found if len(found) == 2 and all(e.state in ENDED for e in found) else None

        attempts = sorted(await eventually(two_attempts, 15, "two attempts"), key=lambda e: e.attempt)
    finally:
        server.shutdown()
        server.server_close()
    assert [(e.state, e.http_status) for e in attempts] == [
        (execution_pb2.EXECUTION_STATE_FAILED, 500),
        (execution_pb2.EXECUTION_STATE_SUCCEEDED, 200),
    ]
    assert attempts[0].error == "unexpected HTTP status 500"
    gap = attempts[1].scheduled_time.ToDatetime() - attempts[0].end_time.ToDatetime()
    assert timedelta(seconds=0.25) <= gap <= timedelta(seconds=0.5)
    assert calls[0]["X-Cronwire-Execution"] == first.name
    assert calls[1]["X-Cronwire-Attempt"] == "2"
