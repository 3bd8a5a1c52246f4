"""Setting up the scheduler benchmark through the public API: a noop job and many schedules.

Schedules are built here as protobuf messages and sent with grpc.aio, many
calls in flight, from the orchestrating process (setup is not measured).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from cronwire.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    schedule_pb2,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
)

NAMESPACE = "bench"
PARENT = f"namespaces/{NAMESPACE}"
JOB_ID = "noop"
JOB_NAME = f"{PARENT}/jobs/{JOB_ID}"
CALL_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def daily_at(moment: datetime) -> schedule_pb2.Schedule:
    """Fires every day at `moment`'s UTC second (a 6-field cron), so next at `moment`."""
    expression = f"{moment.second} {moment.minute} {moment.hour} * * *"
    return schedule_pb2.Schedule(
        job=JOB_NAME,
        trigger=schedule_pb2.Trigger(cron=schedule_pb2.CronTrigger(expression=expression)),
        time_zone="UTC",
    )


def every_second(start: datetime, end: datetime) -> schedule_pb2.Schedule:
    """Fires at `start`, then every second, while before `end`; ticks may overlap a running one."""
    return schedule_pb2.Schedule(
        job=JOB_NAME,
        trigger=schedule_pb2.Trigger(
            interval=schedule_pb2.IntervalTrigger(every=duration_pb2.Duration(seconds=1))
        ),
        start_time=_timestamp(start),
        end_time=_timestamp(end),
        overlap_policy=schedule_pb2.OVERLAP_POLICY_ALLOW_ALL,
    )


@dataclass(frozen=True)
class Created:
    count: int  # schedules created
    errors: int
    seconds: float
    first_error: str | None

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


async def _create_all(
    addresses: Sequence[str], schedules: Sequence[schedule_pb2.Schedule], concurrency: int
) -> Created:
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    try:
        return await _create_on(channels, schedules, concurrency)
    finally:
        for channel in channels:
            await channel.close(None)


async def _create_on(
    channels: Sequence[grpc.aio.Channel], schedules: Sequence[schedule_pb2.Schedule], concurrency: int
) -> Created:
    await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), CONNECT_TIMEOUT_S)
    jobs = job_service_pb2_grpc.JobServiceStub(channels[0])
    try:
        await jobs.CreateJob(
            job_service_pb2.CreateJobRequest(parent=PARENT, job_id=JOB_ID, job=job_pb2.Job(executor="noop")),
            timeout=CALL_TIMEOUT_S,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise
    stubs = [schedule_service_pb2_grpc.ScheduleServiceStub(ch) for ch in channels]
    pending = iter(enumerate(schedules))
    errors: list[str] = []

    async def caller(stub: schedule_service_pb2_grpc.ScheduleServiceStub) -> None:
        for n, schedule in pending:
            request = schedule_service_pb2.CreateScheduleRequest(
                parent=PARENT, schedule_id=f"s{n:06d}", schedule=schedule
            )
            try:
                await stub.CreateSchedule(request, timeout=CALL_TIMEOUT_S)  # type: ignore[misc]
            except grpc.aio.AioRpcError as error:
                errors.append(f"{error.code().name}: {error.details()}")

    started = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for n in range(concurrency):
            tasks.create_task(caller(stubs[n % len(stubs)]))
    seconds = time.perf_counter() - started
    return Created(len(schedules) - len(errors), len(errors), seconds, errors[0] if errors else None)


def create_schedules(
    addresses: Sequence[str], schedules: Sequence[schedule_pb2.Schedule], concurrency: int = 32
) -> Created:
    """Create the noop job (once) and `schedules` under ids s000000, s000001, ..., the calls
    spread over the servers at `addresses`."""
    return asyncio.run(_create_all(addresses, schedules, concurrency))
