"""validate_only checks the caller's permissions as the real call would, and `cronwire apply
--dry-run` reports a refusal at its place in the file, over a real channel with auth on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

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


async def test_validate_only_refuses_what_the_key_may_not_do(
    server: RunningServer, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{server.port}"
    async with cronwire.AsyncClient(target, token=keys.editor_a, namespace="team-a") as editor:
        # The key carries the default executor kinds (http, noop): a shell job is refused.
        with pytest.raises(cronwire.PermissionDenied):
            await editor.create_job("sh", executor="shell", parameters={"argv": ["true"]}, validate_only=True)
        assert (await editor.create_job("ok", executor="noop", validate_only=True)).name.endswith("/ok")
        assert (await editor.list_jobs()).items == []
    async with cronwire.AsyncClient(target, token=keys.viewer_a, namespace="team-a") as viewer:
        with pytest.raises(cronwire.PermissionDenied):  # the role is checked too
            await viewer.create_job("ok", executor="noop", validate_only=True)

    plan = tmp_path / "f.json"
    plan.write_text(
        json.dumps(
            {
                "namespace": "team-a",
                "jobs": [
                    {"name": "fine", "executor": "noop"},
                    {"name": "sh", "executor": "shell", "parameters": {"argv": ["true"]}},
                ],
            }
        )
    )
    code = await asyncio.to_thread(
        main, ["--server", target, "--token", keys.editor_a, "apply", "-f", str(plan), "--dry-run"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "cronwire: error: jobs[1].executor: key keys/" in err
    assert "may not create or change 'shell' jobs" in err
    assert "nothing changed in namespace team-a: the server refused 1 place of the file" in err
