"""Auth as an operator meets it, through the `cronwire-server` entry point on each backend: the
first key made with `keys create` before any server runs, `keys list` and `keys revoke`, and a
server that will not listen beyond loopback without keys unless told --insecure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cronwire.v1 import job_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from tests.support import start_server, wait_for

SERVER = [sys.executable, "-m", "cronwire_server"]


def keys_command(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVER, "keys", *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def list_jobs(target: str, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as channel:
        try:
            JobServiceStub(channel).ListJobs(
                job_service_pb2.ListJobsRequest(parent="namespaces/ops"), metadata=metadata, timeout=10
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def test_keys_create_list_revoke_through_the_entry_point(database_url: str, tmp_path: Path) -> None:
    created = keys_command(
        database_url, "create", "--namespace", "ops", "--role", "viewer", "--description", "ci pipeline"
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("cwk_")
    key_id = token.split("_")[1]
    assert f"keys/{key_id}" in created.stderr
    assert "only this once" in created.stderr

    listed = keys_command(database_url, "list")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
    assert "viewer" in row
    assert "ops" in row
    assert "ci pipeline" in row
    assert token.split("_", 2)[2] not in listed.stdout

    server = start_server(database_url, tmp_path, "--require-auth", "--key-cache-seconds", "0.2")
    try:
        assert list_jobs(server.target, None) == grpc.StatusCode.UNAUTHENTICATED
        assert list_jobs(server.target, token) == grpc.StatusCode.OK
        revoked = keys_command(database_url, "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert f"revoked keys/{key_id}" in revoked.stdout
        wait_for(
            lambda: list_jobs(server.target, token) == grpc.StatusCode.UNAUTHENTICATED,
            10,
            "the revoked key to be refused",
        )
    finally:
        assert server.stop() == 0
    listed = keys_command(database_url, "list")
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
    assert row.split()[4] != "-"  # the REVOKED column has a time now

    unknown = keys_command(database_url, "revoke", "0" * 12)
    assert unknown.returncode == 1
    assert "no key" in unknown.stderr
    bad = keys_command(database_url, "create", "--namespace", "Not Valid", "--role", "admin")
    assert bad.returncode == 2
    assert "namespaces[0]" in bad.stderr


def run_server_briefly(database_url: str, workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVER, "--database-url", database_url, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workdir,
    )


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:0"])
def test_refuses_to_listen_beyond_loopback_without_a_key(
    database_url: str, tmp_path: Path, address: str
) -> None:
    result = run_server_briefly(database_url, tmp_path, "--listen", address)
    assert result.returncode != 0
    assert "keys create" in result.stderr
    assert "--insecure" in result.stderr


def test_insecure_serves_without_auth_and_says_so(database_url: str, tmp_path: Path) -> None:
    server = start_server(database_url, tmp_path, "--listen", "0.0.0.0:0", "--insecure")
    try:
        assert list_jobs(server.target, None) == grpc.StatusCode.OK
        assert "AUTHENTICATION IS OFF" in server.log()
    finally:
        assert server.stop() == 0


def test_beyond_loopback_with_a_key_auth_is_on(database_url: str, tmp_path: Path) -> None:
    created = keys_command(database_url, "create", "--namespace", "*", "--role", "admin")
    token = created.stdout.strip()
    server = start_server(database_url, tmp_path, "--listen", "0.0.0.0:0")
    try:
        assert list_jobs(server.target, None) == grpc.StatusCode.UNAUTHENTICATED
        assert list_jobs(server.target, token) == grpc.StatusCode.OK
    finally:
        assert server.stop() == 0
