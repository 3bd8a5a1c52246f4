"""The `cronwire-server` process as a user runs it: health, reflection, restarts, SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cronwire.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc, schedule_pb2, schedule_service_pb2
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from cronwire_server.app import SERVICE_NAMES
from tests.support import start_server


def test_health_reports_serving_for_the_server_and_each_service(database_url: str, tmp_path: Path) -> None:
    server = start_server(database_url, tmp_path)
    try:
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", *SERVICE_NAMES):
                response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    finally:
        assert server.stop() == 0, server.log()


def test_sigterm_flips_health_to_not_serving_then_exits_cleanly(database_url: str, tmp_path: Path) -> None:
    server = start_server(database_url, tmp_path, "--shutdown-grace", "5")
    with grpc.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert server.process.wait(timeout=30) == 0, server.log()
    assert "shutting down" in server.log()


def test_everything_stored_survives_a_restart(database_url: str, tmp_path: Path) -> None:
    first = start_server(database_url, tmp_path)
    try:
        with grpc.insecure_channel(first.target) as channel:
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            job = jobs.CreateJob(
                job_service_pb2.CreateJobRequest(
                    parent="namespaces/prod",
                    job_id="keep-me",
                    job=job_pb2.Job(executor="shell", parameters={"argv": ["true"]}, description="kept"),
                ),
                timeout=10,
            ).job
            schedule = (
                ScheduleServiceStub(channel)
                .CreateSchedule(
                    schedule_service_pb2.CreateScheduleRequest(
                        parent="namespaces/prod",
                        schedule_id="daily",
                        schedule=schedule_pb2.Schedule(
                            job=job.name,
                            trigger={"cron": {"expression": "0 3 * * *"}},
                            time_zone="Asia/Tokyo",
                        ),
                    ),
                    timeout=10,
                )
                .schedule
            )
    finally:
        assert first.stop() == 0, first.log()

    second = start_server(database_url, tmp_path)
    try:
        with grpc.insecure_channel(second.target) as channel:
            jobs = job_service_pb2_grpc.JobServiceStub(channel)
            again_job = jobs.GetJob(job_service_pb2.GetJobRequest(name=job.name), timeout=10).job
            again_job.ClearField("stats")
            assert again_job == job
            again = ScheduleServiceStub(channel).GetSchedule(
                schedule_service_pb2.GetScheduleRequest(name=schedule.name), timeout=10
            )
            again.schedule.ClearField("stats")
            assert again.schedule == schedule
    finally:
        assert second.stop() == 0, second.log()


def test_migrate_command_prepares_a_new_database(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "cronwire_server", "migrate", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    assert (tmp_path / "fresh.db").exists()
