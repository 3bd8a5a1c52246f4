"""Requests are decoded only after the caller is authenticated, on a real server process.

Bytes that are not a request message get UNAUTHENTICATED from a caller without a valid key (the
server spends nothing on them) and INVALID_ARGUMENT from one with a key, with or without auth,
and neither leaves a traceback in the server's log.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cronwire.v1 import job_service_pb2
from tests.integration.security.test_auth_process import keys_command
from tests.support import start_server

# Field 1 as a length-delimited string claiming far more bytes than follow; then a bad tag.
MALFORMED = [b"\x0a\xff\xff\xff\x0fabc", b"\xff\xff\xff\xff", b"\x0a\x02\xc3\x28"]
METHODS = ["/cronwire.v1.JobService/ListJobs", "/cronwire.v1.EventService/WatchEvents"]


def call_raw(target: str, method: str, body: bytes, token: str = "") -> tuple[grpc.StatusCode, str]:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as channel:
        streaming = method.endswith("WatchEvents")
        stub = (channel.unary_stream if streaming else channel.unary_unary)(
            method, request_serializer=None, response_deserializer=None
        )
        try:
            response = stub(body, metadata=metadata, timeout=10)
            if streaming:
                next(iter(response))
        except grpc.RpcError as error:
            return error.code(), error.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("auth", ["required", "off"])
def test_malformed_requests_are_refused_without_a_traceback(
    database_url: str, tmp_path: Path, auth: str
) -> None:
    token = ""
    if auth == "required":
        created = keys_command(database_url, "create", "--namespace", "*", "--role", "admin")
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
    server = start_server(database_url, tmp_path, *(["--require-auth"] if auth == "required" else []))
    try:
        # A well-formed request gets through, so the refusals below are about the bytes alone.
        good = job_service_pb2.ListJobsRequest(parent="namespaces/ops").SerializeToString()
        assert call_raw(server.target, METHODS[0], good, token) == (grpc.StatusCode.OK, "")
        for method in METHODS:
            for body in MALFORMED:
                if auth == "required":
                    for presented in ("", "cwk_000000000000_nope", "Basic x"):
                        code, _ = call_raw(server.target, method, body, presented)
                        assert code == grpc.StatusCode.UNAUTHENTICATED, (method, body, presented, code)
                code, details = call_raw(server.target, method, body, token)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, body, code, details)
                assert "not a valid" in details
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log
    assert "Exception deserializing" not in log, log
