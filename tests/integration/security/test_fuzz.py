"""Property: whatever a caller sends, the server answers with a deliberate status and stores nothing
for a call that failed.

Requests for every RPC of every cronwire service are built from the descriptors: any field set or
left out, strings with unicode and huge ones, resource names well and badly formed, integers at
their limits, enums with unknown numbers, nested and repeated messages, timestamps and durations
out of range, random field masks, structs and page tokens. They go over a real channel to a real
`cronwire-server` process (API and dispatcher only: nothing a fuzzed job asks for is ever run).
Every answer must be OK or a status other than UNKNOWN, INTERNAL and UNIMPLEMENTED (the codes of
an unhandled error or a missing handler); the server must stay healthy; and a failed CreateJob or
CreateSchedule must leave its namespace as it was.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import pkgutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import cronwire.v1
from cronwire.v1 import job_pb2, job_service_pb2, schedule_pb2, schedule_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from tests.conftest import TestDatabases
from tests.support import ServerProcess, start_server, status_details

# A quick pass by default; CRONWIRE_FUZZ_EXAMPLES=500 searches deeper.
EXAMPLES_PER_RPC = int(os.environ.get("CRONWIRE_FUZZ_EXAMPLES", "20"))
CALL_TIMEOUT = 10.0
STREAM_TIMEOUT = 1.5
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED}
MAX_DEPTH = 3


def _methods() -> list[MethodDescriptor]:
    found = []
    for info in pkgutil.iter_modules(cronwire.v1.__path__):
        if info.name.endswith("_service_pb2"):
            module = importlib.import_module(f"cronwire.v1.{info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                found.extend(service.methods)
    return sorted(found, key=lambda m: m.full_name)


METHODS = _methods()

# Names: mostly the seeded resources and their namespaces, so calls reach past name parsing.
VALID_NAMESPACES = ["fuzz", "other"]
VALID_IDS = ["seed", "a", "b"]
NAMESPACES = [*VALID_NAMESPACES, "-", "", "Fuzz", "a" * 64, "ns/x", "ünï"]
IDS = [*VALID_IDS, "", "UPPER", "with space", "ünïcode", "x" * 300, "-", "a-", "0a"]
COLLECTIONS = ["jobs", "schedules", "executions", "keys", "events", ""]
HUGE = "h" * 200_000
NON_FINITE = [float("nan"), float("inf"), float("-inf")]


def _texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
        st.sampled_from(["", " ", "*", "0", "-1", "null", "{}", "\u202e", "🙂", "\U0001d518"]),
        # Control characters, NUL among them (PostgreSQL text cannot hold one).
        st.text(alphabet=st.characters(max_codepoint=31), min_size=1, max_size=4),
        st.just(HUGE),
    )


def _names() -> st.SearchStrategy[str]:
    well_formed = st.builds(
        lambda ns, collection, resource: f"namespaces/{ns}/{collection}/{resource}",
        st.sampled_from(NAMESPACES),
        st.sampled_from(COLLECTIONS),
        st.one_of(st.sampled_from(IDS), st.text(max_size=10)),
    )
    parents = st.builds(lambda ns: f"namespaces/{ns}", st.sampled_from(NAMESPACES))
    keys = st.builds(lambda resource: f"keys/{resource}", st.sampled_from(IDS))
    return st.one_of(well_formed, parents, keys, _texts())


def _page_tokens() -> st.SearchStrategy[str]:
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "f", "x"]), inner),
        max_leaves=6,
    )
    encoded = json_values.map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).decode().rstrip("="))
    return st.one_of(encoded, st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()), _texts())


def _valid(strategy: st.SearchStrategy[str], noise: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly `strategy` (values that get past validation, to reach deeper code), else `noise`."""
    return st.one_of(strategy, strategy, strategy, noise)


def _collection_of(message: Descriptor) -> str:
    """The collection a request or resource message is about, from its name (GetJobRequest: jobs)."""
    for word, collection in (("Schedule", "schedules"), ("Execution", "executions"), ("Key", "keys")):
        if word in message.name:
            return collection
    return "jobs"


def _resource_names(collection: str) -> st.SearchStrategy[str]:
    if collection == "keys":
        return st.builds(lambda resource: f"keys/{resource}", st.sampled_from(VALID_IDS))
    return st.builds(
        lambda ns, resource: f"namespaces/{ns}/{collection}/{resource}",
        st.sampled_from(VALID_NAMESPACES),
        st.sampled_from(VALID_IDS),
    )


def _string_for(field: FieldDescriptor) -> st.SearchStrategy[str]:
    name = field.name
    if name == "page_token":
        return _page_tokens()
    if name == "parent":
        return _valid(
            st.sampled_from([f"namespaces/{ns}" for ns in VALID_NAMESPACES] + ["namespaces/-"]), _names()
        )
    if name == "name":
        return _valid(_resource_names(_collection_of(field.containing_type)), _names())
    if name in ("job", "schedule", "execution"):
        return _valid(_resource_names(name + "s"), _names())
    if name.endswith("_id"):
        return _valid(
            st.one_of(st.sampled_from(VALID_IDS), st.from_regex(r"\A[a-z][a-z0-9-]{0,8}[a-z0-9]\Z")), _texts()
        )
    if name in ("expression", "cron"):
        crons = st.sampled_from(["* * * * *", "0 3 * * *", "*/5 * * * * *", "0 9 * * 1-5", "59 23 31 12 *"])
        return _valid(crons, st.one_of(st.sampled_from(["*/0 * * * *", "61 * * * *", "* * *"]), _texts()))
    if name == "time_zone":
        zones = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])
        return _valid(zones, st.one_of(st.sampled_from(["Nowhere/City", "", "+01:00"]), _texts()))
    if name == "executor":
        return _valid(st.sampled_from(["noop", "shell", "http", "python"]), _texts())
    if name == "url":
        urls = st.sampled_from(
            ["https://hooks.example.com/x", "http://127.0.0.1:9/", "http://169.254.169.254/"]
        )
        return _valid(urls, _texts())
    if name.endswith("s") and field.is_repeated:  # lists of names: jobs, namespaces, ...
        return _names()
    return _texts()


_INT_LIMITS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, 0, 1, -1, 2, 50, 1000, 1001, 2**31 - 1, -(2**31)) if low <= v <= high]
    return st.one_of(
        st.sampled_from(edges), st.integers(low, high), st.integers(max(low, -5), min(high, 100))
    )


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        # NaN and infinities too: a Value can carry them, JSON cannot.
        st.none() | st.booleans() | st.floats() | _texts(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )


def _struct() -> st.SearchStrategy[Message]:
    shapes = st.one_of(
        st.dictionaries(st.text(max_size=8), _json_values(), max_size=4),
        # Plausible executor parameters, some of them valid.
        st.fixed_dictionaries(
            {},
            optional={
                "argv": st.lists(_texts(), max_size=3),
                "command": _texts(),
                "shell": st.booleans(),
                "url": st.sampled_from(
                    ["http://example.com/", "http://127.0.0.1/", "ftp://x", "http://[::1"]
                ),
                "env": st.dictionaries(
                    st.text(max_size=5), st.one_of(_texts(), st.builds(lambda n: {"secret": n}, _texts()))
                ),
                "headers": st.dictionaries(st.text(max_size=5), _texts(), max_size=2),
                "sleep_seconds": st.floats(),
                "callable": st.sampled_from(["os:getcwd", "nope", ":"]),
            },
        ),
    )
    return shapes.map(_to_struct)


def _to_struct(value: dict[str, Any]) -> Message:
    struct = struct_pb2.Struct()
    struct.update(value)  # unlike json_format, takes NaN and infinities
    return struct


@st.composite
def _timestamp_like(draw: st.DrawFn, cls: type[Message]) -> Message:
    message = cls()
    seconds = draw(
        st.one_of(st.integers(-62135596800, 253402300799), st.sampled_from([-(2**63), 2**63 - 1, 0, -1]))
    )
    nanos = draw(st.one_of(st.integers(0, 999_999_999), st.sampled_from([-1, -(2**31), 2**31 - 1])))
    message.seconds, message.nanos = seconds, nanos  # type: ignore[attr-defined]
    return message


@st.composite
def _field_mask(draw: st.DrawFn, cls: type[Message]) -> Message:
    message = cls()
    paths = st.one_of(
        st.sampled_from(
            ["*", "trigger", "trigger.cron", "parameters", "description", "job", "paused", "etag"]
        ),
        st.sampled_from(["name", "timeout", "retry_policy.max_attempts", "labels", "state", "", "."]),
        st.text(max_size=12),
    )
    message.paths.extend(draw(st.lists(paths, max_size=4)))  # type: ignore[attr-defined]
    return message


def _message(descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    special = descriptor.full_name
    if special in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        return _timestamp_like(cls)
    if special == "google.protobuf.FieldMask":
        return _field_mask(cls)
    if special == "google.protobuf.Struct":
        return _struct()
    if special == "google.protobuf.Value":
        return _json_values().map(lambda v: _to_struct({"v": v}).fields["v"])  # type: ignore[attr-defined]
    return _plain_message(descriptor, depth)


@st.composite
def _plain_message(draw: st.DrawFn, descriptor: Descriptor, depth: int) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    # Sparse messages get past validation more often; dense ones combine more fields.
    density = draw(st.sampled_from([2, 5, 9]))
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE and depth >= MAX_DEPTH:
            continue
        if draw(st.integers(0, 9)) >= density:
            continue
        target = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            entries = draw(
                st.dictionaries(_value(key_field, depth + 1), _value(value_field, depth + 1), max_size=3)
            )
            for key, value in entries.items():
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif field.is_repeated:
            values = draw(st.lists(_value(field, depth + 1), max_size=3))
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for value in values:
                    target.add().CopyFrom(value)
            else:
                target.extend(values)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(draw(_value(field, depth + 1)))
        else:
            setattr(message, field.name, draw(_value(field, depth + 1)))
    return message


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _message(field.message_type, depth)
    if kind == FieldDescriptor.TYPE_STRING:
        return _string_for(field)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        known = st.sampled_from([v.number for v in field.enum_type.values])
        return st.one_of(known, known, known, st.integers(-(2**31), 2**31 - 1), st.integers(-2, 40))
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    low, high = _INT_LIMITS[kind]
    return _integers(low, high)


@dataclass
class Target:
    server: ServerProcess
    channel: grpc.Channel

    def call(self, method: MethodDescriptor, request: Message) -> grpc.StatusCode:
        path = f"/{method.containing_service.full_name}/{method.name}"
        response = message_factory.GetMessageClass(method.output_type)
        if method.server_streaming:
            stream = self.channel.unary_stream(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response.FromString,
            )
            calls = stream(request, timeout=STREAM_TIMEOUT)
            try:
                for _ in calls:
                    pass
            except grpc.RpcError as error:
                code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
                # A stream that is still open when its deadline passes is fine (a watch, a follow).
                return grpc.StatusCode.OK if code == grpc.StatusCode.DEADLINE_EXCEEDED else code
            return grpc.StatusCode.OK
        unary = self.channel.unary_unary(
            path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        try:
            unary(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            failed: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
            detail = f"{method.name} -> {failed.name}: {error.details()}"  # type: ignore[attr-defined]
        else:
            return grpc.StatusCode.OK
        assert failed != grpc.StatusCode.DEADLINE_EXCEEDED, f"hung: {detail}"
        assert failed not in FORBIDDEN, detail
        return failed

    def healthy(self) -> bool:
        check = health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return bool(check.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(
    scope="module", params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def target(
    request: pytest.FixtureRequest, test_databases: TestDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    workdir = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    url = test_databases.create(request.param, workdir)
    server = start_server(url, workdir, "--roles", "api,dispatcher", "--max-jobs-per-namespace", "200")
    with grpc.insecure_channel(server.target) as channel:
        _seed(channel)
        yield Target(server, channel)
        assert Target(server, channel).healthy()
    server.stop()
    log = server.log()
    assert "Traceback" not in log, log[-5000:]
    test_databases.drop(url)


def _seed(channel: grpc.Channel) -> None:
    """A job, a schedule and an execution to aim at in each valid namespace (again, after a
    fuzzed delete may have removed them)."""
    jobs, schedules = JobServiceStub(channel), ScheduleServiceStub(channel)
    for namespace in VALID_NAMESPACES:
        parent, name = f"namespaces/{namespace}", f"namespaces/{namespace}/jobs/seed"
        job = job_service_pb2.CreateJobRequest(parent=parent, job_id="seed", job=job_pb2.Job(executor="noop"))
        _exists(jobs.CreateJob, job)
        spec = schedule_pb2.Schedule(job=name, trigger={"cron": {"expression": "0 3 * * *"}})  # type: ignore[arg-type]
        schedule = schedule_service_pb2.CreateScheduleRequest(
            parent=parent, schedule_id="seed", schedule=spec
        )
        _exists(schedules.CreateSchedule, schedule)
        jobs.RunJob(job_service_pb2.RunJobRequest(name=name))


def _exists(create: Callable[[Any], Any], request: Message) -> None:
    try:
        create(request)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
    else:
        return
    assert code == grpc.StatusCode.ALREADY_EXISTS


def _namespace_state(target: Target, parent: str) -> tuple[tuple[str, ...], ...] | None:
    """What a create must not change when it fails: which jobs and schedules the namespace holds
    (their contents may change meanwhile: the dispatcher advances schedules' next fire times)."""
    if not parent.startswith("namespaces/"):
        return None
    try:
        jobs = JobServiceStub(target.channel).ListJobs(
            job_service_pb2.ListJobsRequest(parent=parent, page_size=1000), timeout=CALL_TIMEOUT
        )
        schedules = ScheduleServiceStub(target.channel).ListSchedules(
            schedule_service_pb2.ListSchedulesRequest(parent=parent, page_size=1000), timeout=CALL_TIMEOUT
        )
    except grpc.RpcError:
        return None  # not a namespace one can list: nothing can be created in it either
    return (tuple(j.name for j in jobs.jobs), tuple(s.name for s in schedules.schedules))


def _job_state(target: Target, name: str) -> str | None:
    """What a failed UpdateJob or DeleteJob must not change: the job's etag ("" if it is gone);
    None when `name` cannot be read at all."""
    try:
        got = JobServiceStub(target.channel).GetJob(
            job_service_pb2.GetJobRequest(name=name), timeout=CALL_TIMEOUT
        )
    except grpc.RpcError as error:
        return "" if error.code() == grpc.StatusCode.NOT_FOUND else None  # type: ignore[attr-defined]
    return got.job.etag


CREATES = {"CreateJob", "CreateSchedule"}


def _near_valid(method: MethodDescriptor) -> st.SearchStrategy[Message] | None:
    """Requests that pass name and structure checks, with arbitrary text where users write text:
    these reach storage and the executors' validation, which random messages seldom do."""
    text = _texts()
    ids = st.one_of(st.sampled_from(VALID_IDS), st.from_regex(r"\A[a-z][a-z0-9]{0,6}\Z"))
    free = st.dictionaries(
        st.text(max_size=6),
        st.one_of(text, st.integers(), st.booleans(), st.floats(), st.sampled_from(NON_FINITE)),
        max_size=3,
    ).map(_to_struct)
    job = st.fixed_dictionaries(
        {"executor": st.sampled_from(["noop", "shell"])},
        optional={
            "description": text,
            "labels": st.dictionaries(st.sampled_from(["team", "tier"]), text, max_size=2),
            "parameters": st.fixed_dictionaries(
                {"argv": st.lists(text, min_size=1, max_size=3)},
                optional={"env": st.dictionaries(st.text(max_size=6), text, max_size=2)},
            ),
        },
    ).map(lambda job: {**job, "parameters": {}} if job["executor"] == "noop" else job)
    parent = st.sampled_from([f"namespaces/{ns}" for ns in VALID_NAMESPACES])
    if method.name == "CreateJob":
        return st.builds(
            lambda p, i, j, r: json_format.ParseDict(
                {"parent": p, "jobId": i, "job": j, "requestId": r}, job_service_pb2.CreateJobRequest()
            ),
            parent,
            ids,
            job,
            st.one_of(st.just(""), text),
        )
    if method.name == "CreateSchedule":
        schedule = st.fixed_dictionaries(
            {
                "job": st.sampled_from([f"namespaces/{ns}/jobs/seed" for ns in VALID_NAMESPACES]),
                "trigger": st.just({"cron": {"expression": "0 3 * * *"}}),
            },
            optional={"description": text, "timeZone": st.sampled_from(["UTC", "Asia/Tokyo"])},
        )

        def create_schedule(p: str, i: str, sc: dict[str, Any], arguments: Message) -> Message:
            request = json_format.ParseDict(
                {"parent": p, "scheduleId": i, "schedule": sc}, schedule_service_pb2.CreateScheduleRequest()
            )
            request.schedule.arguments.CopyFrom(arguments)  # type: ignore[attr-defined]
            return request

        return st.builds(create_schedule, parent, ids, schedule, free)
    if method.name == "RunJob":
        return st.builds(
            lambda name, arguments, r: job_service_pb2.RunJobRequest(
                name=name, arguments=arguments, request_id=r
            ),
            st.sampled_from([f"namespaces/{ns}/jobs/seed" for ns in VALID_NAMESPACES]),
            free,
            st.one_of(st.just(""), text),
        )
    if method.name == "UpdateJob":
        return st.builds(
            lambda ns, j: json_format.ParseDict(
                {"job": {**j, "name": f"namespaces/{ns}/jobs/seed"}}, job_service_pb2.UpdateJobRequest()
            ),
            st.sampled_from(VALID_NAMESPACES),
            job,
        )
    return None


JOB_CHANGES: dict[str, Callable[[Any], str]] = {
    "UpdateJob": lambda request: str(request.job.name),
    "DeleteJob": lambda request: str(request.name),
}


def _state(target: Target, method: str, request: Any) -> Any:
    """What `method` must leave as it was if it fails, or None where that is not checked."""
    if method in CREATES and request.parent:
        return _namespace_state(target, request.parent)
    if method in JOB_CHANGES:
        return _job_state(target, JOB_CHANGES[method](request))
    return None


def _fuzz(method: MethodDescriptor) -> Callable[[Target], None]:
    near_valid = _near_valid(method)
    requests = _plain_message(method.input_type, 0)

    @settings(
        max_examples=EXAMPLES_PER_RPC,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(request=requests if near_valid is None else st.one_of(requests, near_valid))
    def check(target: Target, request: Message) -> None:
        before = _state(target, method.name, request)
        code = target.call(method, request)
        event(code.name)
        if code != grpc.StatusCode.OK and before is not None:
            after = _state(target, method.name, request)
            assert after == before, f"{method.name} failed with {code.name} yet changed {before} to {after}"

    return check  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", METHODS, ids=[m.full_name.removeprefix("cronwire.v1.") for m in METHODS])
def test_every_rpc_answers_deliberately(target: Target, method: MethodDescriptor) -> None:
    _seed(target.channel)
    _fuzz(method)(target)
    assert target.healthy()


def test_every_cronwire_rpc_is_fuzzed() -> None:
    services = {m.containing_service.name for m in METHODS}
    assert {"JobService", "ScheduleService", "ExecutionService", "EventService"} <= services
    assert len(METHODS) >= 22


def test_failed_create_stores_nothing_is_checked(target: Target) -> None:
    """The property's own check can fail: a create that does store changes the namespace."""
    parent = "namespaces/fuzz"
    create = job_service_pb2.CreateJobRequest(parent=parent, job=job_pb2.Job(executor="noop"))
    before = _state(target, "CreateJob", create)
    assert before is not None
    created = JobServiceStub(target.channel).CreateJob(create).job
    assert _state(target, "CreateJob", create) != before
    update = job_service_pb2.UpdateJobRequest(job=job_pb2.Job(name=created.name, description="changed"))
    before = _state(target, "UpdateJob", update)
    assert before == created.etag
    JobServiceStub(target.channel).UpdateJob(update)
    assert _state(target, "UpdateJob", update) not in (before, None)


# Regressions: each crash the property found, as a plain test.


def _error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_out_of_range_durations_and_times_name_the_field(target: Target) -> None:
    """Found: GetClusterStatus lag_window with seconds -2**63 overflowed the conversion (UNKNOWN)."""
    from cronwire.v1 import cluster_service_pb2, execution_service_pb2
    from cronwire.v1.cluster_service_pb2_grpc import ClusterServiceStub
    from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub

    status = cluster_service_pb2.GetClusterStatusRequest()
    status.lag_window.seconds = -(2**63)
    job = job_pb2.Job(executor="noop")
    job.timeout.seconds = 2**63 - 1
    create = job_service_pb2.CreateJobRequest(parent="namespaces/fuzz", job_id="forever", job=job)
    at = schedule_pb2.Schedule(job="namespaces/fuzz/jobs/seed")
    at.trigger.date.run_time.seconds = 2**63 - 1
    schedule = schedule_service_pb2.CreateScheduleRequest(parent="namespaces/fuzz", schedule=at)
    listing = execution_service_pb2.ListExecutionsRequest(parent="namespaces/fuzz")
    listing.start_time.nanos = -1
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: ClusterServiceStub(target.channel).GetClusterStatus(status), "lag_window"),
        (lambda: JobServiceStub(target.channel).CreateJob(create), "job.timeout"),
        (
            lambda: ScheduleServiceStub(target.channel).CreateSchedule(schedule),
            "schedule.trigger.date.run_time",
        ),
        (lambda: ExecutionServiceStub(target.channel).ListExecutions(listing), "start_time"),
    ]
    for call, field in calls:
        error = _error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()  # type: ignore[attr-defined]
        assert field in status_details(error)[0], error.details()  # type: ignore[attr-defined]


def test_preview_of_a_schedule_whose_job_is_not_a_name(target: Target) -> None:
    """Found: PreviewSchedule with `schedule.job` of no slash raised IndexError (UNKNOWN)."""
    spec = schedule_pb2.Schedule(job="seed", trigger={"cron": {"expression": "0 3 * * *"}})  # type: ignore[arg-type]
    request = schedule_service_pb2.PreviewScheduleRequest(schedule=spec)
    error = _error(lambda: ScheduleServiceStub(target.channel).PreviewSchedule(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "schedule.job" in status_details(error)[0]


def test_an_error_quoting_a_huge_value_still_arrives(target: Target) -> None:
    """Found: a 200,000-character name came back in the error message, past the clients' metadata
    limit, so callers saw RESOURCE_EXHAUSTED from their own library instead of INVALID_ARGUMENT."""
    request = job_service_pb2.GetJobRequest(name="n" * 200_000)
    error = _error(lambda: JobServiceStub(target.channel).GetJob(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    details = error.details() or ""  # type: ignore[attr-defined]
    assert details.startswith("name: 'nnnn")
    assert "more characters" in details
    assert len(details) < 2000
    assert list(status_details(error)[0]) == ["name"]


def test_nul_characters_are_refused_naming_the_field(target: Target) -> None:
    """Found: a NUL in a job's description, arguments, labels or a request id reached PostgreSQL,
    which cannot store one, and the call failed with UNKNOWN and the SQL in its message."""
    job = json_format.ParseDict(
        {"executor": "shell", "description": "a\x00b", "parameters": {"argv": ["echo", "\x00"]}},
        job_pb2.Job(),
    )
    create = job_service_pb2.CreateJobRequest(parent="namespaces/fuzz", job_id="nul", job=job)
    error = _error(lambda: JobServiceStub(target.channel).CreateJob(create))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert set(status_details(error)[0]) == {"job.description", "job.parameters.argv[1]"}
    run = job_service_pb2.RunJobRequest(name="namespaces/fuzz/jobs/seed", request_id="r\x00")
    error = _error(lambda: JobServiceStub(target.channel).RunJob(run))
    assert list(status_details(error)[0]) == ["request_id"]
    missing = _error(
        lambda: JobServiceStub(target.channel).GetJob(
            job_service_pb2.GetJobRequest(name=create.parent + "/jobs/nul")
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


async def test_a_bug_is_internal_and_tells_the_caller_nothing(
    fresh_database_url: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Should a servicer ever raise something unexpected, the caller gets INTERNAL without the
    exception's text (which may hold SQL or values), and the server logs the traceback."""
    from cronwire_server.app import create_server
    from cronwire_server.config import Settings
    from cronwire_server.jobs import JobManager

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("SELECT password FROM somewhere")

    monkeypatch.setattr(JobManager, "get", broken)
    running = await create_server(Settings(listen="127.0.0.1:0", database_url=fresh_database_url("sqlite")))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await JobServiceStub(channel).GetJob(
                    job_service_pb2.GetJobRequest(name="namespaces/a/jobs/b")
                )
    finally:
        await running.stop(grace=0)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "SELECT" not in (caught.value.details() or "")
    assert "server's log" in (caught.value.details() or "")
    assert "SELECT password FROM somewhere" in caplog.text


def test_nan_and_infinity_in_json_values_are_refused_naming_the_field(target: Target) -> None:
    """Found: NaN or an infinity in a run's arguments or a job's parameters (a Value can hold
    them, JSON cannot) failed the call with an unexpected error instead of INVALID_ARGUMENT."""
    arguments = _to_struct({"ok": 1.5, "bad": float("nan"), "list": [float("-inf")]})
    run = job_service_pb2.RunJobRequest(name="namespaces/fuzz/jobs/seed", arguments=arguments)
    error = _error(lambda: JobServiceStub(target.channel).RunJob(run))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert set(status_details(error)[0]) == {"arguments.bad", "arguments.list[0]"}
    # A NaN whose payload leaves no zero byte in the message.
    quiet = struct.unpack("<d", b"\xff" * 7 + b"\x7f")[0]
    run = job_service_pb2.RunJobRequest(name="namespaces/fuzz/jobs/seed", arguments=_to_struct({"q": quiet}))
    error = _error(lambda: JobServiceStub(target.channel).RunJob(run))
    assert list(status_details(error)[0]) == ["arguments.q"]
    parameters = _to_struct({"sleep_seconds": float("inf")})
    job = job_pb2.Job(executor="noop", parameters=parameters)
    create = job_service_pb2.CreateJobRequest(parent="namespaces/fuzz", job_id="infinite", job=job)
    error = _error(lambda: JobServiceStub(target.channel).CreateJob(create))
    assert list(status_details(error)[0]) == ["job.parameters.sleep_seconds"]


def test_a_nan_backoff_multiplier_is_refused(target: Target) -> None:
    """NaN passed the `< 1` check (every comparison with NaN is false) and would have been
    stored, to break the retry arithmetic of the job's first failed run."""
    job = job_pb2.Job(executor="noop")
    job.retry_policy.max_attempts = 3
    job.retry_policy.backoff_multiplier = float("nan")
    create = job_service_pb2.CreateJobRequest(parent="namespaces/fuzz", job_id="nan-backoff", job=job)
    error = _error(lambda: JobServiceStub(target.channel).CreateJob(create))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert list(status_details(error)[0]) == ["job.retry_policy.backoff_multiplier"]
