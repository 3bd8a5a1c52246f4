"""A job never runs with the server's privileges: against a real `cronwire-server` running as root,
a job of an editor key scoped to namespace `a` can read neither the server's environment (the
database URL, `CRONWIRE_SECRET_*`) nor its command line, the secrets file or the SQLite database,
and cannot make itself an admin key of every namespace with `cronwire-server keys create`."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from cronwire.v1 import execution_pb2, execution_service_pb2, job_pb2, job_service_pb2
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from tests.conftest import in_ci
from tests.support import STARTUP_DEADLINE, wait_for

SERVER_BIN = Path(sys.executable).with_name("cronwire-server")
B_SECRET = "b-only-7d1e0c"
ENV_SECRET = "env-secret-55aa01"
ENDED = {
    execution_pb2.EXECUTION_STATE_SUCCEEDED,
    execution_pb2.EXECUTION_STATE_FAILED,
    execution_pb2.EXECUTION_STATE_TIMED_OUT,
    execution_pb2.EXECUTION_STATE_CANCELLED,
}

# Run by the job: every file of /proc it can read, the secrets file and the database, searched for
# the markers (given base64-encoded, so that its own command line does not hold them).
PROBE = """
import base64, glob, os, sys
marks = [base64.b64decode(m) for m in sys.argv[1].split(",")]
paths = glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline") + sys.argv[2:]
for path in paths:
    if path.startswith(f"/proc/{os.getpid()}/"):
        continue  # its own command line names the files it tries
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        continue
    if data.startswith(b"postgres:"):
        continue  # a PostgreSQL backend on this machine names its database (docs/security.md)
    if not path.startswith("/proc/"):
        print("readable", path)
    for index, mark in enumerate(marks):
        if mark in data:
            print("found", index, path)
"""


@pytest.fixture(autouse=True)
def as_root() -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI runs the tests as root: job isolation must be tested there")
        pytest.skip("needs root: a server switches the jobs' user only when it runs as root")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """The server's directory, one anyone may enter: only the modes of its files keep jobs out."""
    directory = Path(tempfile.mkdtemp(prefix="cronwire-isolation-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, True)


def start(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], int, Path]:
    """The server as deploy/ runs it: its database URL in its environment, not its command line."""
    port_file, log_path = workdir / "port", workdir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(SERVER_BIN), "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--require-auth"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            text=True,
        )

    def port() -> int | None:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        return int(port_file.read_text()) if port_file.exists() else None

    return process, wait_for(port, STARTUP_DEADLINE, "the server's port file"), log_path


def create_key(env: dict[str, str], cwd: Path, namespace: str, role: str, *more: str) -> str:
    made = subprocess.run(
        [str(SERVER_BIN), "keys", "create", "--namespace", namespace, "--role", role, *more],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.split()[0]


class Client:
    def __init__(self, target: str, token: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.jobs = JobServiceStub(self.channel)
        self.executions = ExecutionServiceStub(self.channel)

    def create_job(self, namespace: str, job_id: str, executor: str, parameters: dict[str, Any]) -> str:
        job = json_format.ParseDict({"executor": executor, "parameters": parameters}, job_pb2.Job())
        request = job_service_pb2.CreateJobRequest(parent=f"namespaces/{namespace}", job_id=job_id, job=job)
        return self.jobs.CreateJob(request, metadata=self.metadata, timeout=10).job.name

    def run(self, job: str) -> execution_pb2.Execution:
        request = job_service_pb2.RunJobRequest(name=job)
        started = self.jobs.RunJob(request, metadata=self.metadata, timeout=10).execution

        def ended() -> execution_pb2.Execution | None:
            get = execution_service_pb2.GetExecutionRequest(name=started.name)
            got = self.executions.GetExecution(get, metadata=self.metadata, timeout=10).execution
            return got if got.state in ENDED else None

        return wait_for(ended, 60, f"{started.name} to end", interval=0.1)


@pytest.mark.parametrize(
    "backend", [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_scoped_editors_job_cannot_reach_past_its_namespace(
    backend: str, shared_dir: Path, fresh_database_url: Callable[[str], str]
) -> None:
    secrets_file = shared_dir / "secrets.yaml"
    secrets_file.write_text(f"b-token:\n  value: {B_SECRET}\n  namespaces: [b]\n")
    secrets_file.chmod(0o600)
    if backend == "sqlite":
        database = shared_dir / "cronwire.db"
        url = f"sqlite:///{database}"
        marker = str(database)
        files = [str(database), f"{database}-wal", f"{database}-shm"]
    else:
        url = fresh_database_url("postgres")
        marker = url.rsplit("/", 1)[1]  # the database's name, random per test
        files = []
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "CRONWIRE_DATABASE_URL": url,
        "CRONWIRE_SECRETS_FILE": str(secrets_file),
        "CRONWIRE_SECRET_ENV_TOKEN": ENV_SECRET,
        "PYTHONUNBUFFERED": "1",
    }
    process, port, log_path = start(shared_dir, env)
    try:
        editor = create_key(env, shared_dir, "a", "editor", "--executors", "shell")
        admin = create_key(env, shared_dir, "b", "admin")
        target = f"127.0.0.1:{port}"
        editor_client, b_client = Client(target, editor), Client(target, admin)
        b_client.create_job("b", "private", "noop", {})

        marks = ",".join(base64.b64encode(m.encode()).decode() for m in (marker, B_SECRET, ENV_SECRET))
        probe = editor_client.create_job(
            "a", "probe", "shell", {"argv": [sys.executable, "-c", PROBE, marks, str(secrets_file), *files]}
        )
        probed = editor_client.run(probe)
        assert probed.state == execution_pb2.EXECUTION_STATE_SUCCEEDED, probed.error + probed.output
        assert probed.output == "", f"the job could read the server's secrets:\n{probed.output}"

        # The escalation path: with what the job can know (no URL: the default database in its own
        # directory) and, for SQLite, with the server's database named outright.
        urls = [""] + ([url] if backend == "sqlite" else [])
        script = "; ".join(
            f"{SERVER_BIN} keys create --namespace '*' --role admin"
            + (f" --database-url {u}" if u else "")
            + " 2>&1"
            for u in urls
        )
        escalate = editor_client.create_job("a", "escalate", "shell", {"shell": True, "command": script})
        escalated = editor_client.run(escalate)
        tokens = [line.split()[0] for line in escalated.output.splitlines() if line.startswith("cwk_")]
        if backend == "sqlite":
            assert (
                "unable to open database file" in escalated.output or "ermission denied" in escalated.output
            ), escalated.output
        for token in tokens:
            stolen = Client(target, token)
            with pytest.raises(grpc.RpcError) as caught:
                stolen.jobs.GetJob(
                    job_service_pb2.GetJobRequest(name="namespaces/b/jobs/private"),
                    metadata=stolen.metadata,
                    timeout=10,
                )
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        if backend == "sqlite":
            # Created by the server under its own umask: none of its files are the job's to read.
            for path in files:
                if os.path.exists(path):
                    assert os.stat(path).st_mode & 0o077 == 0, path
        log = log_path.read_text()
        assert "jobs run as nobody" in log or "jobs run as cronwire-jobs" in log, log
    finally:
        process.terminate()
        process.wait(30)


def test_the_server_warns_of_its_files_the_job_user_can_read(shared_dir: Path) -> None:
    secrets_file = shared_dir / "secrets.yaml"
    secrets_file.write_text("flat: value-for-everyone\n")
    secrets_file.chmod(0o644)
    database = shared_dir / "cronwire.db"
    env = {
        "PATH": os.environ["PATH"],
        "CRONWIRE_DATABASE_URL": f"sqlite:///{database}",
        "CRONWIRE_SECRETS_FILE": str(secrets_file),
    }
    # Made by someone else's umask before the server starts: readable by all.
    subprocess.run([str(SERVER_BIN), "migrate"], env=env, cwd=shared_dir, check=True, capture_output=True)
    database.chmod(0o644)
    process, _, log_path = start(shared_dir, env)
    try:
        wait_for(lambda: "secrets usable by every namespace" in log_path.read_text(), 10, "the warnings")
        log = log_path.read_text()
    finally:
        process.terminate()
        process.wait(30)
    assert f"can read {secrets_file}" in log
    assert f"can read {database}" in log
    assert f"can list the server's working directory {shared_dir}" in log
    assert "flat" in log


def test_root_jobs_need_allow_root_jobs(shared_dir: Path) -> None:
    env = {"PATH": os.environ["PATH"], "CRONWIRE_DATABASE_URL": f"sqlite:///{shared_dir / 'c.db'}"}
    refused = subprocess.run(
        [str(SERVER_BIN), "--listen", "127.0.0.1:0", "--run-as", "root"],
        env=env,
        cwd=shared_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "--allow-root-jobs" in refused.stderr
