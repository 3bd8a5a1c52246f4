"""Authentication and authorization over real channels to an in-process server, on each backend.

Every RPC of every cronwire service (read from the service descriptors, so a new RPC cannot be
left out) is called with no key, a malformed key, an unknown key, a wrong secret, a revoked key
and a key of another namespace; roles, namespace-scoped listings and watches, the audit actor of
events, the per-key rate limit and revocation through the key cache are checked as a caller
sees them.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

import cronwire.v1
from cronwire.v1 import (
    calendar_pb2,
    calendar_service_pb2,
    checkin_pb2,
    checkin_service_pb2,
    event_pb2,
    event_service_pb2,
    execution_service_pb2,
    job_pb2,
    job_service_pb2,
    key_pb2,
    key_service_pb2,
    notification_pb2,
    notification_service_pb2,
    schedule_pb2,
    schedule_service_pb2,
)
from cronwire.v1.calendar_service_pb2_grpc import CalendarServiceStub
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.key_service_pb2_grpc import KeyServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.app import SERVICE_NAMES, RunningServer, create_server
from cronwire_server.auth.keys import Role
from cronwire_server.auth.manage import KeyManager
from cronwire_server.auth.principal import OPEN
from cronwire_server.auth.roles import REQUIRED_ROLES
from cronwire_server.config import Settings
from cronwire_server.storage.sql_keys import KeyStore
from cronwire_server.storage.sql_store import create_engine
from tests.integration.api.test_execution_service import ENDED, eventually, wait_state
from tests.support import status_details

TEAM_A = "namespaces/team-a"
TEAM_B = "namespaces/team-b"
JOB = f"{TEAM_A}/jobs/nightly"
SCHEDULE = f"{TEAM_A}/schedules/daily"
CALENDAR = f"{TEAM_A}/calendars/holidays"


@dataclass
class Keys:
    admin: str
    admin_a: str
    editor_a: str
    viewer_a: str
    editor_b: str
    revoked: str


async def make_keys(database_url: str) -> Keys:
    engine = create_engine(database_url, pool_size=1)
    manager = KeyManager(KeyStore(engine))

    async def token(role: Role, *namespaces: str) -> str:
        return (await manager.create(role, list(namespaces), "test", caller=OPEN))[1]

    try:
        revoked = await token(Role.ADMIN, "*")
        await manager.revoke(revoked.split("_")[1], caller=OPEN)
        return Keys(
            admin=await token(Role.ADMIN, "*"),
            admin_a=await token(Role.ADMIN, "team-a"),
            editor_a=await token(Role.EDITOR, "team-a"),
            viewer_a=await token(Role.VIEWER, "team-a"),
            editor_b=await token(Role.EDITOR, "team-b"),
            revoked=revoked,
        )
    finally:
        await engine.dispose()


async def start(database_url: str, **settings: Any) -> RunningServer:
    # These tests fail authentication hundreds of times from one address on purpose.
    settings = {"auth_failures_per_peer": 0, **settings}
    return await create_server(
        Settings(listen="127.0.0.1:0", database_url=database_url, require_auth=True, **settings)
    )


@pytest.fixture
async def keys(database_url: str) -> Keys:
    return await make_keys(database_url)


@pytest.fixture
async def server(database_url: str, keys: Keys) -> AsyncIterator[RunningServer]:
    running = await start(database_url, rate_limit_per_key=0, key_cache_seconds=0.2)
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# Every RPC, from the descriptors of the services the server registers.


@dataclass(frozen=True)
class Rpc:
    path: str
    request: type[Message]
    response: type[Message]
    streaming: bool


def cronwire_services() -> list[ServiceDescriptor]:
    """Every service defined in the cronwire.v1 protos, whether the server registers it or not."""
    services = []
    for module_info in pkgutil.iter_modules(cronwire.v1.__path__):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(f"cronwire.v1.{module_info.name}")
            services.extend(module.DESCRIPTOR.services_by_name.values())
    return services


def all_rpcs() -> list[Rpc]:
    found = []
    for service in cronwire_services():
        for method in service.methods:
            found.append(
                Rpc(
                    f"/{service.full_name}/{method.name}",
                    message_factory.GetMessageClass(method.input_type),
                    message_factory.GetMessageClass(method.output_type),
                    method.server_streaming,
                )
            )
    return found


RPCS = all_rpcs()


async def call(
    channel: grpc.aio.Channel, rpc: Rpc, request: Message, token: str | None, scheme: str = "Bearer"
) -> list[Message]:
    metadata = (("authorization", f"{scheme} {token}"),) if token is not None else None
    if rpc.streaming:
        stream = channel.unary_stream(
            rpc.path,
            request_serializer=rpc.request.SerializeToString,
            response_deserializer=rpc.response.FromString,
        )(request, metadata=metadata, timeout=10)
        # One response is enough: a refused call fails before any.
        async for response in stream:
            stream.cancel()
            return [response]
        return []
    unary = channel.unary_unary(
        rpc.path,
        request_serializer=rpc.request.SerializeToString,
        response_deserializer=rpc.response.FromString,
    )
    return [await unary(request, metadata=metadata, timeout=10)]


async def refused(
    channel: grpc.aio.Channel, rpc: Rpc, request: Message, token: str | None, scheme: str = "Bearer"
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(channel, rpc, request, token, scheme)
    return caught.value


def test_every_rpc_of_every_service_has_a_required_role() -> None:
    # Every service of the protos is served, so every RPC below is called over a real channel.
    assert sorted(s.full_name for s in cronwire_services()) == sorted(SERVICE_NAMES)
    missing = [rpc.path for rpc in RPCS if rpc.path not in REQUIRED_ROLES]
    assert not missing, f"RPCs without an entry in auth/roles.py: {missing}"
    assert {r.path for r in RPCS} >= {
        "/cronwire.v1.KeyService/CreateKey",
        "/cronwire.v1.EventService/WatchEvents",
    }


@pytest.mark.parametrize(
    "credential", ["none", "not bearer", "malformed", "unknown", "wrong secret", "revoked"]
)
async def test_every_rpc_refuses_calls_without_a_valid_key_alike(
    channel: grpc.aio.Channel, keys: Keys, credential: str
) -> None:
    key_id, secret = keys.admin.split("_")[1], keys.admin.split("_", 2)[2]
    tokens: dict[str, str | None] = {
        "none": None,
        "malformed": "not-a-key",
        "unknown": f"cwk_{'0' * 12}_{secret}",
        "wrong secret": f"cwk_{key_id}_{'x' * len(secret)}",
        "revoked": keys.revoked,
    }
    messages = set()
    for rpc in RPCS:
        scheme = "Basic" if credential == "not bearer" else "Bearer"
        token = keys.admin if credential == "not bearer" else tokens[credential]
        error = await refused(channel, rpc, rpc.request(), token, scheme)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc.path, error)
        messages.add(error.details())
    # One message whatever the cause: the answer tells a prober nothing.
    assert len(messages) == 1
    assert "authorization: Bearer" in messages.pop()


async def seed(channel: grpc.aio.Channel, admin: str) -> str:
    """A job, a schedule and an execution in team-a; the execution's name."""
    metadata = bearer(admin)
    jobs, schedules = JobServiceStub(channel), ScheduleServiceStub(channel)
    job = job_pb2.Job(executor="noop")
    await jobs.CreateJob(
        job_service_pb2.CreateJobRequest(parent=TEAM_A, job_id="nightly", job=job), metadata=metadata
    )
    schedule = json_format.ParseDict(
        {"job": JOB, "trigger": {"cron": {"expression": "0 3 * * *"}}}, schedule_pb2.Schedule()
    )
    await schedules.CreateSchedule(
        schedule_service_pb2.CreateScheduleRequest(parent=TEAM_A, schedule_id="daily", schedule=schedule),
        metadata=metadata,
    )
    await CalendarServiceStub(channel).CreateCalendar(
        calendar_service_pb2.CreateCalendarRequest(
            parent=TEAM_A, calendar_id="holidays", calendar=calendar_pb2.Calendar(weekdays=[7])
        ),
        metadata=metadata,
    )
    run = await jobs.RunJob(job_service_pb2.RunJobRequest(name=JOB), metadata=metadata)
    return run.execution.name


def requests_into_team_a(execution: str) -> dict[str, Message]:
    """For each RPC that names a namespace, a request aimed at team-a's resources."""
    past = datetime.now(UTC) - timedelta(days=2)
    backfill = schedule_service_pb2.BackfillScheduleRequest(name=SCHEDULE, dry_run=True)
    backfill.start_time.FromDatetime(past)
    backfill.end_time.FromDatetime(past + timedelta(days=1))
    return {
        "JobService/CreateJob": job_service_pb2.CreateJobRequest(
            parent=TEAM_A, job_id="intruder", job=job_pb2.Job(executor="noop")
        ),
        "JobService/GetJob": job_service_pb2.GetJobRequest(name=JOB),
        "JobService/ListJobs": job_service_pb2.ListJobsRequest(parent=TEAM_A),
        "JobService/UpdateJob": job_service_pb2.UpdateJobRequest(
            job=job_pb2.Job(name=JOB, description="mine")
        ),
        "JobService/DeleteJob": job_service_pb2.DeleteJobRequest(name=JOB),
        "JobService/RunJob": job_service_pb2.RunJobRequest(name=JOB),
        "ScheduleService/CreateSchedule": schedule_service_pb2.CreateScheduleRequest(
            parent=TEAM_A,
            schedule=json_format.ParseDict(
                {"job": JOB, "trigger": {"cron": {"expression": "0 3 * * *"}}}, schedule_pb2.Schedule()
            ),
        ),
        "ScheduleService/GetSchedule": schedule_service_pb2.GetScheduleRequest(name=SCHEDULE),
        "ScheduleService/ListSchedules": schedule_service_pb2.ListSchedulesRequest(parent=TEAM_A),
        "ScheduleService/UpdateSchedule": schedule_service_pb2.UpdateScheduleRequest(
            schedule=schedule_pb2.Schedule(name=SCHEDULE, description="mine")
        ),
        "ScheduleService/DeleteSchedule": schedule_service_pb2.DeleteScheduleRequest(name=SCHEDULE),
        "ScheduleService/PauseSchedule": schedule_service_pb2.PauseScheduleRequest(name=SCHEDULE),
        "ScheduleService/ResumeSchedule": schedule_service_pb2.ResumeScheduleRequest(name=SCHEDULE),
        "ScheduleService/BackfillSchedule": backfill,
        "ScheduleService/PreviewSchedule": schedule_service_pb2.PreviewScheduleRequest(name=SCHEDULE),
        "CalendarService/CreateCalendar": calendar_service_pb2.CreateCalendarRequest(
            parent=TEAM_A, calendar_id="intruder", calendar=calendar_pb2.Calendar()
        ),
        "CalendarService/GetCalendar": calendar_service_pb2.GetCalendarRequest(name=CALENDAR),
        "CalendarService/ListCalendars": calendar_service_pb2.ListCalendarsRequest(parent=TEAM_A),
        "CalendarService/UpdateCalendar": calendar_service_pb2.UpdateCalendarRequest(
            calendar=calendar_pb2.Calendar(name=CALENDAR, description="mine")
        ),
        "CalendarService/DeleteCalendar": calendar_service_pb2.DeleteCalendarRequest(name=CALENDAR),
        "CalendarService/PreviewCalendar": calendar_service_pb2.PreviewCalendarRequest(name=CALENDAR),
        "ExecutionService/GetExecution": execution_service_pb2.GetExecutionRequest(name=execution),
        "ExecutionService/ListExecutions": execution_service_pb2.ListExecutionsRequest(parent=TEAM_A),
        "ExecutionService/CancelExecution": execution_service_pb2.CancelExecutionRequest(name=execution),
        "ExecutionService/StreamExecutionLogs": execution_service_pb2.StreamExecutionLogsRequest(
            name=execution
        ),
        "EventService/WatchEvents": event_service_pb2.WatchEventsRequest(parent=TEAM_A),
        "EventService/ListEvents": event_service_pb2.ListEventsRequest(parent=TEAM_A),
        **notification_requests_into_team_a(),
    }


def notification_requests_into_team_a() -> dict[str, Message]:
    route, rule = f"{TEAM_A}/notificationRoutes/ops", f"{TEAM_A}/notificationRules/ops"
    alerts = notification_service_pb2
    return {
        "NotificationService/CreateNotificationRoute": alerts.CreateNotificationRouteRequest(
            parent=TEAM_A,
            route=notification_pb2.NotificationRoute(
                webhook=notification_pb2.WebhookDestination(url="https://example.com/hook")
            ),
        ),
        "NotificationService/GetNotificationRoute": alerts.GetNotificationRouteRequest(name=route),
        "NotificationService/ListNotificationRoutes": alerts.ListNotificationRoutesRequest(parent=TEAM_A),
        "NotificationService/UpdateNotificationRoute": alerts.UpdateNotificationRouteRequest(
            route=notification_pb2.NotificationRoute(name=route, description="mine")
        ),
        "NotificationService/DeleteNotificationRoute": alerts.DeleteNotificationRouteRequest(name=route),
        "NotificationService/CreateNotificationRule": alerts.CreateNotificationRuleRequest(
            parent=TEAM_A,
            rule=notification_pb2.NotificationRule(route=route, kinds=[notification_pb2.ALERT_KIND_FAILED]),
        ),
        "NotificationService/GetNotificationRule": alerts.GetNotificationRuleRequest(name=rule),
        "NotificationService/ListNotificationRules": alerts.ListNotificationRulesRequest(parent=TEAM_A),
        "NotificationService/UpdateNotificationRule": alerts.UpdateNotificationRuleRequest(
            rule=notification_pb2.NotificationRule(name=rule, description="mine")
        ),
        "NotificationService/DeleteNotificationRule": alerts.DeleteNotificationRuleRequest(name=rule),
        "NotificationService/ListIncidents": alerts.ListIncidentsRequest(parent=TEAM_A),
        "NotificationService/ListNotificationDeliveries": alerts.ListNotificationDeliveriesRequest(
            parent=TEAM_A
        ),
        **check_in_requests_into_team_a(),
    }


def check_in_requests_into_team_a() -> dict[str, Message]:
    name = f"{TEAM_A}/checkIns/etl"
    check_in = checkin_pb2.CheckIn()
    check_in.trigger.interval.every.FromSeconds(60)
    return {
        "CheckInService/CreateCheckIn": checkin_service_pb2.CreateCheckInRequest(
            parent=TEAM_A, check_in=check_in
        ),
        "CheckInService/GetCheckIn": checkin_service_pb2.GetCheckInRequest(name=name),
        "CheckInService/ListCheckIns": checkin_service_pb2.ListCheckInsRequest(parent=TEAM_A),
        "CheckInService/UpdateCheckIn": checkin_service_pb2.UpdateCheckInRequest(
            check_in=checkin_pb2.CheckIn(name=name, description="mine")
        ),
        "CheckInService/DeleteCheckIn": checkin_service_pb2.DeleteCheckInRequest(name=name),
        # The token of no check-in: NOT_FOUND too (a real one of team-a's: test_alerts.py).
        "CheckInService/CheckIn": checkin_service_pb2.CheckInRequest(token="ci_unknown"),
    }


# RPCs that name no namespace: nothing to scope.
NAMESPACE_FREE = {
    "JobService/ListJobTypes",
    "KeyService/CreateKey",
    "KeyService/GetKey",
    "KeyService/ListKeys",
    "KeyService/RevokeKey",
    "ClusterService/GetClusterStatus",
    # Lists only the caller's namespaces (tests/integration/security/test_namespaces_list.py).
    "ClusterService/ListNamespaces",
    # Worker keys only; their namespaces and queues: tests/system/test_remote_worker_keys.py.
    "WorkerService/Connect",
}


async def test_every_rpc_answers_a_key_of_another_namespace_as_if_nothing_were_there(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    execution = await seed(channel, keys.admin)
    requests = requests_into_team_a(execution)
    short = {rpc.path.removeprefix("/cronwire.v1."): rpc for rpc in RPCS}
    unlisted = set(short) - set(requests) - NAMESPACE_FREE
    assert not unlisted, f"RPCs this test does not know how to aim at another namespace: {unlisted}"
    for path, request in requests.items():
        error = await refused(channel, short[path], request, keys.editor_b)
        assert error.code() == grpc.StatusCode.NOT_FOUND, (path, error)
    # The same answer as for something that does not exist in the key's own namespace.
    missing = await refused(
        channel,
        short["JobService/GetJob"],
        job_service_pb2.GetJobRequest(name=f"{TEAM_B}/jobs/nightly"),
        keys.editor_b,
    )
    hidden = await refused(channel, short["JobService/GetJob"], requests["JobService/GetJob"], keys.editor_b)
    assert status_details(hidden)[1] == status_details(missing)[1] == "JOB_NOT_FOUND"
    assert hidden.details() == missing.details().replace("team-b", "team-a")
    # Nothing was changed or made in team-a by those calls; the key of team-a sees it all.
    got = await JobServiceStub(channel).GetJob(
        job_service_pb2.GetJobRequest(name=JOB), metadata=bearer(keys.viewer_a)
    )
    assert got.job.description == ""
    listed = await JobServiceStub(channel).ListJobs(
        job_service_pb2.ListJobsRequest(parent=TEAM_A), metadata=bearer(keys.viewer_a)
    )
    assert [j.name for j in listed.jobs] == [JOB]
    schedule = await ScheduleServiceStub(channel).GetSchedule(
        schedule_service_pb2.GetScheduleRequest(name=SCHEDULE), metadata=bearer(keys.viewer_a)
    )
    assert not schedule.schedule.paused


async def test_roles_viewer_reads_editor_changes_admin_manages_keys(
    channel: grpc.aio.Channel, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cronwire_server.auth.manage")
    jobs, key_service = JobServiceStub(channel), KeyServiceStub(channel)
    create = job_service_pb2.CreateJobRequest(
        parent=TEAM_A, job_id="by-viewer", job=job_pb2.Job(executor="noop")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.CreateJob(create, metadata=bearer(keys.viewer_a))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "viewer" in (caught.value.details() or "")
    assert "editor" in (caught.value.details() or "")
    # A viewer reads; an editor creates and runs.
    await jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=TEAM_A), metadata=bearer(keys.viewer_a))
    await jobs.CreateJob(create, metadata=bearer(keys.editor_a))
    await jobs.RunJob(
        job_service_pb2.RunJobRequest(name=f"{TEAM_A}/jobs/by-viewer"), metadata=bearer(keys.editor_a)
    )
    # Only admins manage keys.
    for token in (keys.viewer_a, keys.editor_a):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await key_service.ListKeys(key_service_pb2.ListKeysRequest(), metadata=bearer(token))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    new_key = key_pb2.Key(namespaces=["team-a"], role=key_pb2.ROLE_VIEWER, description="dashboard")
    created = await key_service.CreateKey(
        key_service_pb2.CreateKeyRequest(key=new_key), metadata=bearer(keys.admin)
    )
    assert created.token.startswith("cwk_")
    assert created.key.name.startswith("keys/")
    # The printed token works, with the new key's role.
    await jobs.GetJob(
        job_service_pb2.GetJobRequest(name=f"{TEAM_A}/jobs/by-viewer"), metadata=bearer(created.token)
    )
    got = await key_service.GetKey(
        key_service_pb2.GetKeyRequest(name=created.key.name), metadata=bearer(keys.admin)
    )
    assert got.key.role == key_pb2.ROLE_VIEWER
    assert list(got.key.namespaces) == ["team-a"]
    assert created.token.split("_", 2)[2] not in str(got)
    # Keys have no events; the log says who made which.
    admin_name = f"keys/{keys.admin.split('_')[1]}"
    assert f"key {created.key.name} created (role viewer, namespaces team-a) by {admin_name}" in caplog.text
    assert created.token not in caplog.text


async def test_an_admin_of_some_namespaces_manages_keys_only_within_them(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    key_service = KeyServiceStub(channel)
    metadata = bearer(keys.admin_a)
    for namespaces in (["team-b"], ["*"], ["team-a", "team-b"]):
        request = key_service_pb2.CreateKeyRequest(
            key=key_pb2.Key(namespaces=namespaces, role=key_pb2.ROLE_VIEWER)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await key_service.CreateKey(request, metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, namespaces
    own = await key_service.CreateKey(
        key_service_pb2.CreateKeyRequest(key=key_pb2.Key(namespaces=["team-a"], role=key_pb2.ROLE_ADMIN)),
        metadata=metadata,
    )
    listed = await key_service.ListKeys(key_service_pb2.ListKeysRequest(page_size=1000), metadata=metadata)
    assert listed.keys
    assert all(list(k.namespaces) == ["team-a"] for k in listed.keys)
    assert own.key.name in {k.name for k in listed.keys}
    everything = await key_service.ListKeys(
        key_service_pb2.ListKeysRequest(page_size=2), metadata=bearer(keys.admin)
    )
    assert len(everything.keys) == 2
    assert everything.next_page_token
    # Keys beyond its namespaces do not exist for it.
    editor_b = f"keys/{keys.editor_b.split('_')[1]}"
    for call_ in (
        key_service.GetKey(key_service_pb2.GetKeyRequest(name=editor_b), metadata=metadata),
        key_service.RevokeKey(key_service_pb2.RevokeKeyRequest(name=editor_b), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call_
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    bad = key_service_pb2.CreateKeyRequest(key=key_pb2.Key(namespaces=["Team A"], role=key_pb2.ROLE_VIEWER))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await key_service.CreateKey(bad, metadata=bearer(keys.admin))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "key.namespaces[0]" in status_details(caught.value)[0]
    no_role = key_service_pb2.CreateKeyRequest(key=key_pb2.Key(namespaces=["team-a"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await key_service.CreateKey(no_role, metadata=bearer(keys.admin))
    assert "key.role" in status_details(caught.value)[0]


async def listed_all(events: EventServiceStub, token: str, at_least: int) -> list[event_pb2.Event] | None:
    """The events ListEvents shows `token` across namespaces, once at least `at_least` are numbered."""
    found = await events.ListEvents(
        event_service_pb2.ListEventsRequest(page_size=1000), metadata=bearer(token)
    )
    return list(found.events) if len(found.events) >= at_least else None


async def test_listing_and_watching_show_only_the_keys_namespaces(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    jobs, events = JobServiceStub(channel), EventServiceStub(channel)

    async def create(parent: str, job_id: str) -> None:
        request = job_service_pb2.CreateJobRequest(
            parent=parent, job_id=job_id, job=job_pb2.Job(executor="noop")
        )
        await jobs.CreateJob(request, metadata=bearer(keys.admin))

    await create(TEAM_A, "a-first")
    (marker,) = await eventually(lambda: listed_all(events, keys.admin, 1), 15, "the first event")
    await create(TEAM_B, "b-second")
    await create(TEAM_A, "a-third")
    everything = await eventually(lambda: listed_all(events, keys.admin, 3), 15, "all events")
    assert [e.namespace for e in everything] == ["team-a", "team-b", "team-a"]
    # A watch over every namespace replays what followed the marker: team-b's change came first,
    # and the key of team-a never sees it.
    watch = events.WatchEvents(
        event_service_pb2.WatchEventsRequest(parent="namespaces/-", after_sequence=marker.sequence),
        metadata=bearer(keys.viewer_a),
    )
    received = await asyncio.wait_for(anext(aiter(watch)), 15)
    watch.cancel()
    assert [e.resource for e in received.events] == [f"{TEAM_A}/jobs/a-third"]
    seen = await listed_all(events, keys.viewer_a, 0)
    assert [e.resource for e in seen or []] == [f"{TEAM_A}/jobs/a-first", f"{TEAM_A}/jobs/a-third"]
    # A filter naming another namespace's job is NOT_FOUND, like any name there.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await events.ListEvents(
            event_service_pb2.ListEventsRequest(job=f"{TEAM_B}/jobs/b-second"), metadata=bearer(keys.viewer_a)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_events_name_the_key_that_made_the_change(channel: grpc.aio.Channel, keys: Keys) -> None:
    jobs, events, executions = (
        JobServiceStub(channel),
        EventServiceStub(channel),
        ExecutionServiceStub(channel),
    )
    await jobs.CreateJob(
        job_service_pb2.CreateJobRequest(parent=TEAM_A, job_id="audited", job=job_pb2.Job(executor="noop")),
        metadata=bearer(keys.admin),
    )
    run = await jobs.RunJob(
        job_service_pb2.RunJobRequest(name=f"{TEAM_A}/jobs/audited"), metadata=bearer(keys.editor_a)
    )
    await wait_state(_Authorized(executions, keys.viewer_a), run.execution.name, ENDED)  # type: ignore[arg-type]

    async def history() -> list[tuple[str, str]] | None:
        found = await events.ListEvents(
            event_service_pb2.ListEventsRequest(job=f"{TEAM_A}/jobs/audited"), metadata=bearer(keys.viewer_a)
        )
        pairs = [(event_type_name(e.type), e.actor) for e in found.events]
        return pairs if any(t == "EVENT_TYPE_EXECUTION_SUCCEEDED" for t, _ in pairs) else None

    pairs = await eventually(history, 15, "the execution's events")
    admin_id, editor_id = keys.admin.split("_")[1], keys.editor_a.split("_")[1]
    assert ("EVENT_TYPE_JOB_CREATED", f"keys/{admin_id}") in pairs
    assert ("EVENT_TYPE_EXECUTION_QUEUED", f"keys/{editor_id}") in pairs
    # What the scheduler did by itself is nobody's.
    assert ("EVENT_TYPE_EXECUTION_SUCCEEDED", "") in pairs
    assert all(keys.admin.split("_", 2)[2] not in actor for _, actor in pairs)


def event_type_name(value: int) -> str:
    return event_pb2.EventType.Name(value)  # type: ignore[arg-type]


class _Authorized:
    """An ExecutionService stub that sends a key with every GetExecution."""

    def __init__(self, stub: ExecutionServiceStub, token: str) -> None:
        self._stub, self._token = stub, token

    async def GetExecution(self, request: execution_service_pb2.GetExecutionRequest) -> Any:
        return await self._stub.GetExecution(request, metadata=bearer(self._token))


async def test_a_revoked_key_stops_working_within_the_cache_time(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    key_service, jobs = KeyServiceStub(channel), JobServiceStub(channel)
    created = await key_service.CreateKey(
        key_service_pb2.CreateKeyRequest(key=key_pb2.Key(namespaces=["team-a"], role=key_pb2.ROLE_VIEWER)),
        metadata=bearer(keys.admin),
    )
    listing = job_service_pb2.ListJobsRequest(parent=TEAM_A)
    await jobs.ListJobs(listing, metadata=bearer(created.token))
    revoked = await key_service.RevokeKey(
        key_service_pb2.RevokeKeyRequest(name=created.key.name), metadata=bearer(keys.admin)
    )
    assert revoked.key.HasField("revoke_time")

    async def refused_now() -> bool:
        try:
            await jobs.ListJobs(listing, metadata=bearer(created.token))
        except grpc.aio.AioRpcError as error:
            return error.code() == grpc.StatusCode.UNAUTHENTICATED
        return False

    await eventually(refused_now, 5, "the revoked key to be refused")


async def test_health_and_reflection_stay_open_unless_configured(database_url: str, keys: Keys) -> None:
    for exempt, open_ in (((), False), (None, True)):
        settings: dict[str, Any] = {} if exempt is None else {"auth_exempt_services": exempt}
        running = await start(database_url, **settings)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                if open_:
                    answer = await health.Check(health_pb2.HealthCheckRequest())
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await health.Check(health_pb2.HealthCheckRequest())
                    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    await health.Check(health_pb2.HealthCheckRequest(), metadata=bearer(keys.viewer_a))
        finally:
            await running.stop(grace=0)


async def test_a_key_over_its_rate_is_answered_resource_exhausted_with_retry_info(
    database_url: str, keys: Keys
) -> None:
    # A token every four seconds: the four calls below cannot earn one back, however slow they are.
    running = await start(database_url, rate_limit_per_key=0.25, rate_limit_burst=3)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs = JobServiceStub(channel)
            listing = job_service_pb2.ListJobsRequest(parent=TEAM_A)
            for _ in range(3):
                await jobs.ListJobs(listing, metadata=bearer(keys.viewer_a))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await jobs.ListJobs(listing, metadata=bearer(keys.viewer_a))
            error = caught.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "0.25 requests per second" in (error.details() or "")
            assert retry_delay(error) > 0
            # Another key has its own bucket.
            await jobs.ListJobs(listing, metadata=bearer(keys.editor_a))

            async def allowed_again() -> bool:
                try:
                    await jobs.ListJobs(listing, metadata=bearer(keys.viewer_a))
                except grpc.aio.AioRpcError:
                    return False
                return True

            await eventually(allowed_again, 15, "the bucket to refill")
    finally:
        await running.stop(grace=0)


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    raw = next(v for k, v in error.trailing_metadata() or () if k == "grpc-status-details-bin")
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo detail")


async def test_on_loopback_without_keys_everything_stays_open_until_the_first_key(database_url: str) -> None:
    """A laptop server (loopback, no --require-auth) serves keyless callers while the database has
    no key; the first key, created through that very server, turns auth on at once."""
    running = await create_server(Settings(listen="127.0.0.1:0", database_url=database_url))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs, events = JobServiceStub(channel), EventServiceStub(channel)
            request = job_service_pb2.CreateJobRequest(
                parent=TEAM_B, job_id="open", job=job_pb2.Job(executor="noop")
            )
            await jobs.CreateJob(request)

            async def created() -> list[str] | None:
                found = await events.ListEvents(event_service_pb2.ListEventsRequest(parent=TEAM_B))
                return [e.actor for e in found.events] or None

            assert await eventually(created, 15, "the event") == [""]

            made = await KeyServiceStub(channel).CreateKey(
                key_service_pb2.CreateKeyRequest(
                    key=key_pb2.Key(namespaces=["*"], role=key_pb2.ROLE_ADMIN, executors=["*"])
                )
            )
            get = job_service_pb2.GetJobRequest(name=f"{TEAM_B}/jobs/open")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await jobs.GetJob(get)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            got = await jobs.GetJob(get, metadata=bearer(made.token))
            assert got.job.name == f"{TEAM_B}/jobs/open"
    finally:
        await running.stop(grace=0)


async def test_on_loopback_a_key_in_the_database_turns_auth_on_and_revoking_all_keeps_it_on(
    database_url: str, keys: Keys
) -> None:
    running = await create_server(
        Settings(listen="127.0.0.1:0", database_url=database_url, auth_failures_per_peer=0)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            jobs = JobServiceStub(channel)
            listing = job_service_pb2.ListJobsRequest(parent=TEAM_A)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await jobs.ListJobs(listing)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await jobs.ListJobs(listing, metadata=bearer(keys.viewer_a))
    finally:
        await running.stop(grace=0)

    # Every key revoked: the server does not open again (the keys' owners meant auth to be on).
    engine = create_engine(database_url, pool_size=1)
    try:
        manager = KeyManager(KeyStore(engine))
        for token in (keys.admin, keys.admin_a, keys.editor_a, keys.viewer_a, keys.editor_b):
            await manager.revoke(token.split("_")[1], caller=OPEN)
    finally:
        await engine.dispose()
    running = await create_server(
        Settings(listen="127.0.0.1:0", database_url=database_url, auth_failures_per_peer=0)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await JobServiceStub(channel).ListJobs(job_service_pb2.ListJobsRequest(parent=TEAM_A))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await running.stop(grace=0)


async def test_the_cli_prints_one_line_and_exits_distinctly_on_auth_errors(
    server: RunningServer, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    from cronwire.cli import EXIT_PERMISSION_DENIED, EXIT_UNAUTHENTICATED, main

    target = f"127.0.0.1:{server.port}"

    def run(*argv: str) -> tuple[int, str]:
        code = main(["--server", target, *argv])
        return code, capsys.readouterr().err

    code, err = await asyncio.to_thread(run, "jobs", "list", "-n", "team-a")
    assert code == EXIT_UNAUTHENTICATED != 1
    assert err.count("\n") == 1
    assert "--token" in err
    assert "UNAUTHENTICATED" in err
    code, err = await asyncio.to_thread(
        run, "--token", keys.viewer_a, "jobs", "create", "x", "-n", "team-a", "--executor", "noop"
    )
    assert code == EXIT_PERMISSION_DENIED
    assert err.count("\n") == 1
    assert "PERMISSION_DENIED" in err
    code, _ = await asyncio.to_thread(run, "--token", keys.viewer_a, "jobs", "list", "-n", "team-a")
    assert code == 0


async def test_a_job_chain_cannot_reach_a_namespace_the_key_cannot_see(
    channel: grpc.aio.Channel, keys: Keys
) -> None:
    jobs = JobServiceStub(channel)
    hidden = job_service_pb2.CreateJobRequest(
        parent=TEAM_B, job_id="target", job=job_pb2.Job(executor="noop")
    )
    await jobs.CreateJob(hidden, metadata=bearer(keys.admin))
    chained = json_format.ParseDict(
        {"executor": "noop", "dependents": [{"job": f"{TEAM_B}/jobs/target"}]}, job_pb2.Job()
    )
    request = job_service_pb2.CreateJobRequest(parent=TEAM_A, job_id="chain", job=chained)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.CreateJob(request, metadata=bearer(keys.editor_a))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job.dependents[0].job" in status_details(caught.value)[0]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await jobs.GetJob(
            job_service_pb2.GetJobRequest(name=f"{TEAM_A}/jobs/chain"), metadata=bearer(keys.editor_a)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
