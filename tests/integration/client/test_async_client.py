"""The asyncio client against a real in-process server on the test's own event loop, on each backend."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import grpc
import pytest

import cronwire
from cronwire import CronTrigger, EventType, ExecutionState, IntervalTrigger, RetryPolicy

WAIT = 30.0


async def test_jobs_and_schedules(aio_client: cronwire.AsyncClient) -> None:
    job = await aio_client.create_job(
        "backup",
        executor="shell",
        parameters={"argv": ["echo", "hi"]},
        timeout=timedelta(minutes=1),
        retry_policy=RetryPolicy(max_attempts=2),
    )
    assert job.name == "namespaces/test/jobs/backup"
    assert (await aio_client.get_job("backup")).etag == job.etag
    for index in range(3):
        await aio_client.create_job(f"extra-{index}", executor="noop")
    names = [j.id async for j in aio_client.iter_jobs(page_size=2)]
    assert names == ["backup", "extra-0", "extra-1", "extra-2"]
    page = await aio_client.list_jobs(page_size=1)
    assert [j.id for j in page] == ["backup"]
    assert page.next_page_token

    updated = await aio_client.update_job(job, description="dump", retry_policy=None)
    assert updated.description == "dump"
    assert updated.retry_policy is None
    with pytest.raises(cronwire.Conflict):
        await aio_client.update_job(job, description="stale")

    schedule = await aio_client.create_schedule(
        "nightly", job="backup", trigger=CronTrigger("0 3 * * *"), time_zone="Europe/Berlin"
    )
    assert schedule.time_zone == "Europe/Berlin"
    assert [s.id async for s in aio_client.iter_schedules()] == ["nightly"]
    changed = await aio_client.update_schedule("nightly", trigger=IntervalTrigger(timedelta(minutes=5)))
    assert changed.trigger == IntervalTrigger(timedelta(minutes=5))
    assert (await aio_client.pause_schedule("nightly")).paused
    assert not (await aio_client.resume_schedule("nightly")).paused
    preview = await aio_client.preview_schedule("nightly", count=2)
    assert len(preview.fire_times) == 2
    await aio_client.delete_schedule("nightly")
    await aio_client.delete_job("backup")
    with pytest.raises(cronwire.NotFound) as missing:
        await aio_client.get_job("backup")
    assert missing.value.reason == "JOB_NOT_FOUND"


async def test_run_and_wait(aio_client: cronwire.AsyncClient) -> None:
    await aio_client.create_job("ok", executor="shell", parameters={"argv": ["true"]})
    await aio_client.create_job("ko", executor="shell", parameters={"argv": ["false"]})
    succeeded = await aio_client.run("ok", poll_interval=0.05, wait_timeout=WAIT)
    assert succeeded.state is ExecutionState.SUCCEEDED
    failed = await aio_client.run("ko", poll_interval=0.05, wait_timeout=WAIT)
    assert failed.state is ExecutionState.FAILED
    assert failed.exit_code == 1
    listed = [e.name async for e in aio_client.iter_executions(states=[ExecutionState.FAILED])]
    assert listed == [failed.name]
    fetched = await aio_client.get_execution(failed.id)
    assert fetched.exit_code == 1


async def test_errors(aio_client: cronwire.AsyncClient) -> None:
    with pytest.raises(cronwire.InvalidArgument) as invalid:
        await aio_client.create_job("x", executor="shell", parameters={"argv": []})
    assert invalid.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert invalid.value.field_violations
    assert all(v.field.startswith("job.parameters") for v in invalid.value.field_violations)
    with pytest.raises(cronwire.NotFound):
        await aio_client.run_job("missing")


async def test_watch_live_events(aio_client: cronwire.AsyncClient) -> None:
    await aio_client.create_job("hello", executor="shell", parameters={"argv": ["echo", "hi"]})
    latest = 0
    while not latest:  # the job's creation is numbered just after its commit; 0 would mean "from now on"
        latest = max([e.sequence async for e in aio_client.iter_events(namespace="-")], default=0)
        await asyncio.sleep(0.02)

    async def first_success() -> list[cronwire.Event]:
        seen = []
        # Resuming after `latest` covers a run that starts before this stream is open.
        stream = aio_client.watch(after_sequence=latest, event_types=[EventType.EXECUTION_SUCCEEDED])
        async with contextlib.aclosing(stream):
            async for event in stream:
                seen.append(event)
                break
        return seen

    watcher = asyncio.create_task(first_success())
    execution = await aio_client.run_job("hello")
    seen = await asyncio.wait_for(watcher, WAIT)
    assert [e.type for e in seen] == [EventType.EXECUTION_SUCCEEDED]
    assert seen[0].execution is not None
    assert seen[0].execution.name == execution.name
    page = await aio_client.list_events(event_types=[EventType.EXECUTION_SUCCEEDED])
    assert [e.sequence for e in page] == [seen[0].sequence]


async def test_logs(aio_client: cronwire.AsyncClient) -> None:
    await aio_client.create_job("hello", executor="shell", parameters={"argv": ["echo", "hello"]})
    execution = await aio_client.run("hello", poll_interval=0.05, wait_timeout=WAIT)
    chunks = [chunk async for chunk in aio_client.logs(execution)]
    assert "".join(c.data for c in chunks) == "hello\n"
    assert chunks[-1].final_state is ExecutionState.SUCCEEDED
