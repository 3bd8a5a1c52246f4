"""Executor kinds are permissions: a key creates and changes jobs only of the kinds it was granted
(http and noop by default; shell and python by name), and python jobs call only the modules the
server allows. Over real channels to an in-process server with auth on, on each backend."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from google.protobuf import json_format
from sqlalchemy.pool import NullPool

import cronwire
from cronwire.cli import main
from cronwire.v1 import (
    execution_pb2,
    execution_service_pb2,
    job_pb2,
    job_service_pb2,
    key_pb2,
    key_service_pb2,
)
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.key_service_pb2_grpc import KeyServiceStub
from cronwire_server.app import RunningServer
from cronwire_server.auth.keys import Role, digest, format_token, new_key_id, new_secret
from cronwire_server.auth.manage import KeyManager
from cronwire_server.auth.principal import OPEN
from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.python_runner import PythonRunner
from cronwire_server.executors.registry import EntryPolicy
from cronwire_server.executors.runtime import RunRequest
from cronwire_server.storage.migrate import alembic_config
from cronwire_server.storage.sql_keys import KeyStore
from cronwire_server.storage.sql_store import create_engine, sync_url
from tests.integration.api.test_execution_service import ENDED
from tests.integration.security.test_auth import TEAM_A, Keys, bearer, make_keys, start
from tests.support import eventually, status_details

SERVER_BIN = Path(sys.executable).with_name("cronwire-server")
SHELL = {"argv": ["true"]}


@dataclass
class Tokens:
    keys: Keys  # made without --executors: http and noop only, the admins included
    root: str  # an admin of every namespace and every executor kind


@pytest.fixture
async def tokens(database_url: str) -> Tokens:
    keys = await make_keys(database_url)
    engine = create_engine(database_url, pool_size=1)
    try:
        _, root = await KeyManager(KeyStore(engine)).create(
            Role.ADMIN, ["*"], "root", caller=OPEN, executors=["*"]
        )
    finally:
        await engine.dispose()
    return Tokens(keys, root)


@pytest.fixture
async def server(database_url: str, tokens: Tokens) -> AsyncIterator[RunningServer]:
    running = await start(database_url, rate_limit_per_key=0, key_cache_seconds=0.2)
    yield running
    await running.stop(grace=0)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


def job(executor: str, parameters: dict[str, Any], description: str = "") -> job_pb2.Job:
    return json_format.ParseDict(
        {"executor": executor, "parameters": parameters, "description": description}, job_pb2.Job()
    )


async def create_job(channel: grpc.aio.Channel, token: str, job_id: str, message: job_pb2.Job) -> job_pb2.Job:
    request = job_service_pb2.CreateJobRequest(parent=TEAM_A, job_id=job_id, job=message)
    return (await JobServiceStub(channel).CreateJob(request, metadata=bearer(token))).job


async def refused(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def get_job(channel: grpc.aio.Channel, token: str, job_id: str) -> job_pb2.Job | None:
    request = job_service_pb2.GetJobRequest(name=f"{TEAM_A}/jobs/{job_id}")
    try:
        return (await JobServiceStub(channel).GetJob(request, metadata=bearer(token))).job
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None


async def grant(
    channel: grpc.aio.Channel,
    admin: str,
    *executors: str,
    role: key_pb2.Role.ValueType = key_pb2.ROLE_EDITOR,
) -> str:
    key = key_pb2.Key(namespaces=["team-a"], role=role, executors=list(executors))
    request = key_service_pb2.CreateKeyRequest(key=key)
    return (await KeyServiceStub(channel).CreateKey(request, metadata=bearer(admin))).token


async def run_to_end(channel: grpc.aio.Channel, token: str, name: str) -> execution_pb2.Execution:
    jobs, executions = JobServiceStub(channel), ExecutionServiceStub(channel)
    run = await jobs.RunJob(job_service_pb2.RunJobRequest(name=name), metadata=bearer(token))

    async def ended() -> execution_pb2.Execution | None:
        request = execution_service_pb2.GetExecutionRequest(name=run.execution.name)
        got = (await executions.GetExecution(request, metadata=bearer(token))).execution
        return got if got.state in ENDED else None

    return await eventually(ended, 20, f"{run.execution.name} to end")


async def test_a_key_without_shell_can_neither_create_nor_change_shell_jobs(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    jobs = JobServiceStub(channel)
    # The default editor key (made without --executors): http and noop only.
    error = await refused(
        create_job(channel, tokens.keys.editor_a, "sh", job("shell", SHELL)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert "job.executor" in (error.details() or "")
    assert "'shell'" in (error.details() or "")
    assert status_details(error)[1] == "EXECUTOR_NOT_GRANTED"
    assert await get_job(channel, tokens.root, "sh") is None, "a refused job was stored"
    await refused(
        create_job(
            channel, tokens.keys.editor_a, "py", job("python", {"callable": "json:loads", "args": ["1"]})
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert await get_job(channel, tokens.root, "py") is None
    await create_job(channel, tokens.keys.editor_a, "hook", job("noop", {}))

    # Granted by name, it works.
    shell_editor = await grant(channel, tokens.root, "shell")
    created = await create_job(channel, shell_editor, "sh", job("shell", SHELL, "before"))
    assert created.executor == "shell"

    # A shell job is not the default key's to change, whatever the change...
    update = job_service_pb2.UpdateJobRequest(job=job("shell", SHELL, "after"))
    update.job.name = created.name
    update.update_mask.paths.append("description")
    error = await refused(
        jobs.UpdateJob(update, metadata=bearer(tokens.keys.editor_a)), grpc.StatusCode.PERMISSION_DENIED
    )
    assert "job.executor" in (error.details() or "")
    # ...not even to turn it into a kind the key may use.
    to_noop = job_service_pb2.UpdateJobRequest(job=job("noop", {}))
    to_noop.job.name = created.name
    await refused(
        jobs.UpdateJob(to_noop, metadata=bearer(tokens.keys.editor_a)), grpc.StatusCode.PERMISSION_DENIED
    )
    # Nor may it turn a noop job into a shell one.
    to_shell = job_service_pb2.UpdateJobRequest(job=job("shell", SHELL))
    to_shell.job.name = f"{TEAM_A}/jobs/hook"
    await refused(
        jobs.UpdateJob(to_shell, metadata=bearer(tokens.keys.editor_a)), grpc.StatusCode.PERMISSION_DENIED
    )
    stored = await get_job(channel, tokens.root, "sh")
    assert stored is not None
    assert stored.description == "before"
    assert stored.executor == "shell"
    hook = await get_job(channel, tokens.root, "hook")
    assert hook is not None
    assert hook.executor == "noop"
    # The granted key changes it.
    update.job.description = "after"
    assert (await jobs.UpdateJob(update, metadata=bearer(shell_editor))).job.description == "after"

    # Running an existing job needs no grant: the job's kind was granted to whoever made it.
    ran = await run_to_end(channel, tokens.keys.editor_a, created.name)
    assert ran.state == execution_pb2.EXECUTION_STATE_SUCCEEDED, ran.error


async def test_keys_carry_their_executor_kinds_and_grant_only_their_own(
    channel: grpc.aio.Channel, tokens: Tokens
) -> None:
    key_service = KeyServiceStub(channel)
    created = await key_service.CreateKey(
        key_service_pb2.CreateKeyRequest(
            key=key_pb2.Key(
                namespaces=["team-a"], role=key_pb2.ROLE_EDITOR, executors=["shell", "python", "shell"]
            )
        ),
        metadata=bearer(tokens.root),
    )
    assert list(created.key.executors) == ["shell", "python"]
    default = await key_service.CreateKey(
        key_service_pb2.CreateKeyRequest(key=key_pb2.Key(namespaces=["team-a"], role=key_pb2.ROLE_ADMIN)),
        metadata=bearer(tokens.root),
    )
    # An admin made without a list gets the default too.
    assert list(default.key.executors) == ["http", "noop"]
    listed = await key_service.ListKeys(
        key_service_pb2.ListKeysRequest(page_size=1000), metadata=bearer(tokens.root)
    )
    by_name = {k.name: list(k.executors) for k in listed.keys}
    assert by_name[created.key.name] == ["shell", "python"]
    assert by_name[default.key.name] == ["http", "noop"]
    got = await key_service.GetKey(
        key_service_pb2.GetKeyRequest(name=created.key.name), metadata=bearer(tokens.root)
    )
    assert list(got.key.executors) == ["shell", "python"]

    error = await refused(
        key_service.CreateKey(
            key_service_pb2.CreateKeyRequest(
                key=key_pb2.Key(namespaces=["team-a"], role=key_pb2.ROLE_EDITOR, executors=["http", "ssh"])
            ),
            metadata=bearer(tokens.root),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert set(status_details(error)[0]) == {"key.executors[1]"}
    # An admin with the default kinds cannot grant itself (or anyone) shell.
    error = await refused(grant(channel, default.token, "shell"), grpc.StatusCode.PERMISSION_DENIED)
    assert "executor kinds" in (error.details() or "")
    await refused(
        grant(channel, default.token, "*", role=key_pb2.ROLE_ADMIN), grpc.StatusCode.PERMISSION_DENIED
    )
    assert list(
        (
            await KeyServiceStub(channel).GetKey(
                key_service_pb2.GetKeyRequest(name=default.key.name), metadata=bearer(default.token)
            )
        ).key.executors
    ) == ["http", "noop"]
    await grant(channel, default.token, "http")
    # So does the admin of every namespace made without --executors.
    await refused(grant(channel, tokens.keys.admin, "python"), grpc.StatusCode.PERMISSION_DENIED)


async def test_python_jobs_may_not_call_os_or_builtins(channel: grpc.aio.Channel, tokens: Tokens) -> None:
    jobs = JobServiceStub(channel)
    python_editor = await grant(channel, tokens.root, "python")
    for index, spec in enumerate(["os:system", "builtins:exec", "subprocess:run", "tempfile:_os.system"]):
        error = await refused(
            create_job(
                channel, python_editor, f"bad-{index}", job("python", {"callable": spec, "args": ["id"]})
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert set(status_details(error)[0]) == {"job.parameters.callable"}, spec
        assert await get_job(channel, tokens.root, f"bad-{index}") is None
    # Nor through the interpreter or variables that make it load other code.
    sneaky = {
        "callable": "math:fsum",
        "python": "/bin/sh",
        "env": {"PYTHONWARNINGS": "ignore::antigravity.Browser", "BROWSER": "id", "LANG": "C"},
    }
    error = await refused(
        create_job(channel, python_editor, "sneaky", job("python", sneaky)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(status_details(error)[0]) == {
        "job.parameters.python",
        "job.parameters.env.PYTHONWARNINGS",
        "job.parameters.env.BROWSER",
    }
    fine = await create_job(
        channel, python_editor, "fine", job("python", {"callable": "math:fsum", "args": [[1, 2]]})
    )
    update = job_service_pb2.UpdateJobRequest(job=job("python", {"callable": "os:system", "args": ["id"]}))
    update.job.name = fine.name
    error = await refused(
        jobs.UpdateJob(update, metadata=bearer(python_editor)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert set(status_details(error)[0]) == {"job.parameters.callable"}
    stored = await get_job(channel, tokens.root, "fine")
    assert stored is not None
    assert stored.parameters["callable"] == "math:fsum"


async def test_the_python_path_allow_list_is_checked_at_create_and_again_at_run(
    database_url: str, tokens: Tokens
) -> None:
    # A server that allows os stores such a job...
    running = await start(database_url, rate_limit_per_key=0, python_path_allow=("os",))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            python_editor = await grant(channel, tokens.root, "python")
            stored = await create_job(channel, python_editor, "pid", job("python", {"callable": "os:getpid"}))
            await refused(
                create_job(
                    channel, python_editor, "sum", job("python", {"callable": "math:fsum", "args": [[1]]})
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
    finally:
        await running.stop(grace=0)
    # ...which a server with the default policy refuses to run.
    running = await start(database_url, rate_limit_per_key=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            ended = await run_to_end(channel, python_editor, stored.name)
    finally:
        await running.stop(grace=0)
    assert ended.state == execution_pb2.EXECUTION_STATE_FAILED
    assert ended.error.startswith("refused: module 'os'"), ended.error


async def test_the_child_refuses_a_function_reached_through_a_refused_module(tmp_path: Path) -> None:
    await asyncio.to_thread(
        (tmp_path / "tasks.py").write_text, "import os\nfrom os import getpid\n\ndef ok():\n    return 'ok'\n"
    )
    runner = PythonRunner(entry=EntryPolicy(allow=("tasks",)))
    outcomes = {}
    for spec in ("tasks:ok", "tasks:os.getpid", "tasks:getpid"):
        request = RunRequest(
            execution_name="namespaces/a/executions/x",
            job_name="namespaces/a/jobs/x",
            parameters={"callable": spec, "working_dir": str(tmp_path)},
            arguments={},
            scheduled_time=datetime.now(UTC),
            attempt=1,
            timeout=None,
        )
        outcomes[spec] = await runner.run(request, asyncio.Event())
    assert outcomes["tasks:ok"].state is ExecutionState.SUCCEEDED, outcomes["tasks:ok"]
    assert outcomes["tasks:os.getpid"].state is ExecutionState.FAILED
    assert "reaches module 'os'" in outcomes["tasks:os.getpid"].error
    assert outcomes["tasks:getpid"].state is ExecutionState.FAILED
    assert (
        "of module 'posix'" in outcomes["tasks:getpid"].error
        or "of module 'nt'" in outcomes["tasks:getpid"].error
    )


def test_the_server_keys_command_grants_and_lists_executor_kinds(
    fresh_database_url: Callable[[str], str],
) -> None:
    # One backend: the API tests cover both; this one is about the command.
    database_url = fresh_database_url("sqlite")

    def keys(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SERVER_BIN), "keys", *argv, "--database-url", database_url],
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = keys("create", "--namespace", "a", "--role", "editor", "--executors", "shell,python")
    assert made.returncode == 0, made.stderr
    granted = made.stdout.split("_")[1]
    assert "executors shell, python" in made.stderr
    default = keys("create", "--namespace", "a", "--role", "admin").stdout.split("_")[1]
    bad = keys("create", "--namespace", "a", "--role", "editor", "--executors", "shell,rsh")
    assert bad.returncode == 2, bad.stderr
    assert "executors[1]" in bad.stderr
    listing = keys("list")
    assert listing.returncode == 0, listing.stderr
    header, *rows = listing.stdout.splitlines()
    assert header.split()[:4] == ["ID", "ROLE", "NAMESPACES", "EXECUTORS"]
    columns = {row.split()[0]: row.split()[1:4] for row in rows}
    assert columns[granted] == ["editor", "a", "shell,python"]
    assert columns[default] == ["admin", "a", "http,noop"]


def _before_this_feature(url: str) -> None:
    """Take the database back to the migration before 0012, as the previous release left it."""
    previous = ScriptDirectory.from_config(alembic_config()).get_revision("0012").down_revision
    engine = sa.create_engine(sync_url(url), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), str(previous))
    finally:
        engine.dispose()


async def test_the_migration_keeps_what_existing_keys_could_do(database_url: str) -> None:
    await asyncio.to_thread(_before_this_feature, database_url)
    engine = create_engine(database_url, pool_size=1)
    old = sa.table(
        "api_keys",
        *(sa.column(c) for c in ("id", "description", "role", "secret_sha256", "create_time")),
        sa.column("namespaces", sa.JSON()),
    )
    tokens = {}
    try:
        async with engine.begin() as conn:
            for role in ("VIEWER", "EDITOR", "ADMIN"):
                key_id, secret = new_key_id(), new_secret()
                await conn.execute(
                    old.insert().values(
                        id=key_id,
                        description="from before",
                        role=role,
                        namespaces=["team-a"],
                        secret_sha256=digest(secret),
                        create_time=datetime.now(UTC),
                    )
                )
                tokens[role] = format_token(key_id, secret)
    finally:
        await engine.dispose()
    # The server migrates the database as it starts.
    running = await start(database_url, rate_limit_per_key=0)
    try:
        engine = create_engine(database_url, pool_size=1)
        try:
            store = KeyStore(engine)
            executors = {role: (await store.get(t.split("_")[1])).executors for role, t in tokens.items()}
        finally:
            await engine.dispose()
        assert executors == {"VIEWER": ("http", "noop"), "EDITOR": ("*",), "ADMIN": ("*",)}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            # The old editor key still makes shell and python jobs; the old admin still grants them.
            await create_job(channel, tokens["EDITOR"], "sh", job("shell", SHELL))
            await create_job(channel, tokens["EDITOR"], "py", job("python", {"callable": "math:fsum"}))
            await grant(channel, tokens["ADMIN"], "shell", "python")
            # A key made now gets the default.
            await refused(
                create_job(channel, await grant(channel, tokens["ADMIN"]), "sh2", job("shell", SHELL)),
                grpc.StatusCode.PERMISSION_DENIED,
            )
    finally:
        await running.stop(grace=0)


async def test_the_cli_and_the_sdk_grant_and_show_executor_kinds(
    server: RunningServer, tokens: Tokens, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{server.port}"

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--server", target, "--token", tokens.root, *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = await asyncio.to_thread(
        run, "keys", "create", "--scope", "team-a", "--role", "editor", "--executors", "shell,python"
    )
    assert code == 0, err
    granted = out.strip().split("_")[1]
    code, out, err = await asyncio.to_thread(run, "keys", "create", "--scope", "team-a", "--role", "editor")
    assert code == 0, err
    default = out.strip().split("_")[1]
    code, out, err = await asyncio.to_thread(run, "keys", "list")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["ID", "ROLE", "NAMESPACES", "EXECUTORS"]
    columns = {row.split()[0]: row.split()[1:4] for row in rows}
    assert columns[granted] == ["editor", "team-a", "shell,python"]
    assert columns[default] == ["editor", "team-a", "http,noop"]
    async with cronwire.AsyncClient(target, token=tokens.root, namespace="team-a") as admin:
        created = await admin.create_key(["team-a"], cronwire.Role.EDITOR, executors=["python"])
        assert created.key.executors == ["python"]
        assert (await admin.get_key(granted)).executors == ["shell", "python"]
