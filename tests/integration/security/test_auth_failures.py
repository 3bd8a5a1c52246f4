"""Failed authentications are paced per client address, over a real channel on each backend."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from cronwire.v1 import job_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from tests.integration.security.test_auth import TEAM_A, bearer, make_keys, retry_delay, start
from tests.support import status_details

RATE = 2.0
BURST = 5


async def test_an_address_failing_authentication_too_often_is_paced(database_url: str) -> None:
    keys = await make_keys(database_url)
    server = await start(database_url, auth_failures_per_peer=RATE, auth_failure_burst=BURST)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            jobs = JobServiceStub(channel)
            request = job_service_pb2.ListJobsRequest(parent=TEAM_A)

            async def code(token: str) -> grpc.StatusCode:
                try:
                    await jobs.ListJobs(request, metadata=bearer(token) if token else None)
                except grpc.aio.AioRpcError as error:
                    return error.code()
                return grpc.StatusCode.OK

            # Valid keys do not count against the address.
            for _ in range(BURST * 2):
                assert await code(keys.viewer_a) == grpc.StatusCode.OK
            guesses = ["", "cwk_000000000000_guess", keys.revoked, keys.viewer_a[:-2] + "xx", "Basic x"]
            assert [await code(guesses[i % len(guesses)]) for i in range(BURST)] == [
                grpc.StatusCode.UNAUTHENTICATED
            ] * BURST
            # Past the burst, the address is refused before any key is looked at: guesses and,
            # until it is back under the rate, its valid keys too.
            with pytest.raises(grpc.aio.AioRpcError) as paced:
                await jobs.ListJobs(request, metadata=bearer("cwk_000000000000_guess"))
            assert paced.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert status_details(paced.value)[1] == "RATE_LIMITED"
            assert "failed authentications" in (paced.value.details() or "")
            delay = retry_delay(paced.value)
            assert 0 < delay <= 1 / RATE
            assert await code(keys.viewer_a) == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(delay + 0.05)
            assert await code(keys.viewer_a) == grpc.StatusCode.OK
    finally:
        await server.stop(grace=0)
