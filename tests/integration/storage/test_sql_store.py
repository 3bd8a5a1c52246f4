"""SqlStore against real databases: SQLite and PostgreSQL, each test on a fresh migrated database."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from cronwire_server.core import errors
from cronwire_server.core.model import (
    AllOfSpec,
    AnyOfSpec,
    CompletionCallback,
    CronSpec,
    DateSpec,
    DependencyCondition,
    ExecutionState,
    IntervalSpec,
    Job,
    JobDependent,
    MisfirePolicy,
    OverlapPolicy,
    Page,
    RetryPolicy,
    Schedule,
)
from cronwire_server.storage.migrate import alembic_config, current_revision, head_revision
from cronwire_server.storage.sql_store import SqlStore, normalize_url, open_store, sync_url
from cronwire_server.storage.tables import metadata
from tests.conftest import POSTGRES_URL_ENV

NS = "team-a"


def make_job(job_id: str = "nightly", *, namespace: str = NS, executor: str = "shell") -> Job:
    return Job(namespace=namespace, id=job_id, executor=executor, parameters={"argv": ["true"]})


def full_job(job_id: str = "full") -> Job:
    """A job with every field away from its default."""
    return Job(
        namespace=NS,
        id=job_id,
        executor="http",
        parameters={
            "url": "https://example.com/hook",
            "headers": {"X-Ünïcode": "✓"},
            "expect": [200, 204],
            "nested": {"ratio": 0.25, "on": True, "none": None, "deep": [{"a": [1, 2, {"b": "c"}]}]},
        },
        description="Posts the nightly report",
        timeout=timedelta(seconds=90, microseconds=500_000),
        retry_policy=RetryPolicy(
            max_attempts=5,
            initial_backoff=timedelta(milliseconds=250),
            backoff_multiplier=1.5,
            max_backoff=timedelta(minutes=10),
            jitter=0.2,
        ),
        max_concurrency=3,
        dependents=[
            JobDependent("cleanup", DependencyCondition.ON_COMPLETION),
            JobDependent("alert", DependencyCondition.ON_FAILURE),
        ],
        callback=CompletionCallback(
            url="https://example.com/done",
            states=(ExecutionState.FAILED, ExecutionState.TIMED_OUT),
            secret="s3cr3t-hmac-key",
        ),
        labels={"team": "data", "tier": "gold"},
    )


def make_schedule(
    schedule_id: str = "every-minute", job_id: str = "nightly", *, namespace: str = NS
) -> Schedule:
    return Schedule(namespace=namespace, id=schedule_id, job_id=job_id, trigger=CronSpec("* * * * *"))


def full_schedule(schedule_id: str = "full", job_id: str = "nightly") -> Schedule:
    """A schedule with every field away from its default, times given in non-UTC zones."""
    berlin = ZoneInfo("Europe/Berlin")
    return Schedule(
        namespace=NS,
        id=schedule_id,
        job_id=job_id,
        trigger=AnyOfSpec(
            (
                CronSpec("*/5 9-17 * * mon-fri"),
                AllOfSpec(
                    (
                        IntervalSpec(timedelta(hours=1, seconds=0.5)),
                        DateSpec(
                            datetime(2030, 1, 2, 3, 4, 5, 600_000, tzinfo=timezone(timedelta(hours=-5)))
                        ),
                    )
                ),
            )
        ),
        time_zone="Europe/Berlin",
        description="Office hours",
        start_time=datetime(2030, 1, 1, 9, 0, tzinfo=berlin),
        end_time=datetime(2031, 1, 1, 9, 0, 0, 123_456, tzinfo=berlin),
        jitter=timedelta(seconds=7.25),
        misfire_policy=MisfirePolicy.RUN_ALL,
        catchup_window=timedelta(minutes=90),
        overlap_policy=OverlapPolicy.CANCEL_RUNNING,
        paused=True,
        pause_reason="maintenance",
        arguments={"date": "{{ scheduled_time }}", "n": [1, 2.5]},
        next_fire_time=datetime(2030, 1, 1, 8, 0, 0, 1, tzinfo=UTC),
    )


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.utcoffset() == timedelta(0)
    assert value.tzinfo is UTC


def without_output(resource: Job | Schedule) -> Job | Schedule:
    return dataclasses.replace(resource, create_time=None, update_time=None, etag="")


async def ids_of_all_pages(list_page) -> list[list[str]]:  # type: ignore[no-untyped-def]
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        listing = await list_page(Page(size=3, after=after))
        pages.append([item.id for item in listing.items])
        if listing.next_after is None:
            return pages
        assert listing.next_after == listing.items[-1].id
        after = listing.next_after


# Schema and URLs


def test_migrations_create_what_the_tables_describe(database_url: str) -> None:
    assert current_revision(database_url) == head_revision()
    engine = sa.create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_the_head_read_from_the_migrations_names_is_alembics() -> None:
    scripts = ScriptDirectory.from_config(alembic_config())
    assert head_revision() == scripts.get_current_head()
    for script in scripts.walk_revisions():
        assert script.path is not None
        assert Path(script.path).name.startswith(f"{script.revision}_"), script.path


def test_starting_on_a_database_at_the_head_migrates_nothing_and_leaves_alembic_unloaded(
    database_url: str,
) -> None:
    check = (
        "import sys\n"
        "from cronwire_server.storage.migrate import upgrade\n"
        f"upgrade({database_url!r})\n"
        "print('alembic' in sys.modules)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=True
    )
    assert ran.stdout.split() == ["False"], ran.stderr
    assert current_revision(database_url) == head_revision()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///cronwire.db", "sqlite+aiosqlite:///cronwire.db"),
        ("sqlite+aiosqlite:///a/b.db", "sqlite+aiosqlite:///a/b.db"),
        ("postgres://u:p%40ss@db:5432/cw", "postgresql+psycopg://u:p%40ss@db:5432/cw"),
        ("postgresql://u@db/cw?sslmode=require", "postgresql+psycopg://u@db/cw?sslmode=require"),
        ("postgresql+psycopg2://u@db/cw", "postgresql+psycopg://u@db/cw"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


def test_sync_url_keeps_the_database() -> None:
    assert sync_url("sqlite+aiosqlite:///x.db") == "sqlite+pysqlite:///x.db"
    assert sync_url("postgres://u:pw@db/cw") == "postgresql+psycopg://u:pw@db/cw"


def test_normalize_url_rejects_other_databases() -> None:
    with pytest.raises(ValueError, match="mysql"):
        normalize_url("mysql://u@db/cw")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
async def test_in_memory_sqlite_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="in-memory"):
        await open_store(url)


# Jobs


async def test_job_round_trips_every_field(store: SqlStore) -> None:
    job = full_job()
    created = await store.create_job(job)

    assert created is not job
    assert (job.create_time, job.etag) == (None, ""), "the argument must not be modified"
    assert without_output(created) == job
    assert_utc(created.create_time)
    assert created.update_time == created.create_time
    assert created.etag
    assert created.callback is not None
    assert created.callback.secret == "s3cr3t-hmac-key"
    assert await store.get_job(NS, "full") == created


async def test_job_defaults_round_trip(store: SqlStore) -> None:
    created = await store.create_job(make_job())
    assert without_output(created) == make_job()
    assert (created.timeout, created.retry_policy, created.callback) == (None, None, None)


async def test_duplicate_job_is_already_exists(store: SqlStore) -> None:
    await store.create_job(make_job())
    with pytest.raises(errors.AlreadyExists) as raised:
        await store.create_job(make_job(executor="http"))
    assert (raised.value.kind, raised.value.name) == ("job", f"namespaces/{NS}/jobs/nightly")
    assert (await store.get_job(NS, "nightly")).executor == "shell"


async def test_same_job_id_in_another_namespace_is_another_job(store: SqlStore) -> None:
    await store.create_job(make_job())
    await store.create_job(make_job(namespace="team-b", executor="http"))
    assert (await store.get_job("team-b", "nightly")).executor == "http"
    assert (await store.get_job(NS, "nightly")).executor == "shell"


async def test_get_missing_job_is_not_found(store: SqlStore) -> None:
    with pytest.raises(errors.NotFound) as raised:
        await store.get_job(NS, "nope")
    assert (raised.value.kind, raised.value.name) == ("job", f"namespaces/{NS}/jobs/nope")


async def test_request_id_returns_the_first_result(store: SqlStore) -> None:
    first = await store.create_job(make_job("a"), request_id="req-1")
    again = await store.create_job(make_job("b", executor="http"), request_id="req-1")

    assert again == first
    with pytest.raises(errors.NotFound):
        await store.get_job(NS, "b")
    # Request ids are per namespace.
    other = await store.create_job(make_job("a", namespace="team-b"), request_id="req-1")
    assert other.namespace == "team-b"


async def test_request_id_replays_the_job_as_it_is_now(store: SqlStore) -> None:
    first = await store.create_job(make_job("a"), request_id="req-1")
    updated = await store.update_job(make_job("a", executor="http"), expected_etag=first.etag)
    assert await store.create_job(make_job("a"), request_id="req-1") == updated


async def test_request_id_of_a_deleted_job_is_not_found(store: SqlStore) -> None:
    await store.create_job(make_job("a"), request_id="req-1")
    await store.delete_job(NS, "a")
    with pytest.raises(errors.NotFound):
        await store.create_job(make_job("a"), request_id="req-1")


async def test_failed_create_does_not_record_its_request_id(store: SqlStore) -> None:
    await store.create_job(make_job("a"))
    with pytest.raises(errors.AlreadyExists):
        await store.create_job(make_job("a"), request_id="req-1")
    created = await store.create_job(make_job("b"), request_id="req-1")
    assert created.id == "b"


async def test_request_id_used_for_another_method_is_invalid(store: SqlStore) -> None:
    await store.create_job(make_job("a"), request_id="req-1")
    with pytest.raises(errors.InvalidArgument):
        await store.create_schedule(make_schedule(job_id="a"), request_id="req-1")


async def test_concurrent_creates_with_one_request_id_make_one_job(store: SqlStore) -> None:
    results = await asyncio.gather(
        *(store.create_job(make_job(f"job-{i}"), request_id="req-1") for i in range(5))
    )

    assert all(result == results[0] for result in results)
    listing = await store.list_jobs(NS, Page(size=10))
    assert [job.id for job in listing.items] == [results[0].id]


async def test_concurrent_creates_with_one_request_id_make_one_schedule(store: SqlStore) -> None:
    await store.create_job(make_job())
    results = await asyncio.gather(
        *(store.create_schedule(make_schedule(f"s-{i}"), request_id="req-1") for i in range(5))
    )

    assert all(result == results[0] for result in results)
    listing = await store.list_schedules(NS, Page(size=10))
    assert [s.id for s in listing.items] == [results[0].id]


async def test_list_jobs_pages_in_id_order(store: SqlStore) -> None:
    for job_id in ["g", "c", "a", "e", "b", "f", "d"]:
        await store.create_job(make_job(job_id))
    await store.create_job(make_job("a", namespace="team-b"))

    pages = await ids_of_all_pages(lambda page: store.list_jobs(NS, page))

    assert pages == [["a", "b", "c"], ["d", "e", "f"], ["g"]]


async def test_list_jobs_last_full_page_has_no_cursor(store: SqlStore) -> None:
    for job_id in ["a", "b", "c"]:
        await store.create_job(make_job(job_id))
    listing = await store.list_jobs(NS, Page(size=3))
    assert [j.id for j in listing.items] == ["a", "b", "c"]
    assert listing.next_after is None
    assert (await store.list_jobs("empty", Page(size=3))).items == []


async def test_list_jobs_filters_by_executor(store: SqlStore) -> None:
    for i in range(8):
        await store.create_job(make_job(f"job-{i}", executor="http" if i % 2 else "shell"))

    pages = await ids_of_all_pages(lambda page: store.list_jobs(NS, page, executor="http"))

    assert pages == [["job-1", "job-3", "job-5"], ["job-7"]]


async def test_update_job_with_current_etag(store: SqlStore) -> None:
    created = await store.create_job(make_job())
    change = dataclasses.replace(full_job("nightly"), etag="ignored")

    updated = await store.update_job(change, expected_etag=created.etag)

    assert without_output(updated) == without_output(change)
    assert updated.etag not in ("", created.etag, "ignored")
    assert updated.create_time == created.create_time
    assert updated.update_time is not None
    assert created.update_time is not None
    assert updated.update_time >= created.update_time
    assert_utc(updated.update_time)
    assert await store.get_job(NS, "nightly") == updated


async def test_update_job_with_stale_etag_is_etag_mismatch(store: SqlStore) -> None:
    created = await store.create_job(make_job())
    await store.update_job(make_job(executor="http"), expected_etag=created.etag)
    with pytest.raises(errors.EtagMismatch):
        await store.update_job(make_job(executor="python"), expected_etag=created.etag)
    assert (await store.get_job(NS, "nightly")).executor == "http"


async def test_update_job_without_etag_is_unconditional(store: SqlStore) -> None:
    await store.create_job(make_job())
    updated = await store.update_job(make_job(executor="http"), expected_etag="")
    assert updated.executor == "http"


async def test_update_missing_job_is_not_found(store: SqlStore) -> None:
    with pytest.raises(errors.NotFound):
        await store.update_job(make_job(), expected_etag="whatever")


async def test_delete_job_cascades_to_its_schedules(store: SqlStore) -> None:
    await store.create_job(make_job("a"))
    await store.create_job(make_job("b"))
    for schedule_id, job_id in [("s1", "a"), ("s2", "a"), ("s3", "b")]:
        await store.create_schedule(make_schedule(schedule_id, job_id))

    await store.delete_job(NS, "a")

    with pytest.raises(errors.NotFound):
        await store.get_job(NS, "a")
    with pytest.raises(errors.NotFound):
        await store.get_schedule(NS, "s1")
    remaining = await store.list_schedules(NS, Page(size=10))
    assert [s.id for s in remaining.items] == ["s3"]


async def test_delete_job_checks_the_etag(store: SqlStore) -> None:
    created = await store.create_job(make_job())
    with pytest.raises(errors.EtagMismatch):
        await store.delete_job(NS, "nightly", expected_etag="stale")
    await store.delete_job(NS, "nightly", expected_etag=created.etag)
    with pytest.raises(errors.NotFound):
        await store.delete_job(NS, "nightly")


# Schedules


async def test_schedule_round_trips_every_field(store: SqlStore) -> None:
    await store.create_job(make_job())
    schedule = full_schedule()

    created = await store.create_schedule(schedule)

    assert (schedule.create_time, schedule.etag) == (None, ""), "the argument must not be modified"
    assert without_output(created) == schedule  # aware datetimes compare as instants
    for value in (created.start_time, created.end_time, created.next_fire_time, created.create_time):
        assert_utc(value)
    assert created.etag
    assert await store.get_schedule(NS, "full") == created


async def test_schedule_for_missing_job_is_not_found(store: SqlStore) -> None:
    with pytest.raises(errors.NotFound) as raised:
        await store.create_schedule(make_schedule(job_id="ghost"))
    assert (raised.value.kind, raised.value.name) == ("job", f"namespaces/{NS}/jobs/ghost")


async def test_schedule_job_must_be_in_its_namespace(store: SqlStore) -> None:
    await store.create_job(make_job(namespace="team-b"))
    with pytest.raises(errors.NotFound):
        await store.create_schedule(make_schedule())


async def test_duplicate_schedule_is_already_exists(store: SqlStore) -> None:
    await store.create_job(make_job())
    await store.create_schedule(make_schedule())
    with pytest.raises(errors.AlreadyExists) as raised:
        await store.create_schedule(make_schedule())
    assert (raised.value.kind, raised.value.name) == ("schedule", f"namespaces/{NS}/schedules/every-minute")


async def test_get_missing_schedule_is_not_found(store: SqlStore) -> None:
    with pytest.raises(errors.NotFound) as raised:
        await store.get_schedule(NS, "nope")
    assert (raised.value.kind, raised.value.name) == ("schedule", f"namespaces/{NS}/schedules/nope")


async def test_schedule_request_id_returns_the_first_result(store: SqlStore) -> None:
    await store.create_job(make_job())
    first = await store.create_schedule(make_schedule("s1"), request_id="req-1")
    assert await store.create_schedule(make_schedule("s2"), request_id="req-1") == first


async def test_list_schedules_pages_and_filters_by_job(store: SqlStore) -> None:
    await store.create_job(make_job("a"))
    await store.create_job(make_job("b"))
    for i in range(9):
        await store.create_schedule(make_schedule(f"s{i}", "a" if i % 3 else "b"))

    all_pages = await ids_of_all_pages(lambda page: store.list_schedules(NS, page))
    a_pages = await ids_of_all_pages(lambda page: store.list_schedules(NS, page, job_id="a"))

    assert all_pages == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6", "s7", "s8"]]
    assert a_pages == [["s1", "s2", "s4"], ["s5", "s7", "s8"]]


async def test_update_schedule_with_current_etag(store: SqlStore) -> None:
    await store.create_job(make_job())
    await store.create_job(make_job("other"))
    created = await store.create_schedule(make_schedule("full"))
    change = full_schedule(job_id="other")

    updated = await store.update_schedule(change, expected_etag=created.etag)

    assert without_output(updated) == change
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time
    assert await store.get_schedule(NS, "full") == updated


async def test_update_schedule_errors(store: SqlStore) -> None:
    await store.create_job(make_job())
    created = await store.create_schedule(make_schedule())
    paused = dataclasses.replace(make_schedule(), paused=True, pause_reason="x")
    await store.update_schedule(paused, expected_etag=created.etag)

    with pytest.raises(errors.EtagMismatch):
        await store.update_schedule(make_schedule(), expected_etag=created.etag)
    with pytest.raises(errors.NotFound) as raised:
        await store.update_schedule(make_schedule("nope"), expected_etag=created.etag)
    assert raised.value.kind == "schedule"
    with pytest.raises(errors.NotFound) as raised:
        await store.update_schedule(make_schedule(job_id="ghost"), expected_etag="")
    assert raised.value.kind == "job"
    assert (await store.get_schedule(NS, "every-minute")).paused


async def test_delete_schedule(store: SqlStore) -> None:
    await store.create_job(make_job())
    created = await store.create_schedule(make_schedule())
    with pytest.raises(errors.EtagMismatch):
        await store.delete_schedule(NS, "every-minute", expected_etag="stale")
    await store.delete_schedule(NS, "every-minute", expected_etag=created.etag)
    with pytest.raises(errors.NotFound):
        await store.get_schedule(NS, "every-minute")
    with pytest.raises(errors.NotFound):
        await store.delete_schedule(NS, "every-minute")
    await store.get_job(NS, "nightly")  # the job stays


# Durability and availability


async def test_data_survives_a_restart(database_url: str) -> None:
    store = await open_store(database_url)
    try:
        job = await store.create_job(full_job("nightly"), request_id="req-1")
        schedule = await store.create_schedule(full_schedule())
    finally:
        await store.close()

    reopened = await open_store(database_url)
    try:
        assert await reopened.get_job(NS, "nightly") == job
        assert await reopened.get_schedule(NS, "full") == schedule
        assert await reopened.create_job(make_job("other"), request_id="req-1") == job
    finally:
        await reopened.close()


async def test_ping(store: SqlStore) -> None:
    await store.ping()


def _unreachable_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'no-such-directory' / 'cronwire.db'}"
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/cronwire?connect_timeout=5"


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_unreachable_database_is_storage_unavailable(backend: str, tmp_path: Path) -> None:
    store = await open_store(_unreachable_url(backend, tmp_path))
    try:
        with pytest.raises(errors.StorageUnavailable):
            await store.ping()
        with pytest.raises(errors.StorageUnavailable):
            await store.create_job(make_job())
        with pytest.raises(errors.StorageUnavailable):
            await store.list_jobs(NS, Page(size=1))
    finally:
        await store.close()


async def test_cancelled_calls_leave_the_pool_usable(database_url: str) -> None:
    # One connection, so a connection left mid-transaction or mid-query would break the next call.
    store = await open_store(database_url, pool_size=1, max_overflow=0)
    try:
        await store.create_job(make_job("base"))
        # Cancel at a different point of the call each time: before, inside and after its
        # transaction (a cancelled create may or may not have happened; either is fine).
        for steps in range(0, 100, 5):
            task = asyncio.create_task(store.create_job(make_job(f"job-{steps}"), request_id=f"req-{steps}"))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            created = await store.create_job(make_job(f"after-{steps}"), request_id=f"req-after-{steps}")
            assert await store.get_job(NS, created.id) == created
    finally:
        await store.close()


def _admin_connection(database: str | None = None) -> psycopg.Connection[Any]:
    server = make_url(os.environ[POSTGRES_URL_ENV]).set(drivername="postgresql")
    if database:
        server = server.set(database=database)
    return psycopg.connect(server.render_as_string(hide_password=False), autocommit=True)


async def _wait_for_lock_waiter(database: str) -> int:
    """The pid of the session on `database` waiting for a row lock (polled, 10 s at most)."""
    async with asyncio.timeout(10):
        while True:
            with _admin_connection() as conn:
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                    (database,),
                ).fetchone()
            if row:
                return int(row[0])
            await asyncio.sleep(0.02)


@pytest.mark.postgres
@pytest.mark.parametrize("call", ["update", "delete"])
async def test_connection_lost_inside_a_transaction_is_storage_unavailable(
    fresh_database_url: Any, call: str
) -> None:
    """The database ends the connection in the middle of a transaction (a restart, a failover,
    pg_terminate_backend): the call fails as "unavailable", which callers retry, not with the
    rollback's own error; the store reconnects for the next call."""
    url = fresh_database_url("postgres")
    database = str(make_url(url).database)
    store = await open_store(url, pool_size=1)
    try:
        job = await store.create_job(make_job("base"))
        with _admin_connection(database) as locker:
            locker.execute("BEGIN")
            locker.execute("SELECT 1 FROM jobs WHERE id = 'base' FOR UPDATE")
            if call == "update":
                task = asyncio.create_task(store.update_job(job, expected_etag=""))
            else:
                task = asyncio.create_task(store.delete_job(NS, "base"))
            waiter = await _wait_for_lock_waiter(database)
            locker.execute("SELECT pg_terminate_backend(%s)", (waiter,))
            with pytest.raises(errors.StorageUnavailable):
                await task
            locker.execute("ROLLBACK")
        await store.ping()
        assert await store.get_job(NS, "base") == job  # nothing half-done
        assert await store.create_job(make_job("after"), limit=10) == await store.get_job(NS, "after")
    finally:
        await store.close()
