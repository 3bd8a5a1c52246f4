"""The event loop's long steps, recorded in a benchmarked server (`scheduler_throughput.py
--loop-steps MS` puts this directory first on the server's PYTHONPATH).

With $CRONWIRE_BENCH_LOOP_STEPS set, every callback the loop runs for at least
$CRONWIRE_BENCH_LOOP_STEPS_MS milliseconds (4) is one JSON line in
"$CRONWIRE_BENCH_LOOP_STEPS.<pid>": when it ended (Unix time), how long it took, the CPU its thread
used meanwhile (less than its time: the thread waited for a CPU), and where the coroutine it ran
stopped next (its chain of awaits; a callback's own name otherwise). Whatever runs during a step
delays every timer due meanwhile, above all the runs taken ahead of their due time. Without the
variable, nothing changes.
"""

from __future__ import annotations

import os

_PATH = os.environ.get("CRONWIRE_BENCH_LOOP_STEPS")

if _PATH:
    import asyncio.events
    import json
    import time
    from typing import Any

    _THRESHOLD = float(os.environ.get("CRONWIRE_BENCH_LOOP_STEPS_MS", "4")) / 1000
    _OUT = open(f"{_PATH}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115  # the process's lifetime
    _RUN = asyncio.events.Handle._run

    def _chain(handle: asyncio.events.Handle) -> str:
        """Where the step's coroutine waits now, outermost first; else the callback's name."""
        callback: Any = handle._callback  # type: ignore[attr-defined]
        task = getattr(callback, "__self__", None)
        coroutine = task.get_coro() if isinstance(task, asyncio.Task) else None
        names: list[str] = []
        while coroutine is not None and len(names) < 24:
            names.append(getattr(coroutine, "__qualname__", type(coroutine).__name__))
            coroutine = getattr(coroutine, "cr_await", None) or getattr(coroutine, "gi_yieldfrom", None)
        return " > ".join(names) or getattr(callback, "__qualname__", repr(callback))

    def _timed(self: asyncio.events.Handle) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        _RUN(self)
        took = time.perf_counter() - wall
        if took >= _THRESHOLD:
            step = {"at": time.time(), "ms": took * 1000, "cpu_ms": (time.thread_time() - cpu) * 1000}
            _OUT.write(json.dumps({**step, "stopped_at": _chain(self)}) + "\n")

    asyncio.events.Handle._run = _timed  # type: ignore[method-assign]
