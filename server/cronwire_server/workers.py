"""Workers: a bounded pool in every replica that runs QUEUED executions.

A worker claims executions with SKIP LOCKED and holds each under a lease it
renews by heartbeat; a replica that dies stops renewing, and any replica's
recovery loop marks the execution LOST and queues its retry. On shutdown the
pool stops claiming, lets running executions finish within a grace period,
then stops the rest and puts them back in the queue.

Fencing: at most one attempt of an execution runs at a time. Each run's
processes are registered with the pool's fence process (`executors.fence`),
which kills them when the replica dies, and when the run's lease has not been
renewed by `lease - fence_margin(lease)` after the last successful renewal was
sent: before the lease could expire and pass to another replica, even while
this process is frozen. A run killed so (or whose lease another replica took)
records nothing: lease recovery, on any replica, marks it LOST and applies the
retry policy. Each claim of a run has its own lease token (`CRONWIRE_LEASE_TOKEN`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cronwire_server import callbacks, metrics
from cronwire_server.config import Settings
from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.core.model import Execution, ExecutionState, Job
from cronwire_server.core.planning import retry_due_time
from cronwire_server.dispatcher import sleep_until_woken
from cronwire_server.executors.fence import Fence
from cronwire_server.executors.registry import starts_processes
from cronwire_server.executors.runners import Runners
from cronwire_server.executors.runtime import (
    RunOutcome,
    RunRequest,
    after_refusal,
    parent_run,
    storable_outcome,
    storable_text,
)
from cronwire_server.lease_renewer import LeaseRenewer
from cronwire_server.logs import run_fields, url_for_log
from cronwire_server.quick_jobs import QuickJobs
from cronwire_server.secrets import Redactor, SecretError, Secrets, has_references, namespace_of
from cronwire_server.storage import Store
from cronwire_server.storage.base import ClaimedExecution, LeaseRenewal, StartNow
from cronwire_server.supervisor import DRAIN, Supervisor, loop_failed, loop_ok

log = logging.getLogger(__name__)

# Defaults of the server's settings, kept there (these serve callers that build a pool alone).
DEFAULT_SLOTS = Settings.worker_slots
DEFAULT_LEASE = timedelta(seconds=Settings.lease_seconds)
DEFAULT_CAPTURE_BYTES = Settings.max_output_bytes
# Heartbeats also carry cancellations to running executions, so they come often.
MAX_HEARTBEAT_INTERVAL = 1.0
# Seconds before a lease could expire by which an unrenewed run's processes are dead (a quarter
# of the lease, at most this): room for a late fence and clocks that tick at slightly different rates.
MAX_FENCE_MARGIN = 10.0
MAX_IDLE_SLEEP = 5.0
OUTPUT_FLUSH_INTERVAL = 0.25
CALLBACK_BATCH = 20
CALLBACK_POLL = 1.0
FINISH_BATCH = 256
# A write of outcomes begins at least this long after the one before: in a steady stream of runs
# one write then takes several (twenty at 1,000 runs/s), while an outcome after a quiet spell is
# written at once. Each write costs PostgreSQL about 0.8 ms beside its outcomes' own (and the
# server a pass): at one write per 10 ms, a fifth of a paced run's PostgreSQL time. An outcome
# waits at most this long for its write.
FINISH_LINGER = 0.02
DRAIN_STOP_WITHIN = 15.0
BLOCKED_POLL = 1.0
RETRY_AFTER_ERROR = 1.0
# Outcomes waiting for the finisher that the pool may hold beside its slots' runs: this many (or
# as many as it has slots, if more) while the output they hold stays within what its slots' runs
# may capture together; beyond that, as many as it has slots. Runs of quick jobs end faster than a
# batch is written, and the more outcomes one write takes, the less each costs the database.
OUTCOME_BACKLOG = 128
# Runs of quick jobs taken ahead and waiting for their due time, per slot: 16 of runs as slow as
# a quick one may be (256 with the default 16 slots, a steady 1,000 ticks/s over the dispatcher's
# 200 ms look-ahead and room to spare), and of quicker runs as many as would start in the same
# time, at most QUICK_AHEAD_MOST: more of them per dispatch and per finish, which cost the
# database less per run, none waiting longer.
QUICK_AHEAD_PER_SLOT = 16
QUICK_AHEAD_MOST = 64


def worker_identity() -> str:
    """host:pid:random, unique per process start, shown as an execution's `worker`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def fence_margin(lease: timedelta) -> float:
    return min(lease.total_seconds() / 4, MAX_FENCE_MARGIN)


def plan_retry(job: Job, execution: Execution, state: ExecutionState, now: datetime) -> datetime | None:
    return retry_due_time(job.retry_policy, execution.attempt, state, now)


def plan_retry_expected(job: Job, ended: Execution) -> bool:
    """Whether `plan_retry` queued another attempt after `ended` (its time does not matter here)."""
    return ended.end_time is not None and plan_retry(job, ended, ended.state, ended.end_time) is not None


class _CancelFlag(asyncio.Event):
    """A run's cancel request. Setting it also wakes the run if it waits for its start time
    (`WorkerPool._start_in_time`), which waits on a future of its own, not a task."""

    def __init__(self) -> None:
        super().__init__()
        self.waking: asyncio.Future[Any] | None = None

    def set(self) -> None:
        super().set()
        _resolve(self.waking)


def _resolve(future: asyncio.Future[Any] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


@dataclass
class _Running:
    claimed: ClaimedExecution
    cancel: _CancelFlag = field(default_factory=_CancelFlag)
    # Unique per claim; the fence knows the run by it.
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Set when the pool drains: the run is stopped and put back, not recorded as cancelled.
    released: bool = False
    # Set once its outcome is queued for the finisher (or it is put back): no longer renewed.
    finishing: bool = False
    # The characters of output its outcome holds while it waits for the finisher.
    finishing_output: int = 0
    # Set once its lease was not renewed in time or passed on: killed, and nothing recorded.
    fenced: bool = False
    # Output not yet stored as chunks, and the byte offset the next chunk starts at.
    pending_output: list[str] = field(default_factory=list)
    output_offset: int = 0
    # Held while a chunk is written: one write at a time, so the last (before the outcome) also
    # waits for one the periodic flush has in flight.
    output_written: asyncio.Lock = field(default_factory=asyncio.Lock)
    # A run taken ahead of its due time: the monotonic time it starts at, and the dispatch's
    # (monotonic time, database time) read together, by which its real start is told in database time.
    start_at: float | None = None
    clock: tuple[float, datetime] | None = None
    # Taken ahead for a quick job: holds no slot until it is due and takes one (see `reserve`).
    slotless: bool = False

    def add_output(self, text: str) -> None:
        if text:
            self.pending_output.append(storable_text(text))

    def take_output(self) -> tuple[int, str] | None:
        if not self.pending_output:
            return None
        text = "".join(self.pending_output)
        self.pending_output.clear()
        offset = self.output_offset
        self.output_offset += len(text.encode())
        return offset, text


class WorkerPool:
    def __init__(
        self,
        store: Store,
        *,
        slots: int = DEFAULT_SLOTS,
        lease: timedelta = DEFAULT_LEASE,
        capture_bytes: int = DEFAULT_CAPTURE_BYTES,
        identity: str | None = None,
        runners: Runners | None = None,
        secrets: Secrets | None = None,
        max_running_per_namespace: int = 0,
    ) -> None:
        self._store = store
        self._slots = slots
        self._lease = lease
        self._capture_bytes = capture_bytes
        self.identity = identity or worker_identity()
        self._runners = runners or Runners()
        self._secrets = secrets or Secrets()
        self._max_running_per_namespace = max_running_per_namespace
        self._running: dict[str, _Running] = {}
        # Held while `_running` changes: the lease renewer's thread reads it.
        self._running_lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._finished: list[tuple[ClaimedExecution, RunOutcome, asyncio.Future[Execution | None]]] = []
        self._refusals: Counter[str] = Counter()  # by execution id: failed writes of it alone
        self._outcomes_waiting = asyncio.Event()
        self._fence = Fence()
        # Runs over whose end the fence is told at the next turn of the event loop (`_end_fenced`).
        self._ending: list[str] = []
        # Slots promised to a dispatch that starts runs itself (`reserve`), until it returns.
        self._reserved = 0
        # Runs whose code has ended, waiting for their outcome to be written: their slots are free.
        # And the characters of output those outcomes hold (`_backlog`).
        self._finishing = 0
        self._finishing_output = 0
        # Runs taken ahead without a slot (`_Running.slotless`), and of those the ones due and
        # waiting for a slot (in the order they came due), which they get before any claim or
        # dispatch (see `_free`, `_grant`).
        self._waiting = 0
        self._ready: deque[tuple[asyncio.Future[bool | None], _Running]] = deque()
        self._quick = QuickJobs()
        self._stopping: asyncio.Event | None = None
        # How long after a renewal was sent the run is safe: its lease is still this one's.
        self._safe_for = lease.total_seconds() - fence_margin(lease)

    @property
    def running(self) -> int:
        """Runs the pool holds: started, taken ahead and waiting for their due time, or ended with
        their outcome not written yet (these and the slotless waiting no longer hold a slot, see
        `_free`)."""
        return len(self._running)

    def start(self, supervisor: Supervisor, stopping: asyncio.Event) -> None:
        """Start the pool's loops under `supervisor`: the claimer until `stopping` is set (then call
        `drain`); what running executions need (lease heartbeats, recovery, output, callbacks, the
        finisher) until the supervisor stops its DRAIN phase, after `drain`. A loop that dies
        silently would strand every run it serves (RUNNING for ever): hence the supervisor."""
        log.info("worker pool %s started with %d slots", self.identity, self._slots)
        self._fence.start()
        self._stopping = stopping
        supervisor.start("claimer", lambda: self._claim_loop(stopping))
        for name, loop in (
            ("lease-heartbeat", self._heartbeat),
            ("lease-recovery", self._recover),
            ("output", self._flush_output_loop),
            ("callbacks", self._deliver_callbacks),
            ("finisher", self._finisher),
        ):
            supervisor.start(name, loop, phase=DRAIN)

    async def _claim_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            for_slot = True
            try:
                if self._free() <= 0:
                    delay = MAX_IDLE_SLEEP  # until a slot is freed (or given back by a dispatch)
                elif await self._claim():
                    delay = 0.0
                else:
                    delay = await self._idle_time()
                    # Nothing to start: a freed slot changes nothing, new or unblocked work does
                    # (its wake-up); unless a namespace limit held runs back (any end makes room).
                    for_slot = self._max_running_per_namespace > 0
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("worker: database unavailable (%s); retrying", error)
                delay = RETRY_AFTER_ERROR
            full = self._free() <= 0
            if delay > 0 or full:
                self._slot_freed.clear()
                await self._sleep(stopping, MAX_IDLE_SLEEP if full else delay, for_slot=for_slot or full)

    def _open(self) -> int:
        """Slots no run holds or is promised: a run whose code has ended gives its slot back while
        its outcome waits for the finisher (the next claim need not wait for that write), but the
        pool holds at most its slots and `_backlog()` more in all, so outcomes a slow database has
        not taken yet stay bounded. A run taken ahead for a quick job holds none until it is due."""
        holding = self.running - self._waiting
        going = holding - self._finishing
        return min(self._slots - going, self._slots + self._backlog() - holding) - self._reserved

    def _backlog(self) -> int:
        """How many runs beyond its slots the pool may hold while their outcomes wait to be
        written: `OUTCOME_BACKLOG` (at least the slots), unless the outcomes waiting hold more
        output than the slots' runs may capture, when only as many as the slots."""
        if self._finishing_output > self._slots * self._capture_bytes:
            return self._slots
        return max(self._slots, OUTCOME_BACKLOG)

    def _free(self) -> int:
        """Slots for new runs, after those that runs taken ahead and now due are waiting for."""
        return self._open() - len(self._ready)

    def _slot_released(self) -> None:
        self._slot_freed.set()
        self._grant()

    def _grant(self) -> None:
        """Give the slots open now to runs taken ahead that are due and wait for one, in turn."""
        while self._ready and self._open() > 0:
            granted, running = self._ready.popleft()
            if granted.done():  # cancelled meanwhile: it counts itself as holding one
                continue
            self._holds_slot(running)
            granted.set_result(True)

    def _holds_slot(self, running: _Running) -> None:
        """A run taken ahead without a slot counts as holding one from now on."""
        if running.slotless:
            running.slotless = False
            self._waiting -= 1

    async def _claim(self) -> int:
        free = self._free()
        if free <= 0:
            return 0
        self._reserved += free
        try:
            sent = time.monotonic()
            claimed = await self._store.claim_executions(
                self.identity, free, self._lease, namespace_limit=self._max_running_per_namespace
            )
        except BaseException:
            self._reserved -= free
            self._grant()
            raise
        self._reserved -= free
        self._begin(claimed, sent)
        self._grant()  # the slots it did not fill
        return len(claimed)

    def reserve(self, wanted: int, ahead: timedelta = timedelta(0)) -> StartNow | None:
        """Free slots for a dispatch that starts the runs it creates itself (leased to this pool),
        held until `adopt`; None when there is none to give, or each run must be admitted by a
        claim (a namespace limit: the dispatch does not count the namespace's runs).

        Runs taken up to `ahead` before their due time hold their slot while they wait, so that
        they start on time: at most half the free slots go to them, the rest stay for what is
        due now (a busy pool takes nothing ahead, and a tick it could not start on time is left
        for any replica to dispatch when due).

        Ticks of quick jobs (whose runs here give their slot back at once, `QuickJobs`) are taken
        ahead beside those, and due now beyond the free slots, holding no slot while they wait:
        when due, each waits for a slot before anything else the pool would start. Only while
        some slot turns over quickly (no more slow runs going than slots), and per slot at most
        `QUICK_AHEAD_PER_SLOT` waiting, or more as quick runs have been ending sooner
        (`QuickJobs.ahead_per_slot`), up to `QUICK_AHEAD_MOST`. Ticks of untried jobs (none of
        whose runs has ended here yet) are taken ahead as quick ones' while no run is going long,
        so that a new job's first ticks start on time too."""
        stopping = self._stopping
        if stopping is None or stopping.is_set() or self._max_running_per_namespace > 0:
            return None
        # Not the slots that quick runs taken ahead will want as they come due, maybe while this
        # dispatch runs: held for it, they would wait for its end (tens of milliseconds).
        count = max(0, min(wanted, self._free() - self._waiting))
        quick = 0
        untried = False
        if ahead:
            slow = self._quick.slow_runs()
            # Untried jobs' ticks only while no run is going long: a busy pool's would wait
            # behind its runs, where another replica might start them on time.
            untried = slow == 0
            if slow < self._slots and (untried or self._quick.any()):
                per_slot = self._quick.ahead_per_slot(QUICK_AHEAD_PER_SLOT, QUICK_AHEAD_MOST)
                quick = max(0, per_slot * self._slots - self._waiting)
        if count <= 0 and quick <= 0:
            return None
        self._reserved += count
        return StartNow(
            self.identity,
            count,
            self._lease,
            ahead,
            count // 2 if ahead else 0,
            self._quick,
            quick,
            self._quick.untried() if untried else frozenset(),
        )

    def adopt(
        self,
        start: StartNow,
        started: Sequence[ClaimedExecution],
        sent: float,
        clock: tuple[float, datetime] | None = None,
        slotless: frozenset[str] = frozenset(),
    ) -> None:
        """After the dispatch `start` was given to (sent at `sent`, monotonic) committed or failed:
        run what it started, each at its start time (told in monotonic time by the dispatch's
        `clock`), those in `slotless` once they have a slot too, and give back the slots it did
        not use."""
        self._reserved -= start.count
        if self._begin(started, sent, clock, slotless) < start.count:
            self._slot_released()

    def _begin(
        self,
        claimed: Sequence[ClaimedExecution],
        sent: float,
        clock: tuple[float, datetime] | None = None,
        slotless: frozenset[str] = frozenset(),
    ) -> int:
        """Run claimed executions; the fence knows them (told in one write) before they start: safe
        until `sent` (when their leases were taken, monotonic) plus the safe margin. One whose
        start time is later than the database's time of `clock` (monotonic time, database time
        read together) waits for it (taken ahead, see `StartNow`); one in `slotless` waits for a
        slot too, holding none meanwhile. Returns how many of them hold a slot."""
        if not claimed:
            return 0
        holding = len(claimed)
        runs = [_Running(item) for item in claimed]
        deadline = sent + self._safe_for
        self._fence.begin_many((r.token, deadline, starts_processes(r.claimed.job.executor)) for r in runs)
        for running in runs:
            execution = running.claimed.execution
            waits = execution.id in slotless
            if (
                clock is not None
                and execution.start_time is not None
                and (waits or execution.start_time > clock[1])
            ):
                running.start_at = clock[0] + (execution.start_time - clock[1]).total_seconds()
                running.clock = clock
                if waits:
                    running.slotless = True
                    self._waiting += 1
                    holding -= 1
            else:
                self._started(running)
            with self._running_lock:
                self._running[execution.id] = running
            task = asyncio.create_task(self._execute(running))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return holding

    def _started(self, running: _Running) -> None:
        item = running.claimed
        execution = item.execution
        late = metrics.seconds_late(execution.start_time, execution.due_time or execution.scheduled_time)
        metrics.execution_started(item.job.executor, late)
        if log.isEnabledFor(logging.INFO):  # the fields are built per run: only when logged
            log.info(
                "run started",
                extra={**run_fields(execution), "kind": item.job.executor, "attempt": execution.attempt},
            )

    async def _start_in_time(self, running: _Running, start_at: float) -> None:
        """Wait (in its slot) for a run taken ahead to be due, then note when it really started,
        in the database's time: its outcome records that start time."""
        delay = start_at - time.monotonic()
        cancel = running.cancel
        if delay > 0 and not cancel.is_set():
            # Woken by a timer one loop turn after it is due (wait_for's task and its
            # cancellation took several turns of a busy loop), or at once by a cancellation,
            # which starts it, to end it.
            loop = asyncio.get_running_loop()
            cancel.waking = woken = loop.create_future()
            timer = loop.call_later(delay, _resolve, woken)
            try:
                await woken
            finally:
                timer.cancel()
                cancel.waking = None
        if running.slotless:
            await self._take_slot(running)
        assert running.clock is not None
        read_at, now = running.clock
        started = now + timedelta(seconds=time.monotonic() - read_at)
        execution, job = running.claimed.execution, running.claimed.job
        running.claimed = ClaimedExecution(dataclasses.replace(execution, start_time=started), job)
        self._started(running)

    async def _take_slot(self, running: _Running) -> None:
        """A run taken ahead without a slot, now due: wait for one, before any claim or dispatch
        takes it (a cancelled run goes on at once, to end, counted as holding one meanwhile)."""
        if not self._ready and self._open() > 0:
            self._holds_slot(running)
            return
        cancel = running.cancel
        waiter: tuple[asyncio.Future[bool | None], _Running] = (
            asyncio.get_running_loop().create_future(),
            running,
        )
        granted = False
        try:
            if not cancel.is_set():
                # One future, resolved True by `_grant` or None by a cancellation (no task and no
                # asyncio.wait per run: most runs of a burst of a quick job wait here).
                self._ready.append(waiter)
                cancel.waking = waiter[0]
                granted = bool(await waiter[0])
        finally:
            cancel.waking = None
            if not granted:  # not given one (cancelled, or its task stopped): counted as holding one
                if waiter in self._ready:
                    self._ready.remove(waiter)
                self._holds_slot(running)

    async def _idle_time(self) -> float:
        due, now = await self._store.next_due_time()
        if due is None:
            return MAX_IDLE_SLEEP
        if due <= now:
            # Due but not admitted (a serial turn or a job's concurrency limit): the end of the
            # run that blocks it wakes us; poll now and then in case that was on another replica.
            return BLOCKED_POLL
        return min(MAX_IDLE_SLEEP, (due - now).total_seconds())

    async def _sleep(self, stopping: asyncio.Event, delay: float, *, for_slot: bool = True) -> None:
        if not for_slot:
            await sleep_until_woken(self._store, "executions", delay, stopping)
            return
        freed = asyncio.ensure_future(self._slot_freed.wait())
        try:
            woken = asyncio.ensure_future(sleep_until_woken(self._store, "executions", delay, stopping))
            await asyncio.wait({freed, woken}, return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
        finally:
            freed.cancel()

    async def _execute(self, running: _Running) -> None:
        execution, job = running.claimed.execution, running.claimed.job
        recorded: ExecutionState | None = None
        try:
            if running.start_at is not None:
                await self._start_in_time(running, running.start_at)
            recorded = await self._run(running)
        finally:
            self._end_fenced(running.token)
            self._quick.ended((job.namespace, job.id), running.token)  # if its code did not end
            with self._running_lock:
                self._running.pop(execution.id, None)
            if running.finishing:
                self._finishing -= 1
                self._finishing_output -= running.finishing_output
            self._holds_slot(running)  # if it ended before it was due (cancelled, or drained)
            self._slot_released()
            metrics.execution_left(job.executor, recorded.name if recorded else None)

    async def _run(self, running: _Running) -> ExecutionState | None:
        """Run the job's code and record its outcome; the state recorded (None: none was)."""
        execution, job = running.claimed.execution, running.claimed.job
        request = RunRequest(
            execution_name=execution.name,
            job_name=job.name,
            parameters=job.parameters,
            arguments=execution.arguments,
            scheduled_time=execution.scheduled_time,
            attempt=execution.attempt,
            timeout=job.timeout,
            capture_bytes=self._capture_bytes,
            lease_token=running.token,
            fence=self._fence,
            parent=await parent_run(execution, self._store.get_execution),
        )
        redactor = Redactor([])
        self._quick.began((job.namespace, job.id), running.token)
        try:
            request, redactor = await self._with_secrets(request)
            outcome = await self._runners.runner_for(job.executor).run(
                request, running.cancel, lambda text: running.add_output(redactor.feed(text))
            )
            self._quick.ended((job.namespace, job.id), running.token)
            running.add_output(redactor.close(outcome.output_truncated))
        except (LookupError, SecretError) as error:
            outcome = RunOutcome(ExecutionState.FAILED, error=str(error))
        except Exception as error:  # a runner bug must not leave the execution RUNNING
            # Its traceback could quote a secret's value: then only the masked message.
            log.error(
                "executor %s failed: %s",
                job.executor,
                redactor.text(repr(error)),
                exc_info=not redactor,
                extra=run_fields(execution),
            )
            outcome = RunOutcome(ExecutionState.FAILED, error=f"executor error: {error}")
        ended = time.monotonic()
        if self._fenced(running, ended):
            return None
        running.finishing = True
        running.finishing_output = len(outcome.output)
        self._finishing += 1  # its slot is free (see `_free`)
        self._finishing_output += running.finishing_output
        self._slot_released()
        # Storable first: the redactor then walks a result of bounded depth. Its end time is
        # now, however long its remaining output and its outcome take to be written.
        outcome = dataclasses.replace(redactor.outcome(storable_outcome(outcome)), ended=ended)
        if outcome.output_truncated:
            log.info(
                "output truncated: only the first %d bytes are kept",
                self._capture_bytes,
                extra=run_fields(execution),
            )
        await self._flush_output(running)
        return await self._record(running, outcome)

    def _end_fenced(self, token: str) -> None:
        """Tell the fence a run is over; the runs that end in the same turn of the event loop (a
        finisher batch) are told in one write, at the start of the next."""
        if not self._ending:
            asyncio.get_running_loop().call_soon(self._flush_ends)
        self._ending.append(token)

    def _flush_ends(self) -> None:
        ending, self._ending = self._ending, []
        self._fence.end_many(ending)

    def _fenced(self, running: _Running, now: float) -> bool:
        """Whether the run is fenced: so once its lease was not renewed within the safe margin
        (its processes are being killed by the fence, if the fence had not done it already)."""
        if not running.fenced and not running.finishing and self._fence.overdue(running.token, now):
            self._fence_off(running, "its lease was not renewed within the safe margin")
        return running.fenced

    def _fence_off(self, running: _Running, why: str) -> None:
        """Kill the run's processes now and record nothing for it."""
        running.fenced = True
        running.cancel.set()  # a run without processes (http) stops too
        self._fence.kill(running.token)
        log.warning(
            "run fenced: %s; its processes are killed and nothing is recorded for it "
            "(lease recovery marks it LOST and the retry policy applies)",
            why,
            extra={**run_fields(running.claimed.execution), "attempt": running.claimed.execution.attempt},
        )

    async def _with_secrets(self, request: RunRequest) -> tuple[RunRequest, Redactor]:
        """The request with the secrets its parameters reference resolved, and the redactor that
        masks their values; SecretError if one is not defined."""
        if not has_references(request.parameters):
            return request, Redactor([])
        # Off the event loop: resolving may read the secrets file. Only the secrets of the run's own
        # namespace resolve, whatever the job was accepted with: the file may have changed since.
        namespace = namespace_of(request.execution_name)
        parameters, values = await asyncio.to_thread(
            self._secrets.resolve_parameters, request.parameters, namespace
        )
        return dataclasses.replace(request, parameters=parameters), Redactor(values)

    async def _record(self, running: _Running, outcome: RunOutcome) -> ExecutionState | None:
        """Store the outcome; the state recorded, or None when the run was put back in the queue
        or its lease had passed to another replica."""
        claimed = running.claimed
        if not running.released:
            # Outcomes that end together are written together, by the finisher.
            done: asyncio.Future[Execution | None] = asyncio.get_running_loop().create_future()
            self._finished.append((claimed, outcome, done))
            self._outcomes_waiting.set()
            ended = await done
            if ended is None:
                log.warning(
                    "run outcome not recorded: its lease had expired and passed on",
                    extra=run_fields(claimed.execution),
                )
                return None
            if log.isEnabledFor(logging.INFO):  # its fields are built per run: only when logged
                retried = plan_retry_expected(claimed.job, ended)
                log.info(
                    "run finished; a retry is queued" if retried else "run finished",
                    extra={
                        **run_fields(claimed.execution),
                        "state": ended.state.name,
                        "attempt": ended.attempt,
                        **({"exit_code": ended.exit_code} if ended.exit_code is not None else {}),
                        **({"http_status": ended.http_status} if ended.http_status is not None else {}),
                    },
                )
            return ended.state
        fields = run_fields(claimed.execution)
        log.info("run stopped by shutdown; putting it back in the queue", extra=fields)
        for _ in range(30):
            try:
                await self._store.release_executions(self.identity, [claimed.execution.id])
                return None
            except StorageUnavailable as error:
                # The lease still protects the run; keep trying until it would expire.
                log.warning("cannot put the run back yet (%s); retrying", error, extra=fields)
                await asyncio.sleep(RETRY_AFTER_ERROR)
        log.error("gave up putting the run back; its lease will expire and it will be retried", extra=fields)
        return None

    async def _finisher(self) -> None:
        """Writes the outcomes waiting, in batches, until none is left; retries while the
        database is away (the leases keep the runs safe meanwhile)."""
        began = -FINISH_LINGER  # the last write (monotonic)
        while True:
            await self._outcomes_waiting.wait()
            self._outcomes_waiting.clear()
            alone = 0  # outcomes to write one at a time, after a batch failed
            while self._finished:
                linger = began + FINISH_LINGER - time.monotonic()
                if linger > 0 and len(self._finished) < FINISH_BATCH:
                    await asyncio.sleep(linger)
                began = time.monotonic()
                size = 1 if alone else FINISH_BATCH
                batch, self._finished = self._finished[:size], self._finished[size:]
                alone = max(0, alone - 1)
                try:
                    ended = await self._store.finish_executions(
                        [(c, o) for c, o, _ in batch], self.identity, plan_retry
                    )
                except StorageUnavailable as error:
                    loop_failed(error)
                    log.warning("cannot record %d outcomes yet (%s); retrying", len(batch), error)
                    self._finished[:0] = batch
                    await asyncio.sleep(RETRY_AFTER_ERROR)
                    continue
                except Exception as error:
                    # Kept, never dropped: an outcome lost here would leave its run RUNNING. One
                    # outcome the database refuses must not hold up the others: the batch is
                    # written again one outcome at a time, and one that fails alone waits behind
                    # the rest.
                    loop_failed(error)
                    log.exception("recording %d outcomes failed; retrying", len(batch))
                    if len(batch) > 1:
                        alone = len(batch)
                        self._finished[:0] = batch
                    else:
                        self._finished.append(self._refused(*batch[0], error))
                    await asyncio.sleep(RETRY_AFTER_ERROR)
                    continue
                loop_ok()
                for (claimed, _, done), execution in zip(batch, ended, strict=True):
                    self._refusals.pop(claimed.execution.id, None)
                    if not done.done():
                        done.set_result(execution)

    def _refused(
        self,
        claimed: ClaimedExecution,
        outcome: RunOutcome,
        done: asyncio.Future[Execution | None],
        error: Exception,
    ) -> tuple[ClaimedExecution, RunOutcome, asyncio.Future[Execution | None]]:
        """An outcome whose write alone failed, as it is to be tried again (`after_refusal`)."""
        self._refusals[claimed.execution.id] += 1
        refusals = self._refusals[claimed.execution.id]
        return claimed, after_refusal(outcome, refusals, error, claimed.execution), done

    async def _flush_output(self, running: _Running) -> None:
        # All of a run's live output is stored (or given up) before its outcome: a follower that
        # sees the run ended has every chunk to read.
        async with running.output_written:
            chunk = running.take_output()
            if chunk is None:
                return
            execution = running.claimed.execution
            try:
                await self._store.append_logs(execution.namespace, execution.id, [chunk])
            except StorageUnavailable as error:
                # Live output is best effort; the whole output is stored with the outcome.
                log.warning("could not store live output (%s)", error, extra=run_fields(execution))
            except Exception:
                # Nor may any other failure of it end the run without its outcome.
                log.exception("could not store live output", extra=run_fields(execution))

    async def _flush_output_loop(self) -> None:
        while True:
            await asyncio.sleep(OUTPUT_FLUSH_INTERVAL)
            running = [r for r in self._running.values() if not r.fenced]
            await asyncio.gather(*(self._flush_output(r) for r in running))

    async def _deliver_callbacks(self) -> None:
        while True:
            try:
                claimed = await self._store.claim_callbacks(CALLBACK_BATCH)
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("callback delivery: database unavailable (%s)", error)
                claimed = []
            await asyncio.gather(*(self._deliver(execution, job) for execution, job in claimed))
            if len(claimed) < CALLBACK_BATCH:
                await self._store.wakeup.wait("callbacks", CALLBACK_POLL)

    async def _deliver(self, execution: Execution, job: Job) -> None:
        attempt = await callbacks.deliver(job, execution, self._runners.http)
        made = (execution.callback.attempts if execution.callback else 0) + 1
        retry_at = None if attempt.delivered else callbacks.next_attempt_time(made, await self._store.now())
        fields = {**run_fields(execution), "delivery_attempt": made}
        if attempt.http_status is not None:
            fields["http_status"] = attempt.http_status
        url = url_for_log(job.callback.url) if job.callback else ""
        if attempt.delivered:
            log.info("callback delivered to %s", url, extra=fields)
        elif retry_at is None:
            log.warning(
                "callback to %s not delivered: %s; giving up after %d attempts",
                *(url, attempt.reason, made),
                extra={**fields, "reason": attempt.reason},
            )
        else:
            log.warning(
                "callback to %s not delivered: %s; trying again at %s",
                *(url, attempt.reason, retry_at.isoformat()),
                extra={**fields, "reason": attempt.reason},
            )
        await self._store.record_callback(
            execution,
            http_status=attempt.http_status,
            error=attempt.error,
            delivered=attempt.delivered,
            next_time=retry_at,
        )

    async def _heartbeat(self) -> None:
        """Renewals run in a thread (`lease_renewer`): a held event loop does not stop them. This
        loop reports the thread's health and starts a fence process that died again (only this
        thread may: see `Fence`)."""
        # Several heartbeats fit in the time a run stays safe after a renewal.
        interval = min(self._lease.total_seconds() / 4, MAX_HEARTBEAT_INTERVAL)
        loop = asyncio.get_running_loop()
        renewer = LeaseRenewer(
            self._store.blocking_renewals(),
            worker=self.identity,
            lease=self._lease,
            interval=interval,
            safe_for=self._safe_for,
            fence=self._fence,
            targets=self._renewable,
            learned=lambda *learned: loop.call_soon_threadsafe(self._after_renewal, *learned),
        )
        renewer.start()
        try:
            while True:
                await asyncio.sleep(interval)
                self._fence.start()
                if not renewer.alive:
                    raise RuntimeError("the lease renewal thread ended")
                if renewer.failure is None:
                    loop_ok()
                else:
                    loop_failed(renewer.failure)
        finally:
            renewer.stop()

    def _renewable(self) -> dict[str, str]:
        """The runs to renew, {execution id: lease token} (called from the renewer's thread). Runs
        being finished are left out: the finisher locks their rows."""
        with self._running_lock:
            return {i: r.token for i, r in self._running.items() if not r.finishing and not r.fenced}

    def _after_renewal(self, renewal: LeaseRenewal, renewed: dict[str, str], late: set[str]) -> None:
        """What a renewal learned, on the event loop: runs whose lease passed on or was renewed too
        late are fenced off (the renewer has had their processes killed), cancelled runs stop."""
        for execution_id, token in renewed.items():
            running = self._running.get(execution_id)
            if running is None or running.token != token:
                continue  # ended meanwhile
            if not running.fenced and not running.finishing:
                if execution_id in renewal.lost:
                    self._fence_off(running, "its lease passed to another replica")
                elif token in late:
                    self._fence_off(running, "its lease was renewed too late")
            if execution_id in renewal.cancelled and not running.cancel.is_set():
                log.info("run cancelled; stopping it", extra=run_fields(running.claimed.execution))
                running.cancel.set()

    async def _recover(self) -> None:
        # Jittered so the replicas' recovery passes do not run in lockstep.
        interval = self._lease.total_seconds() / 2
        while True:
            await asyncio.sleep(interval * random.uniform(0.5, 1.0))
            try:
                lost = await self._store.recover_expired(plan_retry, limit=100)
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("lease recovery failed (%s)", error)
                continue
            metrics.lease_recovered(len(lost))
            for execution in lost:
                log.warning(
                    "run lost by worker %s (its lease expired); the retry policy applies",
                    execution.worker,
                    extra={**run_fields(execution), "state": execution.state.name},
                )

    async def drain(self, grace: float) -> None:
        """After the claimer stopped: let running executions finish for `grace` seconds, then stop
        and requeue the rest. The DRAIN loops are still running: stop them afterwards."""
        if self._tasks:
            log.info("draining: waiting up to %.0fs for %d running executions", grace, len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            if pending:
                log.info("stopping %d executions and putting them back in the queue", len(pending))
                for running in self._running.values():
                    running.released = True
                    running.cancel.set()
                # Runners stop within their kill grace; never wait for ever on one that does not.
                _, stuck = await asyncio.wait(pending, timeout=DRAIN_STOP_WITHIN)
                for task in stuck:
                    task.cancel()
        # The fence kills whatever is left (a run stuck past its stop) and exits.
        self._flush_ends()
        await asyncio.to_thread(self._fence.close)
