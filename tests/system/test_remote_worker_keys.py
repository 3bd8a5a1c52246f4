"""Worker keys: they open WorkerService streams for their namespaces and queues and call nothing
else; no other key takes work. Keys made with `cronwire-server keys create`, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from cronwire.v1 import execution_pb2, job_pb2, job_service_pb2, worker_pb2
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.auth.roles import REQUIRED_ROLES
from tests.support import start_server, wait_for
from tests.system.helpers import QUEUED, Api, execution_in
from tests.system.remote_helpers import RawWorker, WorkerProcesses

SUCCEEDED = execution_pb2.EXECUTION_STATE_SUCCEEDED


def create_key(database_url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cronwire_server", "keys", "create", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class KeyedApi(Api):
    """`Api` whose calls carry a key."""

    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.intercept_channel(grpc.insecure_channel(target), _Bearer(token))
        self.jobs = JobServiceStub(self.channel)
        self.schedules = ScheduleServiceStub(self.channel)
        self.executions = ExecutionServiceStub(self.channel)

    def create_job_in(self, namespace: str, job_id: str, **fields: object) -> job_pb2.Job:
        job = json_format.ParseDict(fields, job_pb2.Job())
        request = job_service_pb2.CreateJobRequest(parent=f"namespaces/{namespace}", job_id=job_id, job=job)
        return self.jobs.CreateJob(request, timeout=15).job

    def run(self, job: str) -> execution_pb2.Execution:
        return self.jobs.RunJob(job_service_pb2.RunJobRequest(name=job), timeout=15).execution


class _Bearer(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        details = details._replace(metadata=tuple(details.metadata or ()) + self._metadata)
        return continuation(details, request)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerProcesses]:
    started = WorkerProcesses(tmp_path / "workers")
    yield started
    started.close()


def refused_code(target: str, method: str, token: str) -> grpc.StatusCode:
    """The status of calling `method` with an empty request and `token`."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=lambda _: b"", response_deserializer=bytes)
        try:
            call(None, metadata=(("authorization", f"Bearer {token}"),), timeout=15)
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_worker_keys_take_only_their_work_and_nothing_else(
    backend: str, fresh_database_url: Callable[[str], str], tmp_path: Path, workers: WorkerProcesses
) -> None:
    url = fresh_database_url(backend)
    admin = create_key(url, "--role", "admin", "--namespace", "*", "--executors", "*")
    editor = create_key(url, "--role", "editor", "--namespace", "core", "--executors", "remote")
    worker = create_key(url, "--role", "worker", "--namespace", "core", "--queues", "billing")
    server = start_server(url, tmp_path / "server", "--require-auth", "--key-cache-seconds", "0.2")
    try:
        # The worker key is refused on every other RPC there is.
        others = [m for m in REQUIRED_ROLES if "/cronwire.v1.WorkerService/" not in m]
        assert len(others) > 30
        for method in others:
            assert refused_code(server.target, method, worker) == grpc.StatusCode.PERMISSION_DENIED, method

        # Editors and admins take no work; a worker key only its own queues and namespaces.
        for token, hello in (
            (editor, {"queues": ["billing"]}),
            (admin, {"queues": ["billing"]}),
            (worker, {"queues": ["billing", "payroll"]}),
            (worker, {"queues": ["billing"], "namespaces": ["other"]}),
        ):
            stream = RawWorker(server.target, token)
            try:
                stream.send(hello=worker_pb2.WorkerHello(identity="w", free_slots=1, **hello))
                assert stream.error().code() == grpc.StatusCode.PERMISSION_DENIED, hello
            finally:
                stream.close()

        jobs = KeyedApi(server.target, admin)
        parameters = {"queue": "billing", "task": "echo"}
        # The editor may create remote jobs (granted the kind), in its namespace.
        mine = KeyedApi(server.target, editor).create_job_in(
            "core", "invoices", executor="remote", parameters=parameters
        )
        theirs = jobs.create_job_in("other", "invoices", executor="remote", parameters=parameters)
        other_run = jobs.run(theirs.name)
        my_run = jobs.run(mine.name)
        workers.start(server.target, queues="billing", identity="keyed", token=worker)
        done = wait_for(execution_in(jobs, my_run.name, SUCCEEDED), 30, "the worker key's run")
        assert done.worker.startswith("keyed session:")
        # Same queue, another namespace: the key does not cover it, so it waits for another worker.
        assert jobs.get(other_run.name).state == QUEUED
        jobs.close()
    finally:
        server.stop()


def test_a_worker_key_needs_queues_and_only_worker_keys_have_them(
    fresh_database_url: Callable[[str], str],
) -> None:
    url = fresh_database_url("sqlite")
    for args, field in (
        (("--role", "worker", "--namespace", "core"), "queues"),
        (("--role", "worker", "--namespace", "core", "--queues", "bad name"), "queues[0]"),
        (("--role", "editor", "--namespace", "core", "--queues", "billing"), "queues"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "cronwire_server", "keys", "create", *args, "--database-url", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert field in done.stderr, done.stderr
