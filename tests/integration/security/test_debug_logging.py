"""DEBUG logging of a real server process shows SQL statements at most, never their parameters
or the rows they return: job parameters, arguments and labels, key digests and server secrets
stay out of the log."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import json_format, struct_pb2

from cronwire.v1 import job_pb2, job_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from tests.integration.security.test_auth_process import keys_command
from tests.support import start_server

PARAMETER = "sentinel-parameter-5be1c7"
LABEL = "sentinel-label-0d93fa"
ARGUMENT = "sentinel-argument-7a2e41"


def test_debug_logs_hold_no_sql_parameters_or_rows(database_url: str, tmp_path: Path) -> None:
    created = keys_command(database_url, "create", "--namespace", "*", "--role", "admin")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    # No worker: the http job stays queued (nothing leaves the machine).
    server = start_server(
        database_url, tmp_path, "--require-auth", "--log-level", "DEBUG", "--roles", "api,dispatcher"
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            jobs = JobServiceStub(channel)
            metadata = (("authorization", f"Bearer {token}"),)
            job = job_pb2.Job(
                executor="http",
                parameters=json_format.ParseDict(
                    {"url": "https://example.com/", "body": PARAMETER}, struct_pb2.Struct()
                ),
                labels={"owner": LABEL},
            )
            made = jobs.CreateJob(
                job_service_pb2.CreateJobRequest(parent="namespaces/ops", job_id="hook", job=job),
                metadata=metadata,
            )
            arguments = json_format.ParseDict({"who": ARGUMENT}, struct_pb2.Struct())
            jobs.RunJob(
                job_service_pb2.RunJobRequest(name=made.job.name, arguments=arguments), metadata=metadata
            )
            jobs.GetJob(job_service_pb2.GetJobRequest(name=made.job.name), metadata=metadata)
    finally:
        server.stop()
    log = server.log()
    assert "DEBUG" in log  # the level took effect
    secret = token.split("_", 2)[2]
    key_id = token.split("_")[1]
    for value in (PARAMETER, LABEL, ARGUMENT, secret, key_id):
        assert value not in log, f"{value!r} is in the DEBUG log"
