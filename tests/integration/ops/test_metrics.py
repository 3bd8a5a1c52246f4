"""Prometheus metrics of a real server process, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cronwire import Client, CronTrigger, ExecutionState, NotFound, OverlapPolicy, Unauthenticated
from cronwire.v1 import event_service_pb2, event_service_pb2_grpc
from tests.support import ServerProcess, start_server, wait_for
from tests.system.helpers import child_pids

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# The queue gauges are refreshed every few seconds; everything else moves at once.
DEADLINE = 20.0


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    port_file = tmp_path / "metrics-port"
    server = start_server(
        database_url,
        tmp_path,
        "--metrics-address",
        "127.0.0.1:0",
        "--metrics-port-file",
        str(port_file),
    )
    try:
        yield server, metrics_port(port_file)
    finally:
        server.stop()


def metrics_port(port_file: Path) -> int:
    return wait_for(lambda: port_file.exists() and int(port_file.read_text()), 10.0, "the metrics port file")


def wait_for_metric(port: int, what: str, condition: Callable[[Samples], bool]) -> Samples:
    def check() -> Samples | None:
        samples = scrape(port)
        return samples if condition(samples) else None

    return wait_for(check, DEADLINE, what, interval=0.2)


def test_executions_and_schedules_are_counted(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    before = scrape(port)
    assert value(before, "cronwire_build_info", version=_version()) == 1
    with Client(server.target, namespace="metrics") as client:
        client.create_job("ok", executor="shell", parameters={"argv": ["true"]})
        client.create_job("broken", executor="shell", parameters={"argv": ["false"]})
        client.run_job("ok")
        client.run_job("broken")

        finished = "cronwire_executions_finished_total"
        base_ok = value(before, finished, state="SUCCEEDED", kind="shell")
        base_failed = value(before, finished, state="FAILED", kind="shell")
        samples = wait_for_metric(
            port,
            "a SUCCEEDED and a FAILED shell run counted",
            lambda s: (
                value(s, finished, state="SUCCEEDED", kind="shell") > base_ok
                and value(s, finished, state="FAILED", kind="shell") > base_failed
            ),
        )
        started = value(samples, "cronwire_executions_started_total", kind="shell")
        assert started - value(before, "cronwire_executions_started_total", kind="shell") >= 2

        # A schedule firing every second: each start is observed by the lag histogram.
        lag_before = value(samples, "cronwire_scheduling_lag_seconds_count")
        client.create_schedule("every-second", job="ok", trigger=CronTrigger("* * * * * *"))
        samples = wait_for_metric(
            port,
            "the lag histogram to count three scheduled starts",
            lambda s: value(s, "cronwire_scheduling_lag_seconds_count") >= lag_before + 3,
        )
        # Every start is counted in the +Inf bucket, and each bucket includes the ones below it.
        assert value(samples, "cronwire_scheduling_lag_seconds_bucket", le="+Inf") == value(
            samples, "cronwire_scheduling_lag_seconds_count"
        )
        assert value(samples, "cronwire_scheduling_lag_seconds_bucket", le="60.0") == value(
            samples, "cronwire_scheduling_lag_seconds_count"
        ), "a schedule firing on an idle server starts within a minute"
        client.delete_schedule("every-second")


def test_queue_depth_and_running_executions(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    with Client(server.target, namespace="metrics") as client:
        client.create_job("slow", executor="shell", parameters={"argv": ["sleep", "60"]}, max_concurrency=1)
        runs = [client.run_job("slow") for _ in range(3)]
        # One runs; the job's concurrency limit keeps the other two waiting in the queue.
        samples = wait_for_metric(
            port,
            "one running execution and two queued",
            lambda s: value(s, "cronwire_executions_running") == 1 and value(s, "cronwire_queue_depth") == 2,
        )
        assert value(samples, "cronwire_oldest_queued_age_seconds") >= 0
        assert value(samples, "cronwire_db_pool_size") > 0
        assert value(samples, "cronwire_db_pool_connections", state="in_use") >= 0
        assert ("cronwire_db_pool_connections", frozenset({("state", "idle")})) in samples
        for run in runs:
            client.cancel_execution(run.name, reason="done measuring")
        samples = wait_for_metric(
            port,
            "the queue to empty and the run to stop",
            lambda s: value(s, "cronwire_executions_running") == 0 and value(s, "cronwire_queue_depth") == 0,
        )
        assert value(samples, "cronwire_executions_finished_total", state="CANCELLED", kind="shell") >= 1


def test_skipped_ticks_are_counted_by_reason(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    skipped = "cronwire_ticks_skipped_total"
    before = scrape(port)
    assert {value(before, skipped, reason=r) for r in ("overlap", "missed", "paused")} == {0.0}
    with Client(server.target, namespace="metrics") as client:
        client.create_job("sleepy", executor="shell", parameters={"argv": ["sleep", "60"]})
        # Every second, while the first run sleeps: the next ticks are skipped (overlap policy SKIP).
        client.create_schedule(
            "busy", job="sleepy", trigger=CronTrigger("* * * * * *"), overlap_policy=OverlapPolicy.SKIP
        )
        wait_for_metric(
            port, "an overlapping tick counted", lambda s: value(s, skipped, reason="overlap") >= 1
        )
        client.delete_schedule("busy")
        for run in client.list_executions(job="sleepy", states=[ExecutionState.RUNNING]).items:
            client.cancel_execution(run.name)


def test_rpcs_are_counted_by_method_and_code(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    unary = {"grpc_type": "unary", "grpc_service": "cronwire.v1.JobService"}
    before = scrape(port)
    with Client(server.target, namespace="metrics") as client:
        client.create_job("present", executor="shell", parameters={"argv": ["true"]})
        client.get_job("present")
        with pytest.raises(NotFound):
            client.get_job("absent")
    samples = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    assert delta("grpc_server_started_total", **unary, grpc_method="GetJob") == 2
    assert delta("grpc_server_handled_total", **unary, grpc_method="GetJob", grpc_code="OK") == 1
    assert delta("grpc_server_handled_total", **unary, grpc_method="GetJob", grpc_code="NOT_FOUND") == 1
    assert delta("grpc_server_handled_total", **unary, grpc_method="CreateJob", grpc_code="OK") == 1
    assert delta("grpc_server_handling_seconds_count", **unary, grpc_method="GetJob") == 2
    # No label carries a job's name.
    assert not any("present" in v or "absent" in v for _, labels in samples for _, v in labels)


def test_executions_of_a_killed_replica_are_counted_as_lease_recoveries(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cronwire.db'}"
    victim = start_server(url, tmp_path / "victim", "--lease-seconds", "1")
    job_processes: list[int] = []
    try:
        with Client(victim.target, namespace="metrics") as client:
            client.create_job("sleeper", executor="shell", parameters={"argv": ["sleep", "30"]})
            run = client.run_job("sleeper")
            # Each job process leads its own process group: stopped below, whatever happens.
            job_processes = wait_for(lambda: child_pids(victim.process.pid), DEADLINE, "the job process")
        assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        port_file = tmp_path / "metrics-port"
        survivor = start_server(
            url,
            tmp_path / "survivor",
            "--lease-seconds",
            "1",
            "--metrics-address",
            "127.0.0.1:0",
            "--metrics-port-file",
            str(port_file),
        )
        try:
            port = metrics_port(port_file)
            wait_for_metric(
                port, "the lost run counted", lambda s: value(s, "cronwire_lease_recoveries_total") == 1
            )
        finally:
            survivor.stop()
    finally:
        victim.stop(signal.SIGKILL)
        for pgid in job_processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    lost = next(line for line in survivor.log().splitlines() if "run lost by worker" in line)
    assert f"execution={run.name.rsplit('/', 1)[1]}" in lost


def test_calls_refused_by_authentication_are_counted(tmp_path: Path) -> None:
    port_file = tmp_path / "metrics-port"
    server = start_server(
        f"sqlite:///{tmp_path / 'cronwire.db'}",
        tmp_path,
        "--require-auth",
        "--metrics-address",
        "127.0.0.1:0",
        "--metrics-port-file",
        str(port_file),
    )
    try:
        port = metrics_port(port_file)
        with Client(server.target, namespace="metrics") as client, pytest.raises(Unauthenticated):
            client.get_job("anything")
        samples = scrape(port)
    finally:
        server.stop()
    refused = {"grpc_type": "unary", "grpc_service": "cronwire.v1.JobService", "grpc_method": "GetJob"}
    assert value(samples, "grpc_server_handled_total", **refused, grpc_code="UNAUTHENTICATED") == 1


def test_watchers_gauge_follows_open_streams(served: tuple[ServerProcess, int]) -> None:
    server, port = served
    stream = {"grpc_type": "server_stream", "grpc_service": "cronwire.v1.EventService"}
    base = value(scrape(port), "cronwire_watchers")
    with grpc.insecure_channel(server.target) as channel:
        watch = event_service_pb2_grpc.EventServiceStub(channel).WatchEvents(
            event_service_pb2.WatchEventsRequest(parent="namespaces/metrics")
        )
        wait_for_metric(port, "an open watcher", lambda s: value(s, "cronwire_watchers") == base + 1)
        watch.cancel()  # type: ignore[no-untyped-call]
        samples = wait_for_metric(
            port, "the watcher to close", lambda s: value(s, "cronwire_watchers") == base
        )
    assert value(samples, "grpc_server_started_total", **stream, grpc_method="WatchEvents") >= 1
    cancelled = {**stream, "grpc_method": "WatchEvents", "grpc_code": "CANCELLED"}
    wait_for_metric(
        port,
        "the cancelled stream counted when it ended",
        lambda s: value(s, "grpc_server_handled_total", **cancelled) >= 1,
    )


def test_with_the_http_listener_off_only_grpc_listens(tmp_path: Path) -> None:
    # On loopback the listener (and /metrics) is on by default; start_server turns it off.
    server = start_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path, "--http-address", "")
    try:
        with Client(server.target) as client:
            client.list_job_types()
        listening = _listening_ports(server.process.pid)
    finally:
        server.stop()
    assert listening == {server.port}, "only the gRPC port is open"
    assert "/metrics" not in server.log()


def test_a_bad_metrics_address_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cronwire_server", "--metrics-address", "localhost"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--metrics-address" in result.stderr
    assert "HOST:PORT" in result.stderr


def _version() -> str:
    from cronwire_server import __version__

    return __version__


def _listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on: its socket inodes matched against /proc/net/tcp{,6}."""
    fd_dir = Path(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fd_dir.iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            listening = fields[3] == "0A"
            if listening and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
