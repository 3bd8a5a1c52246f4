"""A dependent job's run is told which execution started it (env for shell and python, headers
for http), through the SDK against a real server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import cronwire
from cronwire import DependencyCondition, ExecutionState, JobDependent
from tests.integration.client.conftest import ThreadedServer
from tests.support import wait_for

PRINT_PARENT = (
    'echo "$CRONWIRE_PARENT_EXECUTION|$CRONWIRE_PARENT_JOB|$CRONWIRE_PARENT_STATE|$CRONWIRE_PARENT_EXIT_CODE"'
)
PYTHON_MODULE = """
import os


def report():
    return {key: os.environ[f"CRONWIRE_PARENT_{key}"] for key in ("EXECUTION", "JOB", "STATE", "EXIT_CODE")}
"""


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, str]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append(dict(self.headers))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, str]]]]:
    received: list[dict[str, str]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Receiver", (_Receiver,), {"received": received}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alert", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(sqlite_url: str) -> Iterator[cronwire.Client]:
    # http jobs call the test's receiver on loopback.
    server = ThreadedServer(sqlite_url, allow_private_networks=True)
    with cronwire.Client(server.target, namespace="test") as connected:
        yield connected
    server.stop()


def _ended_child(client: cronwire.Client, job: str, parent: str) -> cronwire.Execution | None:
    for summary in client.list_executions(job=job).items:
        if summary.parent_execution == parent and summary.state not in (
            ExecutionState.QUEUED,
            ExecutionState.RUNNING,
        ):
            return client.get_execution(summary.name)
    return None


def test_dependents_get_their_parents_execution_job_state_and_exit_code(
    client: cronwire.Client, receiver: tuple[str, list[dict[str, str]]], tmp_path: Path
) -> None:
    url, received = receiver
    (tmp_path / "parentcheck.py").write_text(PYTHON_MODULE)
    tmp_path.chmod(0o755)
    client.create_job(
        "alert-shell",
        executor="shell",
        parameters={"command": PRINT_PARENT, "shell": True, "env": {"CRONWIRE_PARENT_JOB": "posing"}},
    )
    client.create_job(
        "alert-python",
        executor="python",
        parameters={"callable": "parentcheck:report", "working_dir": str(tmp_path)},
    )
    client.create_job("alert-http", executor="http", parameters={"url": url})
    on_failure = DependencyCondition.ON_FAILURE
    client.create_job(
        "extract",
        executor="shell",
        parameters={"argv": ["sh", "-c", "exit 3"]},
        dependents=[JobDependent(name, on_failure) for name in ("alert-shell", "alert-python", "alert-http")],
    )
    parent = client.run("extract", wait_timeout=30)
    assert (parent.state, parent.exit_code) == (ExecutionState.FAILED, 3)

    shell = wait_for(lambda: _ended_child(client, "alert-shell", parent.name), 30, "the shell dependent")
    assert shell.state == ExecutionState.SUCCEEDED, shell.output
    assert shell.output == f"{parent.name}|namespaces/test/jobs/extract|FAILED|3\n"
    python = wait_for(lambda: _ended_child(client, "alert-python", parent.name), 30, "the python dependent")
    assert python.state == ExecutionState.SUCCEEDED, python.output
    assert python.result == {
        "EXECUTION": parent.name,
        "JOB": "namespaces/test/jobs/extract",
        "STATE": "FAILED",
        "EXIT_CODE": "3",
    }
    http = wait_for(lambda: _ended_child(client, "alert-http", parent.name), 30, "the http dependent")
    assert http.state == ExecutionState.SUCCEEDED, http.error
    headers = received[0]
    assert headers["X-Cronwire-Parent-Execution"] == parent.name
    assert headers["X-Cronwire-Parent-Job"] == "namespaces/test/jobs/extract"
    assert headers["X-Cronwire-Parent-State"] == "FAILED"
    assert headers["X-Cronwire-Parent-Exit-Code"] == "3"

    # A run no other execution started has no parent variables (the job's env cannot set
    # them) and no parent headers.
    direct = client.run("alert-shell", wait_timeout=30)
    assert direct.output == "|||\n"
    client.run("alert-http", wait_timeout=30)
    assert not any(key.startswith("X-Cronwire-Parent") for key in received[1])
