"""The load generator: N concurrent grpc.aio calls for a fixed time, after a warm-up.

`run_load` is meant to run in a process of its own (see `LoadProcess`), so the
client never competes with the server for the same interpreter and GIL.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import grpc

CALL_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0


class Workload(Protocol):
    method: str

    def next_request(self) -> tuple[str, bytes]:
        """A key naming the request (may be empty) and the serialized request."""
        ...


@dataclass(frozen=True)
class LoadSpec:
    address: str
    workload: Workload
    seconds: float
    warmup: float
    concurrency: int = 64
    channels: int = 1
    # Return the keys of every call that succeeded, warm-up included
    # (CreateJob uses this to hand the names of the created jobs to GetJob).
    collect_ok_keys: bool = False


@dataclass
class LoadResult:
    calls: int  # calls that completed inside the measured window, errors included
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    error_codes: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    ok_keys: list[str] = field(default_factory=list, repr=False)

    @property
    def calls_per_s(self) -> float:
        return (self.calls - self.errors) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: int) -> float | None:
        """The p-th percentile (1..99) of the latencies of successful calls."""
        if not self.latencies_ms:
            return None
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[p - 1]


def _identity(data: bytes) -> bytes:
    return data


@dataclass
class _Recorder:
    window_start: float
    window_end: float
    collect_ok_keys: bool
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None
    ok_keys: list[str] = field(default_factory=list)

    def record(self, key: str, started: float, ended: float, error: grpc.aio.AioRpcError | None) -> None:
        if error is None and self.collect_ok_keys:
            self.ok_keys.append(key)
        # Only calls that end inside the window count, so calls/s is what the
        # server completed in that time, whatever was in flight at its edges.
        if not self.window_start <= ended <= self.window_end:
            return
        if error is None:
            self.latencies_ms.append((ended - started) * 1000.0)
            return
        self.errors[error.code().name] += 1
        if self.first_error is None:
            self.first_error = f"{error.code().name}: {error.details()}"


async def _caller(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], workload: Workload, recorder: _Recorder
) -> None:
    while time.perf_counter() < recorder.window_end:
        key, request = workload.next_request()
        started = time.perf_counter()
        error: grpc.aio.AioRpcError | None = None
        try:
            await call(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            error = exc
        recorder.record(key, started, time.perf_counter(), error)


async def _run(spec: LoadSpec) -> LoadResult:
    channels = [grpc.aio.insecure_channel(spec.address) for _ in range(spec.channels)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(ch.channel_ready() for ch in channels)), timeout=CONNECT_TIMEOUT_S
        )
        method = spec.workload.method
        calls = [
            ch.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)
            for ch in channels
        ]
        start = time.perf_counter()
        recorder = _Recorder(start + spec.warmup, start + spec.warmup + spec.seconds, spec.collect_ok_keys)
        async with asyncio.TaskGroup() as tasks:
            for i in range(spec.concurrency):
                tasks.create_task(_caller(calls[i % len(calls)], spec.workload, recorder))
    finally:
        for ch in channels:
            await ch.close(None)
    errors = sum(recorder.errors.values())
    return LoadResult(
        calls=len(recorder.latencies_ms) + errors,
        errors=errors,
        seconds=spec.seconds,
        latencies_ms=recorder.latencies_ms,
        error_codes=dict(recorder.errors),
        first_error=recorder.first_error,
        ok_keys=recorder.ok_keys,
    )


def run_load(spec: LoadSpec) -> LoadResult:
    return asyncio.run(_run(spec))


class LoadProcess:
    """One long-lived worker process that runs the phases one after another."""

    def __init__(self) -> None:
        # spawn, not fork: gRPC's core does not survive a fork, and the child
        # should start clean rather than copy the orchestrator's state.
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self._pid = 0

    @property
    def pid(self) -> int:
        """The worker process's id (started on first use), for CPU accounting."""
        if not self._pid:
            self._pid = self._pool.submit(os.getpid).result()
        return self._pid

    def run(self, spec: LoadSpec) -> LoadResult:
        return self._pool.submit(run_load, spec).result()

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> LoadProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
