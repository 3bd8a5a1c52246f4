"""ListNamespaces (`cronwire namespaces list`) and -A/--all-namespaces over a real channel with
auth on: each key sees only its namespaces."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

import cronwire
from cronwire.cli import main
from cronwire_server.app import RunningServer
from tests.integration.security.test_auth import Keys, make_keys, start


@pytest.fixture
async def keys(database_url: str) -> Keys:
    return await make_keys(database_url)


@pytest.fixture
async def server(database_url: str, keys: Keys) -> AsyncIterator[RunningServer]:
    running = await start(database_url, rate_limit_per_key=0)
    yield running
    await running.stop(grace=0)


async def test_namespaces_are_listed_with_their_counts_as_far_as_the_key_sees(
    server: RunningServer, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{server.port}"
    async with cronwire.AsyncClient(target, token=keys.admin) as admin:
        await admin.create_job("a1", executor="noop", namespace="team-a")
        await admin.create_job("a2", executor="noop", namespace="team-a")
        await admin.create_schedule(
            # Paused: it must never fire while the test lists executions (at the top of an hour).
            "hourly",
            job="namespaces/team-a/jobs/a1",
            trigger=cronwire.CronTrigger("@hourly"),
            paused=True,
        )
        await admin.create_job("b1", executor="noop", namespace="team-b")
        everything = [
            (n.name, n.job_count, n.schedule_count) async for n in admin.iter_namespaces(page_size=1)
        ]
        assert everything == [("namespaces/team-a", 2, 1), ("namespaces/team-b", 1, 0)]
        first = await admin.list_namespaces(page_size=1)
        assert first.next_page_token
        with pytest.raises(cronwire.InvalidArgument):
            await admin.list_namespaces(page_token="forged")
    async with cronwire.AsyncClient(target, token=keys.viewer_a) as viewer:
        assert [(n.id, n.job_count) async for n in viewer.iter_namespaces()] == [("team-a", 2)]

    def cli(token: str, *argv: str) -> tuple[int, str, str]:
        code = main(["--server", target, "--token", token, *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = await asyncio.to_thread(cli, keys.viewer_a, "namespaces", "list")
    assert code == 0, err
    assert out.splitlines() == ["NAME    JOBS  SCHEDULES", "team-a  2     1"]
    code, out, err = await asyncio.to_thread(cli, keys.admin, "jobs", "list", "-A", "-o", "json")
    assert code == 0, err
    assert [j["name"] for j in json.loads(out)] == [
        "namespaces/team-a/jobs/a1",
        "namespaces/team-a/jobs/a2",
        "namespaces/team-b/jobs/b1",
    ]
    code, out, err = await asyncio.to_thread(cli, keys.viewer_a, "jobs", "list", "--all-namespaces")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:]] == [
        "namespaces/team-a/jobs/a1",
        "namespaces/team-a/jobs/a2",
    ]
    code, out, err = await asyncio.to_thread(cli, keys.editor_b, "schedules", "list", "-A", "-o", "json")
    assert (code, json.loads(out)) == (0, [])
    code, out, err = await asyncio.to_thread(cli, keys.admin, "executions", "list", "-A", "-o", "json")
    assert (code, json.loads(out)) == (0, [])
