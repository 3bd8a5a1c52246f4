"""One supervisor for every background loop of a replica: started, logged, restarted, reported.

A loop that dies unobserved is the worst failure a scheduler can have: the replica looks alive
(health SERVING, heartbeating in the registry) while nothing claims, dispatches or numbers events.
So no loop is started with a bare `create_task`: each runs under `Supervisor.start`, which

- restarts it with backoff when it raises, logging the error (a lost database as a warning, anything
  else with its traceback) or when it returns before shutdown;
- counts it as down while it is failing for longer than `down_after`: from its first failure until a
  pass succeeds again (`loop_ok()`, called by the loop itself) or it runs that long without failing;
- says which loops are down (`down()`), for health and the replica registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from cronwire_server.core.errors import StorageUnavailable

log = logging.getLogger(__name__)

# Phases: loops stop by phase at shutdown. MAIN stops first; DRAIN loops (what running executions
# need: lease heartbeats, the finisher) only once the executions have drained.
MAIN = "main"
DRAIN = "drain"
# A loop failing for longer than this is reported down (health NOT_SERVING).
DOWN_AFTER = 5.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 5.0


@dataclass
class _Loop:
    name: str
    run: Callable[[], Awaitable[object]]
    phase: str
    task: asyncio.Task[None] | None = None
    # Monotonic time of the first failure not yet followed by a success; None while healthy.
    failing_since: float | None = None
    last_failure: float = 0.0
    last_error: str = ""
    restarts: int = 0
    stopping: bool = False

    def ok(self) -> None:
        self.failing_since = None

    def failed(self, error: str, now: float) -> None:
        if self.failing_since is None:
            self.failing_since = now
        self.last_failure = now
        self.last_error = error


_current: contextvars.ContextVar[_Loop | None] = contextvars.ContextVar("cronwire_loop", default=None)


def loop_ok() -> None:
    """Called by a supervised loop after a pass that worked: it is no longer failing."""
    loop = _current.get()
    if loop is not None:
        loop.ok()


def loop_failed(error: BaseException | str) -> None:
    """Called by a supervised loop that handles a failure itself and goes on (a retry inside the
    loop): it counts as failing, as if it had raised, until `loop_ok()`."""
    loop = _current.get()
    if loop is not None:
        loop.failed(str(error), time.monotonic())


class Supervisor:
    """Runs named loops until `stop`; see the module docstring. A loop that returns once `stopping`
    is set has ended normally."""

    def __init__(
        self,
        stopping: asyncio.Event,
        *,
        down_after: float = DOWN_AFTER,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self._stopping = stopping
        self._down_after = down_after
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        self._loops: dict[str, _Loop] = {}

    def start(self, name: str, run: Callable[[], Awaitable[object]], *, phase: str = MAIN) -> None:
        """Run `run()` as the loop `name`: until it returns once `stopping` is set, or until `stop`
        covers its `phase`. `run` calls `loop_ok()` after each pass that worked."""
        if name in self._loops:
            raise ValueError(f"loop {name!r} is already supervised")
        loop = _Loop(name, run, phase)
        self._loops[name] = loop
        context = contextvars.copy_context()
        context.run(_current.set, loop)
        loop.task = asyncio.create_task(self._keep(loop), name=f"cronwire:{name}", context=context)

    @property
    def names(self) -> list[str]:
        return list(self._loops)

    def down(self) -> list[str]:
        """The loops not running, or failing for longer than `down_after` (a loop that has run that
        long since its last failure counts as recovered)."""
        now = time.monotonic()
        return sorted(
            loop.name
            for loop in self._loops.values()
            if not loop.stopping
            and (
                loop.task is None
                or loop.task.done()
                or (
                    loop.failing_since is not None
                    and now - loop.failing_since > self._down_after
                    and now - loop.last_failure < self._down_after
                )
            )
        )

    def last_error(self, name: str) -> str:
        return self._loops[name].last_error

    def restarts(self, name: str) -> int:
        return self._loops[name].restarts

    async def _keep(self, loop: _Loop) -> None:
        backoff = self._first_backoff
        while True:
            started = time.monotonic()
            try:
                await loop.run()
            except asyncio.CancelledError:
                raise
            except StorageUnavailable as error:
                loop.failed(str(error), time.monotonic())
                log.warning("%s: %s; restarting it in %.1fs", loop.name, error, backoff)
            except Exception as error:
                loop.failed(repr(error), time.monotonic())
                log.exception("%s failed; restarting it in %.1fs", loop.name, backoff)
            else:
                if loop.stopping or self._stopping.is_set():
                    return
                loop.failed("returned before shutdown", time.monotonic())
                log.error("%s stopped unexpectedly; restarting it in %.1fs", loop.name, backoff)
            if time.monotonic() - started > self._down_after:
                backoff = self._first_backoff  # it had been running well: start over
            loop.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def stop(self, phases: Iterable[str] | None = None, *, within: float = 5.0) -> None:
        """Stop the loops of `phases` (all when None): each gets `within` seconds to return (after
        `stopping` is set), then is cancelled. Loops that run until cancelled are cancelled at once
        by a `within` of 0."""
        wanted = None if phases is None else set(phases)
        chosen = [loop for loop in self._loops.values() if wanted is None or loop.phase in wanted]
        for loop in chosen:
            loop.stopping = True
        tasks = [loop.task for loop in chosen if loop.task is not None]
        if not tasks:
            return
        # A loop that returns on its stop signal ends its task; one that never looks is cancelled.
        _, stuck = await asyncio.wait(tasks, timeout=within)
        for task in stuck:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
