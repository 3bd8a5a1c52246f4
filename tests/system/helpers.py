"""Helpers for the scheduler-core integration tests: replicas as real processes, stubs on
them, execution listings, and direct writes to the test database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf import duration_pb2, json_format
from sqlalchemy.engine import make_url

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
from cronwire_server.executors.fence import MARKER as FENCE_MARKER
from tests.support import ServerProcess, start_server, wait_for

NAMESPACE = "core"
PARENT = f"namespaces/{NAMESPACE}"
RPC_TIMEOUT = 15.0
PAGE_SIZE = 1000

Execution = execution_pb2.Execution
State = execution_pb2.ExecutionState
RUNNING = execution_pb2.EXECUTION_STATE_RUNNING
QUEUED = execution_pb2.EXECUTION_STATE_QUEUED
ACTIVE = frozenset({QUEUED, RUNNING})


def state_name(state: int) -> str:
    return execution_pb2.ExecutionState.Name(state)  # type: ignore[arg-type]


def utc(stamp: Any) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    value: datetime = stamp.ToDatetime(tzinfo=UTC)
    return value


def worker_pid(worker: str) -> int:
    """The process id in an execution's `worker` (`host:pid:random`)."""
    parts = worker.rsplit(":", 2)
    assert len(parts) == 3, f"worker {worker!r} is not host:pid:random"
    assert parts[1].isdigit(), f"worker {worker!r} is not host:pid:random"
    return int(parts[1])


class Api:
    """The generated stubs on one channel to one replica, with the calls the tests repeat."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.jobs = JobServiceStub(self.channel)
        self.schedules = ScheduleServiceStub(self.channel)
        self.executions = ExecutionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def create_job(self, job_id: str, executor: str, **fields: Any) -> job_pb2.Job:
        job = json_format.ParseDict({"executor": executor, **fields}, job_pb2.Job())
        request = job_service_pb2.CreateJobRequest(parent=PARENT, job_id=job_id, job=job)
        return self.jobs.CreateJob(request, timeout=RPC_TIMEOUT).job

    def run_job(self, job: str) -> Execution:
        return self.jobs.RunJob(job_service_pb2.RunJobRequest(name=job), timeout=RPC_TIMEOUT).execution

    def create_schedule(self, schedule_id: str, job: str, **fields: Any) -> schedule_pb2.Schedule:
        """`fields` in the JSON form of Schedule (`trigger`, `timeZone`, `misfirePolicy`, ...)."""
        schedule = json_format.ParseDict({"job": job, **fields}, schedule_pb2.Schedule())
        request = schedule_service_pb2.CreateScheduleRequest(
            parent=PARENT, schedule_id=schedule_id, schedule=schedule
        )
        return self.schedules.CreateSchedule(request, timeout=RPC_TIMEOUT).schedule

    def get_schedule(self, name: str) -> schedule_pb2.Schedule:
        request = schedule_service_pb2.GetScheduleRequest(name=name)
        return self.schedules.GetSchedule(request, timeout=RPC_TIMEOUT).schedule

    def pause(self, schedule: str) -> schedule_pb2.Schedule:
        request = schedule_service_pb2.PauseScheduleRequest(name=schedule)
        return self.schedules.PauseSchedule(request, timeout=RPC_TIMEOUT).schedule

    def resume(self, schedule: str) -> schedule_pb2.Schedule:
        request = schedule_service_pb2.ResumeScheduleRequest(name=schedule)
        return self.schedules.ResumeSchedule(request, timeout=RPC_TIMEOUT).schedule

    def schedules_of(self) -> list[schedule_pb2.Schedule]:
        """Every schedule of the namespace, read page by page."""
        found: list[schedule_pb2.Schedule] = []
        token = ""
        while True:
            request = schedule_service_pb2.ListSchedulesRequest(
                parent=PARENT, page_size=PAGE_SIZE, page_token=token
            )
            response = self.schedules.ListSchedules(request, timeout=RPC_TIMEOUT)
            found.extend(response.schedules)
            token = response.next_page_token
            if not token:
                return found

    def get(self, execution: str) -> Execution:
        request = execution_service_pb2.GetExecutionRequest(name=execution)
        return self.executions.GetExecution(request, timeout=RPC_TIMEOUT).execution

    def cancel(self, execution: str, reason: str = "") -> Execution:
        request = execution_service_pb2.CancelExecutionRequest(name=execution, reason=reason)
        return self.executions.CancelExecution(request, timeout=RPC_TIMEOUT).execution

    def executions_of(self, *, job: str = "", schedule: str = "") -> list[Execution]:
        """Every execution of the namespace (or of one job or schedule), read page by page."""
        found: list[Execution] = []
        token = ""
        while True:
            request = execution_service_pb2.ListExecutionsRequest(
                parent=PARENT, page_size=PAGE_SIZE, page_token=token, job=job, schedule=schedule
            )
            response = self.executions.ListExecutions(request, timeout=RPC_TIMEOUT)
            found.extend(response.executions)
            token = response.next_page_token
            if not token:
                return found


def execution_in(api: Api, name: str, state: int) -> Callable[[], Execution | None]:
    """For wait_for: the execution once it is in `state`."""

    def check() -> Execution | None:
        execution = api.get(name)
        return execution if execution.state == state else None

    return check


def all_ended(
    api: Api, *, schedule: str = "", job: str = "", at_least: int = 1
) -> Callable[[], list[Execution] | None]:
    """For wait_for: the executions of a schedule or job once there are `at_least` and none
    is QUEUED or RUNNING."""

    def check() -> list[Execution] | None:
        found = api.executions_of(schedule=schedule, job=job)
        if len(found) < at_least or any(e.state in ACTIVE for e in found):
            return None
        return found

    return check


def describe(executions: Iterable[Execution]) -> str:
    """One line per execution, for assertion messages."""
    return "\n".join(
        f"  {utc(e.scheduled_time).isoformat()} {state_name(e.state)} attempt={e.attempt} "
        f"skip={execution_pb2.SkipReason.Name(e.skip_reason)} worker={e.worker!r} error={e.error!r}"
        for e in sorted(executions, key=lambda e: (utc(e.scheduled_time), e.attempt))
    )


# Processes


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name; None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie that nobody reaped counts as dead)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _is_fence(pid: int) -> bool:
    """Whether `pid` is a worker pool's fence process (`executors.fence`), not a job's."""
    try:
        return FENCE_MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


def child_pids(pid: int) -> list[int]:
    """The live children of `pid` but its fence process: its jobs' processes (read from Linux
    /proc; empty where there is none)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            live_child = fields is not None and fields[1] == str(pid) and fields[0] not in ("Z", "X")
            if live_child and not _is_fence(int(entry.name)):
                children.append(int(entry.name))
    return children


class Replicas:
    """The `cronwire-server` processes a test starts; whatever is left is killed at teardown,
    with the job processes a killed replica left behind."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.started: list[ServerProcess] = []
        self._apis: list[Api] = []
        self._orphans: set[int] = set()

    def start(self, database_url: str, *flags: str) -> ServerProcess:
        server = start_server(database_url, self._workdir, *flags)
        self.started.append(server)
        return server

    def api(self, server: ServerProcess) -> Api:
        api = Api(server.target)
        self._apis.append(api)
        return api

    def adopt_job_processes(self, server: ServerProcess) -> list[int]:
        """Wait for the job processes of `server` (an execution is RUNNING a moment before its
        process starts) and remember them (each leads its own process group), to stop them at
        teardown should the server die without stopping them."""

        def started() -> list[int]:
            children = child_pids(server.process.pid)
            self._orphans.update(children)
            return children

        return wait_for(started, 10, f"a job process of replica {server.process.pid}")

    def close(self) -> None:
        for api in self._apis:
            api.close()
        for server in self.started:
            if server.process.poll() is None:
                server.process.kill()
            server.process.wait(timeout=30)
        for pgid in self._orphans:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for number, server in enumerate(self.started, start=1):
            # Shown by pytest only when the test failed.
            tail = "\n".join(server.log().splitlines()[-40:])
            print(
                f"--- replica {number} (pid {server.process.pid}, exit {server.process.returncode}):\n{tail}"
            )


# Direct writes to the test database (the server's URL is a SQLAlchemy URL)


def set_next_fire_time(database_url: str, namespace: str, schedule_id: str, when: datetime) -> None:
    """UPDATE a schedule's next_fire_time in the database itself, bypassing the server."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as conn:
            updated = conn.execute(
                "UPDATE schedules SET next_fire_time = %s WHERE namespace = %s AND id = %s",
                (when, namespace, schedule_id),
            ).rowcount
    elif backend == "sqlite":
        assert url.database, database_url
        # SQLite holds naive UTC text, fixed-width so that it sorts in time order.
        stamp = when.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
        with contextlib.closing(sqlite3.connect(url.database, timeout=30)) as db, db:
            updated = db.execute(
                "UPDATE schedules SET next_fire_time = ? WHERE namespace = ? AND id = ?",
                (stamp, namespace, schedule_id),
            ).rowcount
    else:
        raise ValueError(f"unknown backend {backend!r}")
    assert updated == 1, f"no schedule {namespace}/{schedule_id} to update"


def seconds(delta: timedelta) -> str:
    """A duration in the JSON form of google.protobuf.Duration ("86400s", "0.200s")."""
    duration = duration_pb2.Duration()
    duration.FromTimedelta(delta)
    return duration.ToJsonString()
