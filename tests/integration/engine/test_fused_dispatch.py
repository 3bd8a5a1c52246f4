"""While the local worker pool has free slots, the dispatcher starts the ticks it creates itself:
inserted RUNNING with the pool's lease in the dispatch's transaction, run by the pool at once,
with no claim in between (their start is written by the dispatch's statement). The rest queue as before."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

from cronwire_server import dispatcher as dispatcher_module
from cronwire_server import quick_jobs, workers
from cronwire_server.core.model import (
    EventFilter,
    EventType,
    Execution,
    ExecutionState,
    IntervalSpec,
    Job,
    Page,
    Schedule,
    SkipReason,
)
from cronwire_server.core.planning import ScheduleActivity, TickPlan
from cronwire_server.dispatcher import Dispatcher
from cronwire_server.executors.address_policy import HttpPolicy
from cronwire_server.executors.runners import Runners
from cronwire_server.storage.base import DispatchResult, ExecutionFilter, StartNow
from cronwire_server.storage.sql_engine import sync_url
from cronwire_server.storage.sql_store import SqlStore, open_store
from cronwire_server.storage.tables import schedules
from tests.support import running_pool

NS = "fused"


async def due_schedules(store: SqlStore, job: Job, count: int) -> None:
    await store.create_job(job)
    for n in range(count):
        await store.create_schedule(
            Schedule(
                namespace=NS, id=f"{job.id}-{n}", job_id=job.id, trigger=IntervalSpec(timedelta(hours=1))
            )
        )
    async with store.engine.connect() as conn:
        past = datetime.now(UTC) - timedelta(seconds=1)
        await conn.execute(
            sa.update(schedules).where(schedules.c.job_id == job.id).values(next_fire_time=past)
        )


@asynccontextmanager
async def store_and_session(url: str) -> AsyncIterator[tuple[SqlStore, sa.Engine]]:
    """A store on `url` and a plain blocking engine on the same database (another replica's, or
    a session of one's own), both closed after."""
    store = await open_store(url)
    other = sa.create_engine(sync_url(url), poolclass=sa.pool.NullPool)
    try:
        yield store, other
    finally:
        other.dispose()
        await store.close()


async def executions_of(store: SqlStore, job_id: str) -> list:  # type: ignore[type-arg]
    listed = await store.list_executions(NS, Page(size=100), ExecutionFilter(job_id=job_id))
    return list(listed.items)


async def test_ticks_start_in_the_dispatch_while_the_pool_has_room(store: SqlStore) -> None:
    await due_schedules(store, Job(namespace=NS, id="noop", executor="noop", parameters={}), 3)
    # A job with a concurrency limit needs a claim's decision: its tick is queued.
    await due_schedules(
        store, Job(namespace=NS, id="one", executor="noop", parameters={}, max_concurrency=1), 1
    )
    async with running_pool(store, slots=2) as pool:
        assert await Dispatcher(store, pool=pool).run_once() == 4
        deadline = time.monotonic() + 15
        while True:
            made = await executions_of(store, "noop") + await executions_of(store, "one")
            ran = [e for e in made if e.state is not ExecutionState.SKIPPED]  # ticks of the past
            if len(ran) == 4 and all(e.state is ExecutionState.SUCCEEDED for e in ran):
                break
            assert time.monotonic() < deadline, [(e.id, e.state) for e in ran]
            await asyncio.sleep(0.05)
        assert {e.worker for e in ran} == {pool.identity}
        events = await store.read_events(EventFilter(namespace=NS), after=0, limit=1000)
        if not events:  # PostgreSQL numbers them first
            await store.sequence_events(1000)
            events = await store.read_events(EventFilter(namespace=NS), after=0, limit=1000)
        started_by = {e.resource: e.time for e in events if e.type is EventType.EXECUTION_STARTED}
        # A run started by its dispatch has its start written by the dispatch's statement; a
        # claimed one by a claim's, later.
        fused = [e for e in ran if started_by[e.name] == e.create_time]
        # As many as the pool had free slots, of the job that needs no decision; the others
        # were queued and claimed.
        assert len(fused) == 2
        assert {e.job_id for e in fused} == {"noop"}
        for execution in fused:
            assert execution.create_time <= execution.start_time
            own = [e for e in events if e.resource == execution.name]
            assert [e.type for e in own] == [
                EventType.EXECUTION_QUEUED,
                EventType.EXECUTION_STARTED,
                EventType.EXECUTION_SUCCEEDED,
            ]
            # Each event carries the run as it was then: queued first, as if claimed after.
            queued, started = own[0].snapshot, own[1].snapshot
            assert isinstance(queued, Execution)
            assert isinstance(started, Execution)
            assert (queued.state, queued.worker, queued.start_time) == (ExecutionState.QUEUED, "", None)
            assert (started.state, started.worker) == (ExecutionState.RUNNING, pool.identity)
            assert started.start_time == execution.start_time
            assert queued.id == started.id == execution.id
            assert queued.scheduled_time == started.scheduled_time == execution.scheduled_time
            # Whole, as read back: the run as its dispatch inserted it, then as it ended.
            stored = await store.get_execution(NS, execution.id)
            as_started = replace(stored, state=ExecutionState.RUNNING, end_time=None, result=None, output="")
            assert started == as_started
            assert queued == replace(as_started, state=ExecutionState.QUEUED, worker="", start_time=None)
            assert own[2].snapshot == replace(stored, output="")


async def test_each_run_started_by_a_dispatch_runs_its_own_job(store: SqlStore) -> None:
    # A batch reads each job once, with the first of its schedules in due order. Two jobs'
    # schedules due in turn, the first of each planned as a skipped tick (so its job is needed
    # only for a later schedule): every run started carries its own job, whole.
    jobs = [
        Job(namespace=NS, id=name, executor="noop", parameters={}, labels={"job": name}, description=name)
        for name in ("first", "second")
    ]
    for job in jobs:
        await store.create_job(job)
    past = (await store.now()) - timedelta(seconds=1)
    for n in range(3):
        for m, job in enumerate(jobs):
            await store.create_schedule(
                Schedule(
                    namespace=NS, id=f"{job.id}-{n}", job_id=job.id, trigger=IntervalSpec(timedelta(hours=1))
                )
            )
            async with store.engine.begin() as conn:  # in turn: first-0, second-0, first-1, ...
                due = past + timedelta(milliseconds=10 * (2 * n + m))
                await conn.execute(
                    sa.update(schedules).where(schedules.c.id == f"{job.id}-{n}").values(next_fire_time=due)
                )
    dispatcher = Dispatcher(store)

    def plan(schedule: Schedule, now: datetime, activity: ScheduleActivity, until: datetime) -> TickPlan:
        planned = dispatcher.plan(schedule, now, activity, until)
        if schedule.id.endswith("-0"):
            skipped = [replace(run, skip_reason=SkipReason.MISSED) for run in planned.runs]
            return replace(planned, runs=skipped)
        return planned

    start = StartNow(worker="pool", count=10, lease=timedelta(minutes=1))
    result = await store.dispatch_due(plan, limit=10, start=start)
    assert result.schedules == 6
    started = {claimed.execution.schedule_id: claimed for claimed in result.started}
    assert sorted(started) == ["first-1", "first-2", "second-1", "second-2"]
    for claimed in started.values():
        job = next(j for j in jobs if j.id == claimed.execution.job_id)
        assert claimed.job.id == job.id
        assert (claimed.job.labels, claimed.job.description) == (job.labels, job.description)


async def schedules_due_in(
    store: SqlStore, job: Job, offsets: list[timedelta], *, new_job: bool = True
) -> list[str]:
    """Schedules of `job` (created first if `new_job`) whose next tick is each offset from now,
    by the database's clock."""
    if new_job:
        await store.create_job(job)
    now = await store.now()
    names = []
    for n, offset in enumerate(offsets):
        schedule_id = f"{job.id}-{n}"
        await store.create_schedule(
            Schedule(namespace=NS, id=schedule_id, job_id=job.id, trigger=IntervalSpec(timedelta(hours=1)))
        )
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.update(schedules).where(schedules.c.id == schedule_id).values(next_fire_time=now + offset)
            )
        names.append(schedule_id)
    return names


async def next_fire_times(store: SqlStore) -> dict[str, datetime]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(schedules.c.id, schedules.c.next_fire_time))).all()
    return {r.id: r.next_fire_time.replace(tzinfo=r.next_fire_time.tzinfo or UTC) for r in rows}


async def test_a_tick_due_soon_is_taken_ahead_and_starts_at_its_due_time(store: SqlStore) -> None:
    soon, later = await schedules_due_in(
        store,
        Job(namespace=NS, id="ahead", executor="noop", parameters={}),
        [timedelta(seconds=2), timedelta(seconds=60)],
    )
    planned = await next_fire_times(store)
    async with running_pool(store, slots=4) as pool:
        # A look-ahead wider than the default, so that the tick two seconds away is within it
        # however slow this machine is; the one a minute away is not.
        assert await Dispatcher(store, pool=pool, ahead=timedelta(seconds=20)).run_once() == 1
        (taken,) = await executions_of(store, "ahead")
        assert taken.schedule_id == soon
        assert taken.scheduled_time == planned[soon]
        # Recorded before its due time, leased to the pool, to start when it is due.
        assert taken.create_time is not None
        assert taken.create_time < taken.scheduled_time
        assert taken.state in (ExecutionState.RUNNING, ExecutionState.SUCCEEDED), taken.state
        assert taken.worker == pool.identity
        deadline = time.monotonic() + 20
        while (ran := (await executions_of(store, "ahead"))[0]).state is not ExecutionState.SUCCEEDED:
            assert time.monotonic() < deadline, ran.state
            await asyncio.sleep(0.05)
        # The job's code started at its due time, not when it was dispatched; the row says when.
        assert ran.start_time is not None
        assert ran.start_time >= ran.scheduled_time
        assert ran.end_time is not None
        assert ran.end_time >= ran.start_time
        left = await next_fire_times(store)
        assert left[soon] > planned[soon]
        assert left[later] == planned[later]  # beyond the look-ahead: untouched
        events = await store.read_events(EventFilter(namespace=NS), after=0, limit=1000)
        if not events:  # PostgreSQL numbers them first
            await store.sequence_events(1000)
            events = await store.read_events(EventFilter(namespace=NS), after=0, limit=1000)
        assert [e.type for e in events if e.resource == ran.name] == [
            EventType.EXECUTION_QUEUED,
            EventType.EXECUTION_STARTED,
            EventType.EXECUTION_SUCCEEDED,
        ]


async def tried_slow(store: SqlStore, job_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `job_id` once in the running pool, counted slow there (no run is quick): its ticks
    taken ahead then hold a slot each, as those of a job the pool knows to be slow."""
    monkeypatch.setattr(quick_jobs, "QUICK_RUN", 0.0)
    await succeeded(store, (await store.run_job(NS, job_id, {})).id)


async def test_only_ticks_the_pool_starts_itself_are_taken_ahead(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job with a concurrency limit needs a claim's decision when it is due; and of two ticks
    # ahead of a slow job, a pool with two free slots takes one (half its free slots: the rest
    # stay for what is due now, and a run taken ahead holds its slot while it waits).
    (limited,) = await schedules_due_in(
        store,
        Job(namespace=NS, id="limited", executor="noop", parameters={}, max_concurrency=1),
        [timedelta(seconds=2)],
    )
    plain = await schedules_due_in(
        store,
        Job(namespace=NS, id="plain", executor="noop", parameters={}),
        [timedelta(seconds=2), timedelta(seconds=3)],
    )
    planned = await next_fire_times(store)
    async with running_pool(store, slots=2) as pool:
        await tried_slow(store, "plain", monkeypatch)
        assert await Dispatcher(store, pool=pool, ahead=timedelta(seconds=20)).run_once() == 1
        assert await executions_of(store, "limited") == []
        (taken,) = [e for e in await executions_of(store, "plain") if e.schedule_id]
        assert taken.schedule_id == plain[0]
        left = await next_fire_times(store)
        assert left[limited] == planned[limited]
        assert left[plain[1]] == planned[plain[1]]


async def test_a_pass_reads_no_more_schedules_ahead_than_the_pool_takes(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten ticks within the look-ahead; a pool with four free slots and no room for ticks taken
    # without a slot (those of quick or untried jobs) takes two of them ahead (half its room), so
    # the pass reads those two schedules, not all ten (each read is decoded).
    monkeypatch.setattr(workers, "QUICK_AHEAD_PER_SLOT", 0)
    offsets = [timedelta(seconds=2 + n / 10) for n in range(10)]
    await schedules_due_in(store, Job(namespace=NS, id="plain", executor="noop", parameters={}), offsets)
    planned: list[str] = []

    class Counting(Dispatcher):
        def plan(self, schedule: Schedule, *args: Any) -> Any:
            planned.append(schedule.id)
            return super().plan(schedule, *args)

    async with running_pool(store, slots=4) as pool:
        assert await Counting(store, pool=pool, ahead=timedelta(seconds=20)).run_once() == 2
        assert len(planned) == 2, planned


@pytest.mark.postgres
async def test_a_run_started_by_its_dispatch_starts_after_the_run_it_saw_end(
    fresh_database_url: Callable[[str], str],
) -> None:
    # The overlap policy skips a tick while a run of the schedule is going. A run that ends after
    # the dispatch began but before it counted what is going is not counted; the run the dispatch
    # then starts must not be recorded as starting before that run ended.
    async with store_and_session(fresh_database_url("postgres")) as (store, other):  # other: a replica's
        await due_schedules(store, Job(namespace=NS, id="serial", executor="noop", parameters={}), 1)
        planner = Dispatcher(store).plan
        start = StartNow(worker="pool", count=1, lease=timedelta(minutes=1))
        (first,) = (await store.dispatch_due(planner, limit=10, start=start)).started
        async with store.engine.begin() as conn:
            await conn.execute(sa.update(schedules).values(next_fire_time=await store.now()))

        ended: list[bool] = []

        def end_first_run_before_the_count(_c: object, _cur: object, statement: str, *_: object) -> None:
            if "count(*)" in statement and "GROUP BY" in statement and not ended:  # the activity read
                ended.append(True)
                with other.begin() as conn:  # the run's outcome, written as a finish writes it
                    conn.execute(
                        sa.text("UPDATE executions SET state = 'succeeded', end_time = now() WHERE id = :id"),
                        {"id": first.execution.id},
                    )

        engine = store.engine.sync_engine
        sa.event.listen(engine, "before_cursor_execute", end_first_run_before_the_count)
        try:
            (second,) = (await store.dispatch_due(planner, limit=10, start=start)).started
        finally:
            sa.event.remove(engine, "before_cursor_execute", end_first_run_before_the_count)
        assert ended
        done = await store.get_execution(NS, first.execution.id)
        assert done.end_time is not None
        assert second.execution.start_time is not None
        assert second.execution.start_time >= done.end_time


async def dispatch_sending(store: SqlStore) -> tuple[DispatchResult, list[tuple[str, Any]]]:
    """A pass for a pool with room that takes ticks ahead, and the statements it sent (with
    their parameters)."""
    sent: list[tuple[str, Any]] = []

    def capture(_c: object, _cur: object, statement: str, parameters: Any, *_: object) -> None:
        sent.append((statement, parameters))

    start = StartNow(
        worker="pool", count=16, lease=timedelta(minutes=1), ahead=timedelta(seconds=1), ahead_count=8
    )
    engine = store.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        result = await store.dispatch_due(Dispatcher(store).plan, limit=200, start=start)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    return result, sent


@pytest.mark.postgres
async def test_a_pass_with_nothing_due_reads_no_schedule_whatever_its_plan(
    fresh_database_url: Callable[[str], str],
) -> None:
    # The dispatcher's read of due schedules runs every pass, as a prepared statement; PostgreSQL
    # may plan it once for any time (a generic plan, which guesses a third of the table due). With
    # nothing due, neither plan may read the schedules: they are many, and the pass frequent.
    async with store_and_session(fresh_database_url("postgres")) as (store, reader):
        await store.create_job(Job(namespace=NS, id="later", executor="noop", parameters={}))
        await asyncio.gather(
            *(
                store.create_schedule(
                    Schedule(
                        namespace=NS,
                        id=f"later-{n}",
                        job_id="later",
                        trigger=IntervalSpec(timedelta(hours=1)),
                    )
                )
                for n in range(1000)
            )
        )
        async with store.engine.connect() as conn:
            await conn.execute(sa.text("ANALYZE schedules, jobs"))  # as autovacuum keeps them
        result, sent = await dispatch_sending(store)
        assert result.schedules == 0
        ((statement, parameters),) = [(s, p) for s, p in sent if "FOR UPDATE OF schedules" in s]
        for mode in ("force_custom_plan", "force_generic_plan"):
            with reader.connect() as plain:
                driver = plain.connection.driver_connection
                assert isinstance(driver, psycopg.Connection)
                driver.execute(f"SET plan_cache_mode = {mode}")
                driver.execute(statement, parameters, prepare=True)
                counted = driver.execute(
                    "SELECT pg_stat_get_xact_tuples_returned('schedules'::regclass)"
                ).fetchone()
                assert counted is not None
                (read,) = counted
                driver.rollback()
            assert read == 0, f"{mode}: {read} schedules read"


@pytest.mark.postgres
async def test_the_statements_of_a_dispatch_are_parsed_once_by_the_driver(
    fresh_database_url: Callable[[str], str],
) -> None:
    # psycopg keeps the parsing of a statement of at most MAX_CACHED_STATEMENT_LENGTH bytes and
    # parses a longer one again at every call; a dispatch's are sent every pass.
    async with store_and_session(fresh_database_url("postgres")) as (store, _):
        await due_schedules(store, Job(namespace=NS, id="parsed", executor="noop", parameters={}), 3)
        result, sent = await dispatch_sending(store)
        assert len(result.started) == 3
        assert any("FOR UPDATE OF schedules" in statement for statement, _ in sent), sent
        longest = max((statement for statement, _ in sent), key=len)
        assert len(longest) <= MAX_CACHED_STATEMENT_LENGTH, longest[:200]


@dataclass
class Webhook:
    """A local endpoint for http jobs: answers each call after a moment (two calls at once would
    overlap), counting the calls in flight and the most at once; while `hold` is set a call waits
    until `release` is."""

    url: str = ""
    calls: int = 0
    in_flight: int = 0
    most: int = 0
    hold: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Answering(BaseHTTPRequestHandler):
    webhook: Webhook

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        hook = self.webhook
        with hook.lock:
            hook.calls += 1
            hook.in_flight += 1
            hook.most = max(hook.most, hook.in_flight)
        try:
            if hook.hold.is_set():
                hook.release.wait(30)
            else:
                time.sleep(0.005)
        finally:
            with hook.lock:
                hook.in_flight -= 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Answering", (_Answering,), {"webhook": hook}))
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hook
    hook.release.set()
    server.shutdown()
    server.server_close()


# http jobs may call this machine's loopback address here (the server's default refuses it).
LOOPBACK = Runners(HttpPolicy(allowed_networks=(ip_network("127.0.0.0/8"),)))


async def http_job(store: SqlStore, webhook: Webhook, job_id: str) -> Job:
    job = Job(namespace=NS, id=job_id, executor="http", parameters={"url": webhook.url})
    await store.create_job(job)
    return job


async def made_quick(store: SqlStore, job: Job) -> None:
    """Run `job` now as often as a pool needs to count it quick (through its claims), and wait
    until each run succeeded."""
    for execution in [await store.run_job(NS, job.id, {}) for _ in range(quick_jobs.QUICK_AFTER)]:
        await succeeded(store, execution.id)


async def succeeded(store: SqlStore, execution_id: str) -> None:
    deadline = time.monotonic() + 20
    while (ran := await store.get_execution(NS, execution_id)).state is not ExecutionState.SUCCEEDED:
        assert time.monotonic() < deadline, ran.state
        await asyncio.sleep(0.02)


async def test_ticks_of_a_quick_job_are_taken_ahead_beyond_the_slots_and_wait_for_one_when_due(
    store: SqlStore, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job whose runs here end at once: ticks of it taken ahead hold no slot while they wait, so
    # a pool of one slot takes six due together (by the slot rule alone it would take none: half
    # its one free slot). When due, they take the slot one after another.
    monkeypatch.setattr(quick_jobs, "QUICK_RUN", 5.0)  # quick on however slow a machine
    job = await http_job(store, webhook, "quick")
    async with running_pool(store, slots=1, runners=LOOPBACK) as pool:
        dispatcher = Dispatcher(store, pool=pool, ahead=timedelta(seconds=20))
        await made_quick(store, job)
        webhook.most = 0
        ticks = await schedules_due_in(store, job, [timedelta(seconds=2)] * 6, new_job=False)
        planned = await next_fire_times(store)
        assert await dispatcher.run_once() == 6
        taken = [e for e in await executions_of(store, job.id) if e.schedule_id]
        assert sorted(e.schedule_id for e in taken) == sorted(ticks)
        assert all(e.create_time is not None and e.create_time < e.scheduled_time for e in taken)
        deadline = time.monotonic() + 20
        while not all(e.state is ExecutionState.SUCCEEDED for e in taken):
            assert time.monotonic() < deadline, [e.state for e in taken]
            await asyncio.sleep(0.05)
            taken = [e for e in await executions_of(store, job.id) if e.schedule_id]
        for execution in taken:
            assert execution.scheduled_time == planned[execution.schedule_id]
            assert execution.start_time is not None
            assert execution.start_time >= execution.scheduled_time
        assert webhook.most == 1  # one slot: one call at a time


async def run_going_long(store: SqlStore, webhook: Webhook, job: Job) -> Execution:
    """A run of `job` (an http job) whose call hangs until `webhook.release` is set, once it has
    gone on longer than a quick run (QUICK_RUN set to 0.5 s)."""
    webhook.hold.set()
    calls = webhook.calls
    hung = await store.run_job(NS, job.id, {})
    deadline = time.monotonic() + 20
    while webhook.calls == calls:  # the pool has called the endpoint: the run is going
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.6)  # longer than a quick run (the condition is time itself)
    return hung


async def test_a_quick_job_with_a_run_going_long_is_taken_ahead_only_as_the_slots_allow(
    store: SqlStore, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A quick job's endpoint hangs: once its run has gone on longer than a quick run, its ticks
    # are no longer taken ahead without a slot (they could wait behind it as long as it hangs).
    monkeypatch.setattr(quick_jobs, "QUICK_RUN", 0.5)
    job = await http_job(store, webhook, "hangs")
    async with running_pool(store, slots=2, runners=LOOPBACK) as pool:
        dispatcher = Dispatcher(store, pool=pool, ahead=timedelta(seconds=20))
        await made_quick(store, job)
        hung = await run_going_long(store, webhook, job)
        await schedules_due_in(store, job, [timedelta(seconds=5)] * 4, new_job=False)
        # One slot free, half of it for ticks ahead: none.
        assert await dispatcher.run_once() == 0
        webhook.release.set()
        await succeeded(store, hung.id)


async def test_ticks_of_a_job_the_pool_has_not_run_are_taken_ahead_as_a_quick_jobs(
    store: SqlStore, webhook: Webhook
) -> None:
    # A new job's first ticks: a pool of one slot that has run nothing of it takes all six ahead
    # (by the slot rule alone it would take none: half its one free slot), holding no slot while
    # they wait; when due, they take the slot one after another, and start on time.
    job = Job(namespace=NS, id="new", executor="http", parameters={"url": webhook.url})
    ticks = await schedules_due_in(store, job, [timedelta(seconds=2)] * 6)
    webhook.most = 0
    async with running_pool(store, slots=1, runners=LOOPBACK) as pool:
        planned = await next_fire_times(store)
        assert await Dispatcher(store, pool=pool, ahead=timedelta(seconds=20)).run_once() == 6
        taken = [e for e in await executions_of(store, job.id) if e.schedule_id]
        assert sorted(e.schedule_id for e in taken) == sorted(ticks)
        assert all(e.create_time is not None and e.create_time < e.scheduled_time for e in taken)
        for execution in taken:
            await succeeded(store, execution.id)
        for execution in await executions_of(store, job.id):
            assert execution.start_time is not None
            assert execution.start_time >= planned[execution.schedule_id]
    assert webhook.most == 1  # one slot: one call at a time


async def test_a_pool_with_a_run_going_long_takes_a_new_jobs_ticks_ahead_only_as_the_slots_allow(
    store: SqlStore, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its slots may stay taken: a job it knows nothing of could wait behind them, where another
    # replica might start it on time.
    monkeypatch.setattr(quick_jobs, "QUICK_RUN", 0.5)
    hangs = await http_job(store, webhook, "hangs")
    async with running_pool(store, slots=2, runners=LOOPBACK) as pool:
        hung = await run_going_long(store, webhook, hangs)
        new = Job(namespace=NS, id="new", executor="noop", parameters={})
        await schedules_due_in(store, new, [timedelta(seconds=5)] * 4)
        # One slot free, half of it for ticks ahead: none.
        assert await Dispatcher(store, pool=pool, ahead=timedelta(seconds=20)).run_once() == 0
        webhook.release.set()
        await succeeded(store, hung.id)


async def test_ticks_of_a_quick_job_due_beyond_the_free_slots_start_in_the_dispatch_one_slot_at_a_time(
    store: SqlStore, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Six ticks of a quick job due now, one slot: the dispatch starts all six itself (they wait
    # for the slot in turn), none is queued for a claim; a slow job's would be, beyond the slot.
    monkeypatch.setattr(quick_jobs, "QUICK_RUN", 5.0)
    job = await http_job(store, webhook, "burst")
    claimed: list[str] = []
    claim = store.claim_executions

    async def claim_and_note(*args: Any, **kwargs: Any) -> Any:
        got = await claim(*args, **kwargs)
        claimed.extend(c.execution.id for c in got)
        return got

    monkeypatch.setattr(store, "claim_executions", claim_and_note)
    async with running_pool(store, slots=1, runners=LOOPBACK) as pool:
        await made_quick(store, job)
        claimed.clear()
        webhook.most = 0
        await schedules_due_in(store, job, [timedelta(0)] * 6, new_job=False)
        assert await Dispatcher(store, pool=pool).run_once() == 6
        # A schedule created after the time its tick was set to has its first tick due too,
        # skipped (overlap) while the earlier one runs: what ran is the six.
        made = [e for e in await executions_of(store, job.id) if e.schedule_id]
        ticks = [e for e in made if e.state is not ExecutionState.SKIPPED]
        assert len(ticks) == 6
        for execution in ticks:
            await succeeded(store, execution.id)
        assert claimed == []
        assert webhook.most == 1  # one slot: one call at a time


async def test_a_pool_that_drains_puts_back_the_quick_jobs_ticks_waiting_for_their_time(
    store: SqlStore, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ticks taken ahead without a slot, still waiting for their due time when the replica stops:
    # put back in the queue for any replica, none left RUNNING under the stopped pool's lease.
    monkeypatch.setattr(quick_jobs, "QUICK_RUN", 5.0)
    job = await http_job(store, webhook, "later")
    async with running_pool(store, slots=1, runners=LOOPBACK, grace=0.5) as pool:
        await made_quick(store, job)
        calls = webhook.calls
        await schedules_due_in(store, job, [timedelta(seconds=30)] * 3, new_job=False)
        assert await Dispatcher(store, pool=pool, ahead=timedelta(seconds=60)).run_once() == 3
    waiting = [e for e in await executions_of(store, job.id) if e.schedule_id]
    assert len(waiting) == 3
    assert {e.state for e in waiting} == {ExecutionState.QUEUED}
    assert webhook.calls == calls  # none of them ran


async def test_a_dispatch_in_flight_holds_no_slot_a_quick_run_taken_ahead_wants_when_due(
    store: SqlStore, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dispatch holds the slots it may start runs in until it has committed (tens of
    # milliseconds under load), but not those the quick runs taken ahead will want as they come
    # due meanwhile: they would all start late, at its end.
    monkeypatch.setattr(quick_jobs, "QUICK_RUN", 5.0)
    job = await http_job(store, webhook, "due-meanwhile")
    async with running_pool(store, slots=1, runners=LOOPBACK) as pool:
        dispatcher = Dispatcher(store, pool=pool, ahead=timedelta(seconds=20))
        await made_quick(store, job)
        await schedules_due_in(store, job, [timedelta(seconds=1)], new_job=False)
        assert await dispatcher.run_once() == 1  # taken ahead, waiting for its time without a slot
        (waiting,) = [e for e in await executions_of(store, job.id) if e.schedule_id]
        start = pool.reserve(200, timedelta(seconds=20))  # the next dispatch begins, and lasts
        assert start is not None
        assert start.count == 0  # the one free slot is the waiting run's
        try:
            await succeeded(store, waiting.id)  # it came due and ran meanwhile
        finally:
            pool.adopt(start, [], time.monotonic())


async def test_a_run_waiting_for_a_slot_when_due_ends_at_once_when_cancelled(
    store: SqlStore, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ticks of a quick job due now beyond the free slots wait for one without holding any; while
    # the only slot is taken by a call that hangs, a cancelled one goes on at once, to end.
    monkeypatch.setattr(quick_jobs, "QUICK_RUN", 5.0)
    job = await http_job(store, webhook, "cancelled-waiting")
    async with running_pool(store, slots=1, runners=LOOPBACK) as pool:
        await made_quick(store, job)
        webhook.hold.set()
        calls = webhook.calls
        await schedules_due_in(store, job, [timedelta(0)] * 2, new_job=False)
        assert await Dispatcher(store, pool=pool).run_once() == 2
        deadline = time.monotonic() + 20
        while webhook.calls == calls:  # one holds the slot, calling the endpoint that hangs
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        while not pool._ready:  # the other waits for the slot
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        ((_, queued),) = pool._ready
        waiting = queued.claimed.execution
        await store.cancel_execution(NS, waiting.id, "not needed")
        deadline = time.monotonic() + 20
        while (ended := await store.get_execution(NS, waiting.id)).state is not ExecutionState.CANCELLED:
            assert time.monotonic() < deadline, ended.state
            await asyncio.sleep(0.05)
        assert webhook.calls == calls + 1  # the cancelled one never called
        webhook.release.set()


def batch_limits(store: SqlStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The schedules' limit of each dispatch batch `store` is asked for, as they come."""
    limits: list[int] = []
    dispatch = store.dispatch_due

    async def dispatch_and_note(*args: Any, limit: int, **kwargs: Any) -> Any:
        limits.append(limit)
        return await dispatch(*args, limit=limit, **kwargs)

    monkeypatch.setattr(store, "dispatch_due", dispatch_and_note)
    return limits


async def test_the_next_pass_wakes_half_the_look_ahead_before_the_first_tick_beyond_reach(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a steady stream the next tick is always within one look-ahead of the last pass: woken
    # only at its due time, a pass would start late every tick due while it ran. (A look-ahead
    # within the dispatcher's longest sleep.)
    ahead = timedelta(seconds=4)
    _, later = await schedules_due_in(
        store,
        Job(namespace=NS, id="stream", executor="noop", parameters={}),
        [timedelta(seconds=1), timedelta(hours=1)],
    )
    limits = batch_limits(store, monkeypatch)
    async with running_pool(store, slots=4) as pool:
        dispatcher = Dispatcher(store, pool=pool, ahead=ahead)
        assert await dispatcher.run_once() == 1  # `soon`, taken ahead
        reach = dispatcher._reach
        assert reach is not None
        # The next tick just beyond what the pass could take, so within one look-ahead of now.
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.update(schedules)
                .where(schedules.c.id == later)
                .values(next_fire_time=reach + timedelta(milliseconds=1))
            )
        assert 0 < await dispatcher._sleep_time() <= ahead.total_seconds() / 2
        # Woken ahead of its first tick, the pass takes a whole batch at once.
        limits.clear()
        await dispatcher.run_once()
        assert limits == [dispatcher_module.BATCH]


async def test_a_pass_that_may_find_ticks_due_starts_with_a_small_batch_then_larger_ones(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch's runs start once it has committed: the first of a pass that finds 150 ticks due
    # is small, so that they start soon, and the batches after it grow.
    await due_schedules(store, Job(namespace=NS, id="due", executor="noop", parameters={}), 150)
    limits = batch_limits(store, monkeypatch)
    async with running_pool(store, slots=4) as pool:
        await Dispatcher(store, pool=pool).run_once()
    first = dispatcher_module.FIRST_BATCH
    assert limits[:3] == [first, 2 * first, 4 * first]
    made = await store.list_executions(NS, Page(size=1000), ExecutionFilter(job_id="due"))
    assert len({e.schedule_id for e in made.items}) == 150  # every schedule's tick taken
