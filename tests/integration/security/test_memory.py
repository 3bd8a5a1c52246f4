"""Memory stays bounded however large the events are, measured on a real server process.

The case from the security review: a large job updated many times, then watchers that replay
its history from the start and never read. Each replaying watcher used to read its whole
history at once and keep it while its stream was stuck; now reads are bounded in bytes, an
unread watcher holds one page at most, and the conversion cache is bounded in bytes too.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format, struct_pb2

from cronwire.v1 import event_service_pb2, job_pb2, job_service_pb2, schedule_pb2, schedule_service_pb2
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from tests.integration.security.test_limits import serving
from tests.support import start_server, status_details

MIB = 1024 * 1024
JOB_BYTES = 6 * MIB
UPDATES = 24
WATCHERS = 10
# Every unread watcher used to add its whole history (as rows, objects and messages): with 40
# updates, 1.9 GiB within seconds with 10 of them; these 24 are 144 MiB of snapshots per watcher,
# 1.4 GiB for the ten, well past the bound. Now each holds one page; what remains is the pages in flight and
# the allocator's slack (~640 MiB peak with the listers, measured with 40 updates).
RSS_BOUND = 800 * MIB
WATCH_FOR = 6.0
LISTERS = 4


async def list_all(events: EventServiceStub) -> list[int]:
    sequences: list[int] = []
    token = ""
    while True:
        page = await events.ListEvents(event_service_pb2.ListEventsRequest(page_size=1000, page_token=token))
        sequences += [e.sequence for e in page.events]
        token = page.next_page_token
        if not token:
            return sequences


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def test_unread_replaying_watchers_of_a_large_jobs_history_keep_the_server_bounded(
    fresh_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    server = start_server(
        fresh_database_url("postgres"),
        tmp_path,
        "--roles",
        "api,dispatcher",
        "--max-message-bytes",
        str(16 * MIB),
        "--max-labels-bytes",
        str(16 * MIB),
    )
    options = [("grpc.max_send_message_length", 16 * MIB), ("grpc.max_receive_message_length", 16 * MIB)]
    try:
        async with grpc.aio.insecure_channel(server.target, options=options) as channel:
            jobs = JobServiceStub(channel)
            # Random text: compression (TOAST, transport) cannot make it small.
            blob = secrets.token_hex(JOB_BYTES // 2)
            created = await jobs.CreateJob(
                job_service_pb2.CreateJobRequest(
                    parent="namespaces/big",
                    job_id="large",
                    job=job_pb2.Job(executor="noop", labels={"blob": blob}),
                )
            )
            for update in range(UPDATES):
                job = job_pb2.Job(name=created.job.name, description=f"update {update}")
                await jobs.UpdateJob(
                    job_service_pb2.UpdateJobRequest(
                        job=job, update_mask=field_mask_pb2.FieldMask(paths=["description"])
                    )
                )
            at_rest = rss(server.process.pid)

            # Watchers in their own channels, so that none of them reads the others' messages.
            watcher_channels = [
                grpc.aio.insecure_channel(server.target, options=options) for _ in range(WATCHERS)
            ]
            calls = [
                EventServiceStub(c).WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=1))
                for c in watcher_channels
            ]
            # And listers paging through the same history, a page of up to 1000 at a time.
            listers = [asyncio.ensure_future(list_all(EventServiceStub(channel))) for _ in range(LISTERS)]
            peak = at_rest
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + WATCH_FOR
                while loop.time() < deadline or not all(lister.done() for lister in listers):
                    peak = max(peak, rss(server.process.pid))
                    # Stop at once past the bound rather than let an unbounded server grow on.
                    assert peak < RSS_BOUND, (
                        f"server RSS {peak / MIB:.0f} MiB with {WATCHERS} unread replaying watchers "
                        f"(bound {RSS_BOUND / MIB:.0f} MiB; {at_rest / MIB:.0f} MiB at rest)"
                    )
                    await asyncio.sleep(0.1)
            finally:
                for lister in listers:
                    lister.cancel()
                for call in calls:
                    call.cancel()
                for c in watcher_channels:
                    await c.close()
            # Every page cut by bytes said so: the listers saw the whole history.
            assert [len(lister.result()) for lister in listers] == [UPDATES + 1] * LISTERS
            print(f"server RSS: {at_rest / MIB:.0f} MiB at rest, peak {peak / MIB:.0f} MiB with watchers")
            # The server still serves.
            await jobs.GetJob(job_service_pb2.GetJobRequest(name=created.job.name))
    finally:
        server.stop()


async def test_parameters_arguments_and_labels_past_their_limits_are_refused_naming_the_field(
    database_url: str,
) -> None:
    limit = 4096
    big = {"blob": "x" * limit}
    async with serving(
        database_url, max_parameters_bytes=limit, max_arguments_bytes=limit, max_labels_bytes=limit
    ) as channel:
        jobs, schedules = JobServiceStub(channel), ScheduleServiceStub(channel)
        parent = "namespaces/docs"
        job = await jobs.CreateJob(
            job_service_pb2.CreateJobRequest(
                parent=parent, job_id="small", job=job_pb2.Job(executor="noop", labels={"a": "b"})
            )
        )
        arguments = json_format.ParseDict(big, struct_pb2.Struct())
        refused = {
            "job.parameters": jobs.CreateJob(
                job_service_pb2.CreateJobRequest(
                    parent=parent,
                    job=job_pb2.Job(
                        executor="http", parameters=json_format.ParseDict(big, struct_pb2.Struct())
                    ),
                )
            ),
            "job.labels": jobs.UpdateJob(
                job_service_pb2.UpdateJobRequest(
                    job=job_pb2.Job(name=job.job.name, labels=big),
                    update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
                )
            ),
            "arguments": jobs.RunJob(job_service_pb2.RunJobRequest(name=job.job.name, arguments=arguments)),
            "schedule.arguments": schedules.CreateSchedule(
                schedule_service_pb2.CreateScheduleRequest(
                    parent=parent,
                    schedule=json_format.ParseDict(
                        {
                            "job": job.job.name,
                            "trigger": {"cron": {"expression": "0 3 * * *"}},
                            "arguments": big,
                        },
                        schedule_pb2.Schedule(),
                    ),
                )
            ),
        }
        for field, call in refused.items():
            with pytest.raises(grpc.aio.AioRpcError) as refusal:
                await call
            assert refusal.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, refusal.value.details())
            violations, _ = status_details(refusal.value)
            assert f"--max-{field.rpartition('.')[2]}-bytes" in violations[field], violations
        # Under the limits, the same calls go through.
        small = json_format.ParseDict({"n": 1}, struct_pb2.Struct())
        await jobs.RunJob(job_service_pb2.RunJobRequest(name=job.job.name, arguments=small))


async def test_a_replaying_watcher_that_does_not_read_is_cut_off_like_a_live_one(
    fresh_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    server = start_server(
        fresh_database_url("postgres"), tmp_path, "--roles", "api,dispatcher", "--watch-buffer", "2"
    )
    try:
        async with (
            grpc.aio.insecure_channel(server.target) as channel,
            # No window growth: the unread stream stalls after a few tens of KiB.
            grpc.aio.insecure_channel(server.target, options=[("grpc.http2.bdp_probe", 0)]) as slow,
        ):
            jobs, events = JobServiceStub(channel), EventServiceStub(channel)
            labels = {"blob": secrets.token_hex(24 * 1024)}
            created = await jobs.CreateJob(
                job_service_pb2.CreateJobRequest(
                    parent="namespaces/replay", job_id="j", job=job_pb2.Job(executor="noop", labels=labels)
                )
            )

            async def update(text: str) -> None:
                job = job_pb2.Job(name=created.job.name, description=text)
                mask = field_mask_pb2.FieldMask(paths=["description"])
                await jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=job, update_mask=mask))

            for index in range(30):
                await update(f"history {index}")
            history = len(await list_all(events))
            watch = EventServiceStub(slow).WatchEvents(event_service_pb2.WatchEventsRequest(after_sequence=1))
            await asyncio.sleep(1.0)  # it replays until the stream's window is full, then waits
            # Live events, one batch each, overflow its buffer of 2 batches while it replays.
            for index in range(6):
                await update(f"live {index}")
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)

            received: list[int] = []

            async def read_to_the_end() -> None:
                async with asyncio.timeout(30):
                    while (response := await watch.read()) is not grpc.aio.EOF:
                        received.extend(e.sequence for e in response.events)

            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await read_to_the_end()
            assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ended.value
            assert status_details(ended.value)[1] == "WATCHER_TOO_SLOW"
            # Cut off in the replay, not after sending the whole of it.
            assert received == list(range(2, 2 + len(received)))
            assert len(received) < history - 1, (len(received), history)
            assert f"after_sequence={received[-1]}" in (ended.value.details() or "")
    finally:
        server.stop()
