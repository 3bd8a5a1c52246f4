"""Messages kept by version: a version converted once, the oldest dropped past the byte bound."""

from __future__ import annotations

from cronwire.v1 import job_pb2
from cronwire_server.api.message_cache import MessageCache


def _converting(calls: list[str], description: str) -> job_pb2.Job:
    calls.append(description)
    return job_pb2.Job(description=description)


def test_a_version_is_converted_once_and_each_caller_gets_a_copy_of_its_own() -> None:
    cache: MessageCache[job_pb2.Job] = MessageCache()
    calls: list[str] = []
    first, second = job_pb2.Job(), job_pb2.Job()
    cache.copy("v1", lambda: _converting(calls, "one"), first)
    cache.copy("v1", lambda: _converting(calls, "changed"), second)
    assert calls == ["one"]
    assert first.description == second.description == "one"
    second.description = "mine"  # a caller changing its copy changes nothing kept
    third = job_pb2.Job()
    cache.copy("v1", lambda: _converting(calls, "again"), third)
    assert third.description == "one"


def test_the_oldest_versions_go_once_the_kept_bytes_pass_the_bound() -> None:
    size = job_pb2.Job(description="x" * 100).ByteSize()
    cache: MessageCache[job_pb2.Job] = MessageCache(max_bytes=3 * size)
    calls: list[str] = []
    for version in ("a", "b", "c", "d"):
        cache.copy(version, lambda v=version: _converting(calls, v * 100), job_pb2.Job())
    assert len(cache) == 3
    cache.copy("a", lambda: _converting(calls, "a" * 100), job_pb2.Job())  # dropped: converted again
    cache.copy("d", lambda: _converting(calls, "d" * 100), job_pb2.Job())  # kept
    assert [c[0] for c in calls] == ["a", "b", "c", "d", "a"]


def test_a_message_larger_than_the_bound_is_converted_and_not_kept() -> None:
    cache: MessageCache[job_pb2.Job] = MessageCache(max_bytes=10)
    out = job_pb2.Job()
    cache.copy("big", lambda: job_pb2.Job(description="y" * 100), out)
    assert out.description == "y" * 100
    assert len(cache) == 0
