"""The SDK and the CLI against a server with auth on: key management through both clients, and
the typed errors a refused call raises."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

import cronwire
from cronwire.cli import EXIT_PERMISSION_DENIED, main
from cronwire_server.app import RunningServer
from tests.integration.api.test_execution_service import eventually
from tests.integration.security.test_auth import Keys, make_keys, start


@pytest.fixture
async def keys(database_url: str) -> Keys:
    return await make_keys(database_url)


@pytest.fixture
async def server(database_url: str, keys: Keys) -> AsyncIterator[RunningServer]:
    running = await start(database_url, rate_limit_per_key=0, key_cache_seconds=0.2)
    yield running
    await running.stop(grace=0)


async def test_the_sdk_manages_keys_and_raises_typed_auth_errors(server: RunningServer, keys: Keys) -> None:
    target = f"127.0.0.1:{server.port}"
    async with cronwire.AsyncClient(target, token=keys.admin, namespace="team-a") as admin:
        created = await admin.create_key(["team-a"], cronwire.Role.EDITOR, description="deployer")
        assert created.key.role is cronwire.Role.EDITOR
        assert created.key.namespaces == ["team-a"]
        assert created.token.startswith(f"cwk_{created.key.id}_")
        assert (await admin.get_key(created.key.id)).description == "deployer"
        listed = [k async for k in admin.iter_keys(page_size=2)]
        assert created.key.name in {k.name for k in listed}
        assert any(k.revoked for k in listed)
        async with cronwire.AsyncClient(target, token=created.token, namespace="team-a") as editor:
            await editor.create_job("deploy", executor="noop")
            with pytest.raises(cronwire.PermissionDenied):
                await editor.list_keys()
            with pytest.raises(cronwire.NotFound):
                await editor.get_job("namespaces/team-b/jobs/deploy")
            revoked = await admin.revoke_key(created.key)
            assert revoked.revoked

            async def refused() -> bool:
                try:
                    await editor.get_job("deploy")
                except cronwire.Unauthenticated:
                    return True
                return False

            await eventually(refused, 5, "the revoked key to be refused")
    async with cronwire.AsyncClient(target, namespace="team-a") as anonymous:
        with pytest.raises(cronwire.Unauthenticated):
            await anonymous.list_jobs()


async def test_the_cli_manages_keys(
    server: RunningServer, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{server.port}"

    def run(token: str, *argv: str) -> tuple[int, str, str]:
        code = main(["--server", target, "--token", token, *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = await asyncio.to_thread(
        run, keys.admin, "keys", "create", "--scope", "team-a", "--role", "viewer", "--description", "grafana"
    )
    assert code == 0, err
    token = out.strip()
    key_id = token.split("_")[1]
    assert f"keys/{key_id}" in err
    code, out, _ = await asyncio.to_thread(run, keys.admin, "keys", "list")
    (row,) = [line for line in out.splitlines() if line.startswith(key_id)]
    assert row.split()[:3] == [key_id, "viewer", "team-a"]
    assert token.split("_", 2)[2] not in out
    code, out, err = await asyncio.to_thread(run, keys.admin, "keys", "get", key_id, "-o", "json")
    assert code == 0, err
    assert json.loads(out)["description"] == "grafana"
    code, out, err = await asyncio.to_thread(run, token, "keys", "revoke", key_id)
    assert code == EXIT_PERMISSION_DENIED
    assert err.count("\n") == 1
    code, out, _ = await asyncio.to_thread(run, keys.admin, "keys", "revoke", key_id)
    assert code == 0
    assert f"revoked keys/{key_id}" in out
