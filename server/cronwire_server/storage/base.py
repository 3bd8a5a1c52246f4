"""The storage interface the rest of the server programs against."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from cronwire_server.core.model import (
    Calendar,
    ClusterStatus,
    Event,
    EventFilter,
    EventType,
    Execution,
    ExecutionState,
    Job,
    JsonObject,
    Listing,
    Page,
    Replica,
    RetentionPolicy,
    Schedule,
)
from cronwire_server.core.planning import ScheduleActivity, TickPlan
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.supervisor import Supervisor

if TYPE_CHECKING:
    from cronwire_server.storage.remote import HeldRemoteLease, RemoteTake, RemoteTaken
    from cronwire_server.storage.wakeup import Subscription

# The dispatcher's decision for one due schedule, run inside the claiming transaction.
# (schedule, now, activity, horizon): ticks due by the horizon (now, or later for a dispatch
# that takes ticks ahead) are planned, misfires judged by now.
Planner = Callable[[Schedule, datetime, ScheduleActivity, datetime], TickPlan]
# When a failed attempt is retried: (job, ended attempt, its end state, now) -> due time or None.
RetryPlanner = Callable[[Job, Execution, ExecutionState, datetime], "datetime | None"]


@dataclass(frozen=True)
class DispatchResult:
    schedules: int  # schedules claimed and advanced
    queued: int  # executions queued
    skipped: int  # ticks recorded as SKIPPED
    more: bool  # the batch was full: more schedules may be due right now
    # Executions started by the dispatch itself for the local worker pool (see `StartNow`), and
    # the ids of those among them that hold no slot until they get one (quick jobs' ticks).
    started: tuple[ClaimedExecution, ...] = ()
    slotless: frozenset[str] = frozenset()
    # The database's time the dispatch decided by, and this process's monotonic time when it had
    # read it: a run taken ahead of its due time starts `start_time - now` after that.
    clock: tuple[float, datetime] | None = None
    # How far ahead the dispatch looked (the database's time it decided by plus the look-ahead),
    # when it took ticks ahead: a tick due later was beyond its reach, not left by it.
    reach: datetime | None = None


@dataclass(frozen=True)
class StartNow:
    """Executions a dispatch creates that `worker` starts itself: inserted RUNNING with its
    lease, at most `count`, only those needing no admission decision.

    With `ahead`, ticks due within that much of now are taken too, at most `ahead_count` of the
    `count`, when every tick of their schedule starts this way (none skipped, serial or waiting
    for admission): inserted RUNNING with their due time as start time, and started by the pool's
    timer then, in a slot held for them. So a tick's start does not wait for a dispatch pass and
    its transaction at its due time, and the ticks of a steady stream are dispatched a batch at a
    time.

    Ticks of the jobs in `quick` (their runs give their slot back at once) are taken ahead beside
    those, and due now beyond `count`, at most `quick_count` in all; they hold no slot while they
    wait (`DispatchResult.slotless`): each takes one when due and free. Ticks of the jobs in
    `untried` (none of their runs has ended in the pool yet) are taken ahead as a quick job's:
    the pool gives them while none of its runs is going long (`QuickJobs.untried`)."""

    worker: str
    count: int
    lease: timedelta
    ahead: timedelta = timedelta(0)
    ahead_count: int = 0
    quick: Container[tuple[str, str]] = frozenset()
    quick_count: int = 0
    untried: Container[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class QueueSummary:
    """The QUEUED executions of every replica, for the queue metrics."""

    depth: int
    oldest_due_time: datetime | None  # of those due by `now`; None when none is
    now: datetime  # the database's


@dataclass(frozen=True)
class ClaimedExecution:
    """A RUNNING execution a worker holds the lease of, with the job it runs."""

    execution: Execution
    job: Job


@dataclass(frozen=True)
class LeaseRenewal:
    """What a heartbeat learned about the leases it renewed: the executions whose cancellation
    was requested, and those no longer the worker's (recovered by a replica: stop at once)."""

    cancelled: frozenset[str] = frozenset()
    lost: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EventPage:
    """Events read with a byte bound, each with the size of its snapshot (JSON text); `cut` when
    the bound (not the count or the end) stopped the page, so more events follow."""

    events: list[Event]
    sizes: list[int]
    cut: bool


@dataclass(frozen=True)
class ExecutionFilter:
    job_id: str = ""
    schedule_id: str = ""
    states: tuple[ExecutionState, ...] = ()
    scheduled_after: datetime | None = None
    scheduled_before: datetime | None = None


class BlockingRenewals(Protocol):
    """`Store.renew_leases` as a blocking call, safe in any one thread."""

    def renew(self, worker: str, execution_ids: list[str], lease: timedelta) -> LeaseRenewal: ...

    def close(self) -> None: ...


class Wakeup(Protocol):
    """Wakes sleepers when work may be waiting, in this process and (PostgreSQL) in every replica."""

    async def wait(self, channel: str, max_wait: float) -> bool:
        """Wait until `channel` ("schedules" or "executions") is signalled or `max_wait` seconds pass."""

    def subscribe(self, channel: str, event: asyncio.Event | None = None) -> Subscription:
        """Wake-ups of `channel` for one loop alone, which no other sleeper takes from it (with
        `event`, they set it)."""

    def subscribed(
        self, channel: str, event: asyncio.Event | None = None
    ) -> AbstractContextManager[Subscription]:
        """`subscribe` for as long as the block runs (sleepers that come and go, loops a
        supervisor may restart), removed when it leaves."""


class Store(Protocol):
    """Durable state. Every method is one transaction; errors are `cronwire_server.core.errors` types.

    Methods that change something on a caller's behalf take `actor`, the API key (`keys/<id>`)
    their events are credited to; "" for changes the scheduler makes itself or with auth off.

    Output-only fields (`create_time`, `update_time`, `etag`) are set here; the
    objects passed in are not modified, the stored versions are returned.
    """

    async def close(self) -> None:
        """Release the connection pool."""

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers."""

    # Jobs

    async def create_job(self, job: Job, *, request_id: str = "", limit: int = 0, actor: str = "") -> Job:
        """Insert a job. AlreadyExists if the id is taken in its namespace; with a `limit` > 0,
        NamespaceFull if the namespace holds that many jobs already.

        A non-empty `request_id` seen before in the namespace returns the job
        that request created (as it is now) instead of inserting.
        """

    async def get_job(self, namespace: str, job_id: str, *, with_stats: bool = False) -> Job:
        """The job, or NotFound; `with_stats`: with its statistics, read in the same statement."""

    async def list_jobs(
        self, namespace: str, page: Page, *, executor: str = "", with_stats: bool = False
    ) -> Listing[Job]:
        """Jobs in id order after `page.after`, at most `page.size`; only `executor` kind if given;
        each with its statistics if `with_stats`."""

    async def update_job(self, job: Job, *, expected_etag: str, actor: str = "") -> Job:
        """Replace the job's fields, if its etag is still `expected_etag` (checked in the UPDATE).

        NotFound if it is gone, EtagMismatch if it changed.
        """

    async def delete_job(
        self, namespace: str, job_id: str, *, expected_etag: str = "", actor: str = ""
    ) -> None:
        """Delete the job and its schedules. NotFound; EtagMismatch if `expected_etag` is stale."""

    # Schedules

    async def create_schedule(
        self, schedule: Schedule, *, request_id: str = "", limit: int = 0, actor: str = ""
    ) -> Schedule:
        """Insert a schedule. NotFound if its job does not exist, AlreadyExists if the id is taken.

        `request_id` and `limit` as for create_job.
        """

    async def get_schedule(self, namespace: str, schedule_id: str, *, with_stats: bool = False) -> Schedule:
        """The schedule, or NotFound; `with_stats`: with its statistics, read in the same statement."""

    async def namespace_counts(self) -> dict[str, tuple[int, int]]:
        """Every namespace holding jobs or schedules: (jobs, schedules) in it."""

    async def list_schedules(
        self, namespace: str, page: Page, *, job_id: str = "", with_stats: bool = False
    ) -> Listing[Schedule]:
        """Schedules in id order after `page.after`, at most `page.size`; only `job_id`'s if given;
        each with its statistics if `with_stats`."""

    async def schedules_with_calendars(
        self, namespace: str, job_ids: Sequence[str], before: datetime | None = None
    ) -> list[Schedule]:
        """The unpaused schedules of the jobs `job_ids` that name calendars and have a next fire
        time (before `before`, if given): those whose next run a calendar may put off."""

    async def update_schedule(
        self,
        schedule: Schedule,
        *,
        expected_etag: str,
        event_type: EventType = EventType.SCHEDULE_UPDATED,
        actor: str = "",
    ) -> Schedule:
        """Replace the schedule's fields (paused state and next fire time included) if its etag is
        still `expected_etag`. NotFound; EtagMismatch."""

    async def delete_schedule(
        self, namespace: str, schedule_id: str, *, expected_etag: str = "", actor: str = ""
    ) -> None:
        """Delete the schedule. NotFound; EtagMismatch if `expected_etag` is stale."""

    # Calendars

    async def create_calendar(self, calendar: Calendar, *, request_id: str = "", actor: str = "") -> Calendar:
        """Insert a calendar and its event. AlreadyExists if the id is taken; a repeated
        `request_id` returns the calendar that request created. Updates and deletes write their
        events too (CALENDAR_UPDATED, CALENDAR_DELETED), credited to `actor`."""

    async def get_calendar(self, namespace: str, calendar_id: str) -> Calendar:
        """The calendar, or NotFound."""

    async def list_calendars(self, namespace: str, page: Page) -> Listing[Calendar]:
        """Calendars in id order after `page.after`, at most `page.size`."""

    async def namespace_calendars(self, namespace: str) -> dict[str, Calendar]:
        """Every calendar of the namespace, by id."""

    async def update_calendar(
        self,
        calendar: Calendar,
        *,
        expected_etag: str,
        replan: Callable[[Schedule, datetime], Schedule],
        actor: str = "",
    ) -> Calendar:
        """Replace the calendar's fields if its etag is still `expected_etag`, and in the same
        transaction give every schedule that reaches it the calendars as they are now
        (`Schedule.calendars`) and the next fire time `replan` plans with them. NotFound;
        EtagMismatch."""

    async def delete_calendar(
        self, namespace: str, calendar_id: str, *, expected_etag: str = "", actor: str = ""
    ) -> None:
        """Delete the calendar. NotFound; EtagMismatch; FailedPrecondition while a schedule or
        another calendar names it."""

    # The clock: every "now" that decides claiming, firing and leases is the database's.

    async def now(self) -> datetime:
        """The database's current time."""

    def supervise_listener(self, supervisor: Supervisor) -> None:
        """Run the store's own background loop, if it has one (PostgreSQL's LISTEN), under
        `supervisor`."""

    @property
    def wakeup(self) -> Wakeup:
        """Notifications that schedules changed or executions were queued."""

    # The dispatcher

    async def dispatch_due(
        self, planner: Planner, *, limit: int, start: StartNow | None = None
    ) -> DispatchResult:
        """Claim up to `limit` due, unpaused schedules (SKIP LOCKED: replicas share the work), and in
        the same transaction insert the executions `planner` decides on (one per schedule and tick:
        a tick never fires twice), cancel running ones it asks to, and advance next_fire_time.
        With `start`, some of them are inserted RUNNING instead, leased to its worker."""

    async def next_fire_time(self) -> tuple[datetime | None, datetime]:
        """The earliest next fire time of an unpaused schedule, and the database's time when it
        was read (one round trip)."""

    # Workers

    async def claim_executions(
        self, worker: str, limit: int, lease: timedelta, *, namespace_limit: int = 0
    ) -> list[ClaimedExecution]:
        """Start up to `limit` due QUEUED executions (SKIP LOCKED), honouring serial executions, the
        jobs' max_concurrency and, when > 0, `namespace_limit` running per namespace (across all
        replicas); each RUNNING under `worker` with a lease until now + `lease`."""

    async def next_due_time(self) -> tuple[datetime | None, datetime]:
        """The earliest due time of a QUEUED execution, and the database's time when it was read
        (one round trip)."""

    async def queue_summary(self) -> QueueSummary:
        """How many executions are QUEUED, and the earliest due time of those already due."""

    async def renew_leases(self, worker: str, execution_ids: list[str], lease: timedelta) -> LeaseRenewal:
        """Extend the leases `worker` holds (locking the rows in primary-key order); which were
        cancelled and which are no longer its own."""

    def blocking_renewals(self) -> BlockingRenewals:
        """Lease renewal on a connection of its own, for a thread that must not wait for the event
        loop (the worker pool's renewer). Close it when done."""

    async def finish_executions(
        self, items: list[tuple[ClaimedExecution, RunOutcome]], worker: str, retry: RetryPlanner
    ) -> list[Execution | None]:
        """Record attempts' ends in one transaction — each only if `worker` still holds it (None
        otherwise) — and queue next attempts where `retry` gives a time."""

    async def release_executions(self, worker: str, execution_ids: list[str]) -> None:
        """Put executions a draining worker did not finish back in the queue, attempt unchanged."""

    async def recover_expired(self, retry: RetryPlanner, *, limit: int) -> list[Execution]:
        """Mark RUNNING executions whose lease expired as LOST and queue their retries."""

    # Remote workers (WorkerService): runs of executor `remote`, each under a lease of its own
    # (`storage.remote`); they end through `finish_executions` and `release_executions` with
    # the lease's `worker`, and are recovered by `recover_expired`, like any run.

    async def take_remote(self, takes: Sequence[RemoteTake], *, namespace_limit: int = 0) -> RemoteTaken:
        """For each take (a worker's stream), start up to `take.limit` due QUEUED remote executions
        of its queues (SKIP LOCKED, admitted like a claim), each RUNNING under a lease token of
        its own; all of them together (on PostgreSQL in one statement). When > 0,
        `namespace_limit` running per namespace, local and remote runs together, across all
        replicas (as `claim_executions` counts them)."""

    async def renew_remote(
        self, batches: Sequence[list[HeldRemoteLease]], lease: timedelta
    ) -> list[LeaseRenewal]:
        """Extend the remote leases still held, those of several heartbeats at once; for each
        heartbeat, which were cancelled and which are lost."""

    # Executions

    async def run_job(
        self,
        namespace: str,
        job_id: str,
        arguments: JsonObject,
        *,
        request_id: str = "",
        actor: str = "",
        skip_while_running: Sequence[str] = (),
    ) -> Execution:
        """Queue an execution of the job now. NotFound; a seen `request_id` returns its execution.

        While an execution of a schedule in `skip_while_running` is QUEUED or RUNNING, the run is
        recorded SKIPPED (reason OVERLAP) instead, checked in the insert's transaction."""

    async def get_execution(self, namespace: str, execution_id: str) -> Execution:
        """The execution with its output, or NotFound."""

    async def list_executions(self, namespace: str, page: Page, where: ExecutionFilter) -> Listing[Execution]:
        """Newest first (by create time, then id), output left out; `page.after` is a cursor this
        method returned."""

    async def cancel_execution(
        self, namespace: str, execution_id: str, reason: str, *, actor: str = ""
    ) -> Execution:
        """QUEUED: CANCELLED at once. RUNNING: cancellation requested; its worker stops it. Ended:
        unchanged."""

    # Run control

    async def append_logs(self, namespace: str, execution_id: str, chunks: list[tuple[int, str]]) -> None:
        """Store output chunks (byte offset, text) of a running execution; wakes log followers."""

    async def read_logs(
        self, namespace: str, execution_id: str, offset: int, limit: int
    ) -> list[tuple[int, str, datetime]]:
        """Output chunks (offset, text, time) from the one holding byte `offset` on."""

    async def claim_callbacks(self, limit: int) -> list[tuple[Execution, Job]]:
        """Due pending completion callbacks with their jobs, held while being delivered."""

    async def record_callback(
        self,
        execution: Execution,
        *,
        http_status: int | None,
        error: str,
        delivered: bool,
        next_time: datetime | None,
    ) -> None:
        """One delivery attempt; without delivery, `next_time` None gives up."""

    async def backfill(
        self,
        schedule: Schedule,
        ticks: list[datetime],
        *,
        serial: bool,
        max_concurrency: int,
        request_id: str = "",
        actor: str = "",
    ) -> list[Execution]:
        """Queue one BACKFILL execution per tick, at most `max_concurrency` running at once; a seen
        `request_id` returns the executions of that earlier backfill."""

    # Events

    async def sequence_events(self, limit: int) -> int:
        """Number committed events that have no sequence yet (one sequencer at a time); how many."""

    async def latest_event_sequence(self) -> int:
        """The largest sequence numbered so far (0 when there is none)."""

    async def read_events(
        self, where: EventFilter, *, after: int, limit: int, up_to: int | None = None
    ) -> list[Event]:
        """Numbered events after sequence `after` (up to `up_to`) matching `where`, in order."""

    async def read_event_page(
        self, where: EventFilter, *, after: int, limit: int, max_bytes: int, up_to: int | None = None
    ) -> EventPage:
        """Like `read_events`, also cut to at most `max_bytes` of snapshots (at least one event)."""

    async def prune_events(self, before: datetime, *, limit: int) -> int:
        """Delete up to `limit` events older than `before`; how many."""

    # Operations

    async def register_replica(self, replica: Replica) -> None:
        """Insert (or refresh) this process's row in the replica registry, stamped with now."""

    async def heartbeat_replica(self, replica_id: str, loops_down: tuple[str, ...] = ()) -> bool:
        """Stamp the replica's heartbeat with now and the loops it has down; False when its row is
        gone (pruned)."""

    async def remove_replica(self, replica_id: str) -> None:
        """Delete the replica's row (clean shutdown)."""

    async def prune_replicas(self, silent_for: timedelta) -> int:
        """Delete the rows of replicas not heard from for `silent_for`; how many."""

    async def cluster_status(self, lag_window: timedelta) -> ClusterStatus:
        """Replicas, queue depth, running executions and the scheduling lag over `lag_window`."""

    async def prune_executions(self, policy: RetentionPolicy, *, limit: int) -> int:
        """Delete up to `limit` finished executions (and their output) that `policy` no longer keeps;
        never active ones, ones with a pending callback, or ones an active execution descends from."""
