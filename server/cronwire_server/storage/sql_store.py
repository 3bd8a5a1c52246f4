"""`Store` on SQLAlchemy asyncio: aiosqlite for SQLite, psycopg 3 for PostgreSQL.

SQLAlchemy Core only, no ORM identity map or unit of work to pay for: most calls
are one autocommitted statement, one round trip.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from cronwire_server.core import errors
from cronwire_server.core.arguments import checked_arguments
from cronwire_server.core.model import (
    Calendar,
    ClusterStatus,
    Event,
    EventFilter,
    EventType,
    Execution,
    ExecutionState,
    ExecutionTrigger,
    Job,
    JsonObject,
    Listing,
    Page,
    Replica,
    RetentionPolicy,
    Schedule,
    SkipReason,
)
from cronwire_server.core.names import execution_name, format_name, job_name, schedule_name
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.limits import NamespaceFull
from cronwire_server.storage import (
    sql_backfill,
    sql_calendars,
    sql_callbacks,
    sql_creates,
    sql_dispatch,
    sql_engine,
    sql_events,
    sql_kept_calendars,
    sql_logs,
    sql_paging,
    sql_queue,
    sql_remote,
    sql_replicas,
    sql_retention,
    sql_steps,
)
from cronwire_server.storage import sql_executions as ex
from cronwire_server.storage.base import (
    ClaimedExecution,
    DispatchResult,
    EventPage,
    ExecutionFilter,
    LeaseRenewal,
    Planner,
    QueueSummary,
    RetryPlanner,
    StartNow,
)
from cronwire_server.storage.records import (
    calendar_from_record,
    execution_from_row,
    job_fields,
    job_from_record,
    job_with_stats,
    rows_to_executions,
    schedule_fields,
    schedule_from_record,
    schedule_with_stats,
    trigger_from_json,
    trigger_to_json,
)
from cronwire_server.storage.remote import HeldRemoteLease, RemoteTake, RemoteTaken
from cronwire_server.storage.sql_driver import PreparedStatement
from cronwire_server.storage.sql_engine import (
    FINISH_SESSION_OPTIONS,
    PENDING_EVENTS,
    QUEUE_SESSION_OPTIONS,
    create_engine,
    create_queue_engine,
    database_now,
    engine_options,
    instrument,
    normalize_url,
    rollback,
    stamp_time,
    sync_url,
    unavailable_on_connection_errors,
)
from cronwire_server.storage.sql_jobs import (
    GET_JOB,
    GET_JOB_WITH_STATS,
    JOBS_WITH_STATS,
    Key,
    raise_missing_or_changed,
    resource_event,
)
from cronwire_server.storage.sql_reads import BatchedKeyReads
from cronwire_server.storage.sql_schedules import (
    GET_SCHEDULE,
    GET_SCHEDULE_WITH_STATS,
    SCHEDULES_WITH_STATS,
    raise_schedule_conflict,
)
from cronwire_server.storage.sql_wire import WireConnection
from cronwire_server.storage.tables import (
    calendars,
    executions,
    jobs,
    namespace_usage,
    request_ids,
    schedules,
)
from cronwire_server.storage.wakeup import LocalWakeup, PostgresWakeup
from cronwire_server.supervisor import Supervisor

__all__ = [
    "SqlStore",
    "create_engine",
    "normalize_url",
    "open_store",
    "sync_url",
    "trigger_from_json",
    "trigger_to_json",
]

T = TypeVar("T")

# How long a lease renewal may take to connect, be acknowledged or run, in seconds.
RENEWAL_TIMEOUT = 5


class _BlockingRenewals:
    """`BlockingRenewals` on a blocking engine of its own (one connection), on the store's database."""

    def __init__(self, url: str) -> None:
        parsed = make_url(sync_url(url))
        # A database that stops answering fails the renewal (retried at the next heartbeat) instead
        # of hanging the thread: a connect, a peer that stops acknowledging (a dead network; TCP
        # alone would wait many minutes) or a statement (a row lock held by a stuck transaction)
        # each give up after RENEWAL_TIMEOUT.
        seconds = RENEWAL_TIMEOUT
        self._engine = sa.create_engine(
            parsed,
            **engine_options(
                parsed,
                1,
                0,
                connect_timeout=seconds,
                tcp_user_timeout=seconds * 1000,
                keepalives_idle=seconds,
                keepalives_interval=1,
                keepalives_count=3,
                options=f"-c statement_timeout={seconds * 1000}",
            ),
        )
        instrument(self._engine)

    def renew(self, worker: str, execution_ids: list[str], lease: timedelta) -> LeaseRenewal:
        # Autocommit: the UPDATE alone is atomic, and the lease runs from just before it.
        with unavailable_on_connection_errors(), self._engine.connect() as conn:
            return sql_queue.renew(conn, worker, execution_ids, lease, database_now(conn))

    def close(self) -> None:
        self._engine.dispose()


async def open_store(url: str, *, pool_size: int = 20, max_overflow: int = 0) -> SqlStore:
    # No overflow: connections opened and closed under load lose their prepared statements.
    """A store on a migrated database (see `storage.migrate.upgrade`). Connects lazily."""
    return SqlStore(create_engine(url, pool_size=pool_size, max_overflow=max_overflow))


def _new_etag() -> str:
    return secrets.token_hex(8)


def _stamp(fields: dict[str, Any], now: Any) -> dict[str, Any]:
    """`fields` plus what every write sets: a new etag and the update time."""
    return {**fields, "update_time": now, "etag": _new_etag()}


# ListNamespaces: what each namespace holds, from the counter rows the quota keeps (no count
# over the tables).
_NAMESPACE_USAGE = sa.select(namespace_usage).where(namespace_usage.c.used > 0)

# Built once: the hot path only binds values.
_RECORD_REQUEST = sa.insert(request_ids).values(
    namespace=sa.bindparam("request_namespace"),
    request_id=sa.bindparam("request_id"),
    method=sa.bindparam("request_method"),
    resource_id=sa.bindparam("request_resource_id"),
    create_time=sa.bindparam("request_create_time"),
)
_GET_EXECUTION = sa.select(executions).where(
    executions.c.namespace == sa.bindparam("namespace"), executions.c.id == sa.bindparam("id")
)


# Primary-key reads: on PostgreSQL, those that arrive together go as one prepared statement
# (`BatchedKeyReads`); each is the read of its table's rows from the base statement.
_PK_READS: dict[sa.Select[Any], tuple[sa.Select[Any], sa.Table]] = {
    GET_JOB: (sa.select(jobs), jobs),
    GET_JOB_WITH_STATS: (JOBS_WITH_STATS, jobs),
    GET_SCHEDULE: (sa.select(schedules), schedules),
    GET_SCHEDULE_WITH_STATS: (SCHEDULES_WITH_STATS, schedules),
    _GET_EXECUTION: (sa.select(executions), executions),
}


# A delete locks its namespace's counts (see SqlStore._delete).
_LOCK_USAGE = (
    sa.select(namespace_usage.c.kind)
    .where(
        namespace_usage.c.namespace == sa.bindparam("namespace"),
        namespace_usage.c.kind.in_(sa.bindparam("kinds", expanding=True)),
    )
    .order_by(namespace_usage.c.kind)
    .with_for_update()
)


def _request_params(values: dict[str, Any], request_id: str, method: str) -> dict[str, Any]:
    return {
        **values,
        "request_namespace": values["namespace"],
        "request_id": request_id,
        "request_method": method,
        "request_resource_id": values["id"],
        "request_create_time": values["create_time"],
    }


# ---------------------------------------------------------------------------
# The store


class SqlStore:
    """`Store` on one SQLAlchemy async engine; owns the engine and disposes it on close.

    Each call's database work is plain synchronous SQLAlchemy Core code run in one
    greenlet on the async driver (what `AsyncConnection.run_sync` does), rather than
    the async facade, which bridges every checkout, execute and release on its own
    and costs about a third more CPU per call.

    The engine autocommits: a single statement is its own transaction, with no
    BEGIN/COMMIT round trips. `_transaction` opens an explicit one where several
    statements must be atomic.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sync = engine.sync_engine
        self._postgres = engine.dialect.name == "postgresql"
        # SQLite: take the write lock at BEGIN, so busy_timeout applies and a reader never
        # fails to upgrade to a writer halfway through.
        self._begin = "BEGIN" if self._postgres else "BEGIN IMMEDIATE"
        # Creates waiting for the batch in flight go in together with the next (sql_creates).
        self._creates: dict[str, sql_creates.GroupCommit[sql_creates.Create, sql_creates.Create]] = {
            "job": sql_creates.GroupCommit(self._commit_creates),
            "schedule": sql_creates.GroupCommit(self._commit_creates),
        }
        # RunJob calls likewise: those that arrive together share a transaction.
        self._runs: sql_creates.GroupCommit[_Run, dict[str, Any]] = sql_creates.GroupCommit(self._commit_runs)
        # Whether the last claim saw executions that need an admission decision (PostgreSQL).
        self._admitting = False
        # The same for the last take of remote work.
        self._remote_admitting = False
        # Claims and remote takes: on sessions that never plan a bitmap scan, so that they read
        # the queue by its index in due order (sql_engine.QUEUE_SESSION_OPTIONS).
        self._queue = create_queue_engine(engine) if self._postgres else engine
        url = engine.url.render_as_string(hide_password=False)
        # PostgreSQL: connections of their own, sent to from the event loop (`sql_wire`), for
        # the primary-key reads and for the statements of every run (a plain claim, a plain
        # finish, the events' numbering), each kind on its own so none waits behind another.
        self._read_connection = WireConnection(url, self._sync, resend=True) if self._postgres else None
        self._hot: _HotStatements | None = _HotStatements(url, engine) if self._postgres else None
        # Batches of creates, each a transaction of prepared statements (`sql_creates`), on a
        # connection of their own: one batch at a time.
        self._creates_connection = WireConnection(url, self._sync, resend=False) if self._postgres else None
        self._prepared_statements: dict[Any, PreparedStatement] = {}
        self._key_reads = (
            {
                single: BatchedKeyReads(base, table, engine.dialect, self._read_connection.fetch)
                for single, (base, table) in _PK_READS.items()
            }
            if self._read_connection is not None
            else {}
        )
        self._wakeup: LocalWakeup = (
            PostgresWakeup(engine.url.render_as_string(hide_password=False))
            if self._postgres
            else LocalWakeup()
        )

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def queue_engine(self) -> AsyncEngine:
        """The engine of claims and remote takes (PostgreSQL: sessions that never plan a bitmap
        scan; SQLite: the store's engine)."""
        return self._queue

    async def close(self) -> None:
        await self._wakeup.close()
        if self._read_connection is not None:
            await self._read_connection.close()
        if self._hot is not None:
            await self._hot.close()
        if self._creates_connection is not None:
            await self._creates_connection.close()
        if self._queue is not self._engine:
            await self._queue.dispose()
        await self._engine.dispose()

    async def ping(self) -> None:
        await self._run(self._execute, sa.text("SELECT 1"), {})

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        """Run synchronous database `work` on the async driver, connection errors translated."""
        with unavailable_on_connection_errors():
            return await greenlet_spawn(work, *args)

    # Synchronous building blocks, run through `_run`.

    def _execute(self, statement: sa.Executable, params: dict[str, Any]) -> None:
        with self._sync.connect() as conn:
            conn.execute(statement, params)

    async def _read_by_key(
        self, statement: sa.Select[Any], namespace: str, key_id: str
    ) -> Mapping[Any, Any] | None:
        """One of `_PK_READS`: on PostgreSQL batched, prepared, on the reads' own connection
        (`sql_reads`); through SQLAlchemy on SQLite."""
        reads = self._key_reads.get(statement)
        if reads is not None:
            return await reads.read(namespace, key_id)
        return await self._run(self._mapping_or_none, statement, {"namespace": namespace, "id": key_id})

    def _mapping_or_none(self, statement: sa.Executable, params: dict[str, Any]) -> Mapping[Any, Any] | None:
        with self._sync.connect() as conn:
            row = conn.execute(statement, params).one_or_none()
            return None if row is None else row._mapping

    def _one_or_none(self, statement: sa.Executable, params: dict[str, Any]) -> Row[Any] | None:
        with self._sync.connect() as conn:
            return conn.execute(statement, params).one_or_none()

    def _all(self, statement: sa.Executable) -> Sequence[Row[Any]]:
        with self._sync.connect() as conn:
            return conn.execute(statement).all()

    @contextmanager
    def _transaction(self, actor: str = "", *, engine: sa.Engine | None = None) -> Iterator[Connection]:
        """BEGIN ... COMMIT; events the work queued (`sql_executions.emit`) are written last,
        credited to `actor` (the API key of the call; "" for the scheduler's own work). On the
        store's engine unless `engine` is given."""
        with (engine or self._sync).connect() as conn:
            conn.exec_driver_sql(self._begin)
            conn.info[PENDING_EVENTS] = []
            try:
                yield conn
                pending = conn.info.pop(PENDING_EVENTS)
                sql_events.insert(conn, [{**e, "actor": actor} for e in pending] if actor else pending)
            except Exception:
                rollback(conn)
                raise
            conn.exec_driver_sql("COMMIT")

    async def _commit_creates(
        self, creates: list[sql_creates.Create]
    ) -> list[sql_creates.Create | Exception]:
        """One transaction for the batch; if it fails for a reason one create may cause (not the
        database being unavailable), each create again alone, so that reason fails only its own."""
        try:
            await self._commit_batch(creates)
            return list(creates)
        except errors.StorageUnavailable:
            raise
        except Exception:
            if len(creates) == 1:
                raise
        results: list[sql_creates.Create | Exception] = []
        for create in creates:
            create.outcome = sql_creates.Outcome.PENDING
            try:
                await self._commit_batch([create])
                results.append(create)
            except Exception as error:
                results.append(error)
        return results

    async def _commit_batch(self, creates: list[sql_creates.Create]) -> None:
        if self._creates_connection is not None:
            steps = sql_creates.create_steps(creates, postgres=True)
            async with self._creates_connection.transaction() as fetch:
                await sql_steps.run_on(fetch, self._prepared, steps)
        else:
            await self._run(self._commit_in_transaction, creates)

    def _commit_in_transaction(self, creates: list[sql_creates.Create]) -> None:
        with self._transaction() as conn:
            sql_creates.commit(conn, creates)

    def _prepared(self, statement: sa.Select[Any] | sa.TextualSelect) -> PreparedStatement:
        prepared = self._prepared_statements.get(statement)
        if prepared is None:
            prepared = PreparedStatement(statement, self._engine.dialect)
            self._prepared_statements[statement] = prepared
        return prepared

    async def _create(self, create: sql_creates.Create) -> datetime | str:
        """The create time of the row `create` inserted, or the id of the resource its request id
        created before (a retry); else the error why neither."""
        done = await self._creates[create.kind].submit(create)
        if done.outcome is sql_creates.Outcome.CREATED:
            assert done.created_at is not None
            self._wakeup.signal("events_new")
            return done.created_at
        name = format_name(create.kind, create.namespace, create.values["id"])
        if done.outcome is sql_creates.Outcome.NO_JOB:
            raise errors.NotFound("job", job_name(create.namespace, create.values["job_id"]))
        if done.outcome is sql_creates.Outcome.STALE_CALENDARS:
            raise errors.CalendarsChanged(name)
        # A retry of a create that got in gets what it created, whatever stops it now.
        if create.request_id:
            replay = await self._recorded_resource(create.namespace, create.request_id, create.method)
            if replay is not None:
                return replay
        if done.outcome is sql_creates.Outcome.FULL:
            raise NamespaceFull(create.kind, create.namespace, create.limit)
        raise errors.AlreadyExists(create.kind, name)

    def _update(
        self,
        table: sa.Table,
        key: Key,
        values: dict[str, Any],
        expected_etag: str,
        event_type: EventType,
        actor: str,
        check: Callable[[Connection], None] | None = None,
    ) -> Row[Any]:
        """UPDATE ... RETURNING the row and write its event, if the etag matches; else NotFound or
        EtagMismatch. `check` runs first in the transaction (and may refuse the update)."""
        statement = sa.update(table).where(*key.match(table, expected_etag)).values(values)
        with self._transaction() as conn:
            if check is not None:
                check(conn)
            row = conn.execute(statement.returning(*table.c)).one_or_none()
            if row is None:
                raise_missing_or_changed(conn, table, key)
            # The update time the row got (the database's clock on PostgreSQL, see stamp_time).
            event = resource_event(event_type, key, row._mapping, row.update_time, actor)
            sql_events.insert(conn, [event])
        return row

    def _delete(
        self, table: sa.Table, key: Key, expected_etag: str, event_type: EventType, actor: str
    ) -> None:
        with self._transaction() as conn:
            if self._postgres:
                # The namespace's counts first, in the order creates take them (see sql_creates).
                kinds = ["job", "schedule"] if table is jobs else ["schedule"]
                conn.execute(_LOCK_USAGE, {"namespace": key.namespace, "kinds": kinds})
            now = self._now_of(conn)
            cascaded: list[dict[str, Any]] = []
            if table is jobs:
                # Its schedules go with it (ON DELETE CASCADE); each gets its event too.
                doomed = conn.execute(
                    sa.select(schedules).where(
                        schedules.c.namespace == key.namespace, schedules.c.job_id == key.id
                    )
                ).all()
                cascaded = [
                    resource_event(
                        EventType.SCHEDULE_DELETED,
                        Key("schedule", key.namespace, r.id),
                        r._mapping,
                        now,
                        actor,
                    )
                    for r in doomed
                ]
            row = conn.execute(
                sa.delete(table).where(*key.match(table, expected_etag)).returning(*table.c)
            ).one_or_none()
            if row is None:
                raise_missing_or_changed(conn, table, key)
            sql_events.insert(conn, [*cascaded, resource_event(event_type, key, row._mapping, now, actor)])

    @staticmethod
    def _now_of(conn: Connection) -> datetime:
        return database_now(conn)

    async def _recorded_resource(self, namespace: str, request_id: str, method: str) -> str | None:
        """The id of what the request with `request_id` created, None if it is not recorded."""
        recorded: str | None = await self._run(
            self._read, sql_creates.recorded, namespace, request_id, method
        )
        return recorded

    async def _page(
        self, query: sa.Select[Any], id_column: sa.Column[Any], page: Page
    ) -> tuple[Sequence[Row[Any]], str | None]:
        """Keyset paging: the rows after the cursor in id order, cut by their size
        (`sql_paging`), and the next cursor if more follow.

        One row more than asked for tells whether more follow without a COUNT.
        """
        if page.after:
            query = query.where(id_column > page.after)
        sized = sql_paging.sized_page(query, ((id_column.name, False),), page.size, postgres=self._postgres)
        rows, more = sql_paging.kept(await self._run(self._all, sized), page.size)
        return rows, str(rows[-1].id) if more else None

    # Jobs

    async def create_job(self, job: Job, *, request_id: str = "", limit: int = 0, actor: str = "") -> Job:
        now = datetime.now(UTC)  # SQLite's stamp; PostgreSQL stamps the row with its own clock
        values = {"namespace": job.namespace, "id": job.id, "create_time": now}
        values.update(_stamp(job_fields(job), now))
        key = Key("job", job.namespace, job.id)
        event = resource_event(EventType.JOB_CREATED, key, values, now, actor)
        created = await self._create(sql_creates.Create("job", values, event, request_id, "CreateJob", limit))
        if isinstance(created, str):
            return await self.get_job(job.namespace, created)
        return job_from_record({**values, "create_time": created, "update_time": created})

    async def get_job(self, namespace: str, job_id: str, *, with_stats: bool = False) -> Job:
        query = GET_JOB_WITH_STATS if with_stats else GET_JOB
        row = await self._read_by_key(query, namespace, job_id)
        if row is None:
            raise errors.NotFound("job", job_name(namespace, job_id))
        return job_with_stats(row) if with_stats else job_from_record(row)

    async def list_jobs(
        self, namespace: str, page: Page, *, executor: str = "", with_stats: bool = False
    ) -> Listing[Job]:
        query = (JOBS_WITH_STATS if with_stats else sa.select(jobs)).where(jobs.c.namespace == namespace)
        if executor:
            query = query.where(jobs.c.executor == executor)
        rows, next_after = await self._page(query, jobs.c.id, page)
        to_job = job_with_stats if with_stats else job_from_record
        return Listing(items=[to_job(r._mapping) for r in rows], next_after=next_after)

    async def update_job(self, job: Job, *, expected_etag: str, actor: str = "") -> Job:
        key = Key("job", job.namespace, job.id)
        values = _stamp(job_fields(job), stamp_time(self._postgres))
        row = await self._run(self._update, jobs, key, values, expected_etag, EventType.JOB_UPDATED, actor)
        self._wakeup.signal("events_new")
        return job_from_record(row._mapping)

    async def delete_job(
        self, namespace: str, job_id: str, *, expected_etag: str = "", actor: str = ""
    ) -> None:
        # The schedules go with it: ON DELETE CASCADE, in this same statement.
        key = Key("job", namespace, job_id)
        await self._run(self._delete, jobs, key, expected_etag, EventType.JOB_DELETED, actor)
        self._wakeup.signal("events_new")

    # Schedules

    async def create_schedule(
        self, schedule: Schedule, *, request_id: str = "", limit: int = 0, actor: str = ""
    ) -> Schedule:
        now = datetime.now(UTC)  # SQLite's stamp; PostgreSQL stamps the row with its own clock
        values = {"namespace": schedule.namespace, "id": schedule.id, "create_time": now}
        values.update(_stamp(schedule_fields(schedule), now))
        key = Key("schedule", schedule.namespace, schedule.id)
        event = resource_event(EventType.SCHEDULE_CREATED, key, values, now, actor)
        created = await self._create(
            sql_creates.Create("schedule", values, event, request_id, "CreateSchedule", limit)
        )
        if isinstance(created, str):
            return await self.get_schedule(schedule.namespace, created)
        await self._schedules_changed()
        return schedule_from_record({**values, "create_time": created, "update_time": created})

    async def get_schedule(self, namespace: str, schedule_id: str, *, with_stats: bool = False) -> Schedule:
        query = GET_SCHEDULE_WITH_STATS if with_stats else GET_SCHEDULE
        row = await self._read_by_key(query, namespace, schedule_id)
        if row is None:
            raise errors.NotFound("schedule", schedule_name(namespace, schedule_id))
        return schedule_with_stats(row) if with_stats else schedule_from_record(row)

    async def namespace_counts(self) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        for row in await self._run(self._all, _NAMESPACE_USAGE):
            job_count, schedule_count = counts.get(row.namespace, (0, 0))
            if row.kind == "job":
                job_count = row.used
            elif row.kind == "schedule":
                schedule_count = row.used
            counts[row.namespace] = (job_count, schedule_count)
        return counts

    async def list_schedules(
        self, namespace: str, page: Page, *, job_id: str = "", with_stats: bool = False
    ) -> Listing[Schedule]:
        query = SCHEDULES_WITH_STATS if with_stats else sa.select(schedules)
        query = query.where(schedules.c.namespace == namespace)
        if job_id:
            query = query.where(schedules.c.job_id == job_id)
        rows, next_after = await self._page(query, schedules.c.id, page)
        to_schedule = schedule_with_stats if with_stats else schedule_from_record
        return Listing(items=[to_schedule(r._mapping) for r in rows], next_after=next_after)

    async def schedules_with_calendars(
        self, namespace: str, job_ids: Sequence[str], before: datetime | None = None
    ) -> list[Schedule]:
        query = sa.select(schedules).where(
            schedules.c.namespace == namespace,
            schedules.c.job_id.in_(job_ids),
            schedules.c.paused.is_(False),
            schedules.c.calendars.is_not(None),
            schedules.c.next_fire_time.is_not(None),
        )
        if before is not None:
            query = query.where(schedules.c.next_fire_time < before)
        rows = await self._run(self._all, query.order_by(schedules.c.job_id, schedules.c.id))
        return [schedule_from_record(r._mapping) for r in rows]

    async def update_schedule(
        self,
        schedule: Schedule,
        *,
        expected_etag: str,
        event_type: EventType = EventType.SCHEDULE_UPDATED,
        actor: str = "",
    ) -> Schedule:
        key = Key("schedule", schedule.namespace, schedule.id)
        values = _stamp(schedule_fields(schedule), stamp_time(self._postgres))
        kept = values["calendars"]

        def calendars_current(conn: Connection) -> None:
            # The calendars kept with the schedule are still those stored (locked until commit).
            if kept and not sql_kept_calendars.unchanged(conn, [(schedule.namespace, kept)])[0]:
                raise errors.CalendarsChanged(key.name)

        try:
            row = await self._run(
                self._update, schedules, key, values, expected_etag, event_type, actor, calendars_current
            )
        except exc.IntegrityError as error:  # moved to a job that does not exist
            raise_schedule_conflict(error, schedule)
        await self._schedules_changed()
        return schedule_from_record(row._mapping)

    async def delete_schedule(
        self, namespace: str, schedule_id: str, *, expected_etag: str = "", actor: str = ""
    ) -> None:
        key = Key("schedule", namespace, schedule_id)
        await self._run(self._delete, schedules, key, expected_etag, EventType.SCHEDULE_DELETED, actor)
        self._wakeup.signal("events_new")

    async def _schedules_changed(self) -> None:
        """Wake the dispatchers: a schedule's next fire time may be earlier now."""
        if self._postgres:
            await self._run(self._execute, sa.text("NOTIFY cronwire_schedules"), {})
        self._wakeup.signal("schedules")
        self._wakeup.signal("events_new")

    # Calendars

    async def create_calendar(self, calendar: Calendar, *, request_id: str = "", actor: str = "") -> Calendar:
        created = await self._run(self._in_transaction_by, actor, sql_calendars.create, calendar, request_id)
        if isinstance(created, str):
            return await self.get_calendar(calendar.namespace, created)
        return calendar_from_record(created._mapping)

    async def get_calendar(self, namespace: str, calendar_id: str) -> Calendar:
        return await self._run(self._read, sql_calendars.get, namespace, calendar_id)

    async def list_calendars(self, namespace: str, page: Page) -> Listing[Calendar]:
        query = sa.select(calendars).where(calendars.c.namespace == namespace)
        rows, next_after = await self._page(query, calendars.c.id, page)
        return Listing(items=[calendar_from_record(r._mapping) for r in rows], next_after=next_after)

    async def namespace_calendars(self, namespace: str) -> dict[str, Calendar]:
        return await self._run(self._read, sql_calendars.of_namespace, namespace)

    async def update_calendar(
        self,
        calendar: Calendar,
        *,
        expected_etag: str,
        replan: Callable[[Schedule, datetime], Schedule],
        actor: str = "",
    ) -> Calendar:
        row = await self._run(
            self._in_transaction_by, actor, sql_calendars.update, calendar, expected_etag, replan
        )
        await self._schedules_changed()  # a re-planned next fire time may be earlier now
        return calendar_from_record(row._mapping)

    async def delete_calendar(
        self, namespace: str, calendar_id: str, *, expected_etag: str = "", actor: str = ""
    ) -> None:
        await self._run(
            self._in_transaction_by, actor, sql_calendars.delete, namespace, calendar_id, expected_etag
        )

    # The clock and wake-ups

    async def now(self) -> datetime:
        return await self._run(self._now)

    def _now(self) -> datetime:
        with self._sync.connect() as conn:
            return database_now(conn)

    def supervise_listener(self, supervisor: Supervisor) -> None:
        """With PostgreSQL, run the LISTEN connection that brings other replicas' wake-ups as one
        of `supervisor`'s loops (call before the first use of `wakeup`)."""
        if isinstance(self._wakeup, PostgresWakeup):
            self._wakeup.supervised_by(supervisor)

    @property
    def wakeup(self) -> LocalWakeup:
        if isinstance(self._wakeup, PostgresWakeup):
            self._wakeup.start()
        return self._wakeup

    def _in_transaction(self, work: Callable[..., T], *args: Any) -> T:
        return self._in_transaction_by("", work, *args)

    def _in_transaction_by(self, actor: str, work: Callable[..., T], *args: Any) -> T:
        with self._transaction(actor) as conn:
            result = work(conn, *args, database_now(conn))
            wrote_events = bool(conn.info.get(PENDING_EVENTS))
        if wrote_events:
            self._wakeup.signal("events_new")
        return result

    # The dispatcher

    async def dispatch_due(
        self, planner: Planner, *, limit: int, start: StartNow | None = None
    ) -> DispatchResult:
        result: DispatchResult = await self._run(
            self._in_transaction, sql_dispatch.dispatch, planner, limit, start
        )
        if result.queued > len(result.started):
            self._wakeup.signal("executions")
        if result.queued or result.skipped:  # their events, written by the dispatch's statement
            # numbered by it on PostgreSQL (`sql_events.TAKE_SEQUENCES`; else the database's trigger
            # wakes the sequencers), by the sequencer on SQLite
            self._wakeup.signal("events" if self._postgres else "events_new")
        return result

    async def next_fire_time(self) -> tuple[datetime | None, datetime]:
        earliest = sa.select(sa.func.min(schedules.c.next_fire_time)).where(schedules.c.paused.is_(False))
        return await self._run(self._earliest, earliest)

    def _earliest(self, query: sa.Select[Any]) -> tuple[datetime | None, datetime]:
        """The one value of `query` (a MIN), and the database's time in the same round trip."""
        with self._sync.connect() as conn:
            if self._postgres:
                value, now = conn.execute(query.add_columns(sa.func.clock_timestamp())).one()
                return _aware(value), now
            return _aware(conn.execute(query).scalar()), database_now(conn)

    # Workers

    async def claim_executions(
        self, worker: str, limit: int, lease: timedelta, *, namespace_limit: int = 0
    ) -> list[ClaimedExecution]:
        if not self._postgres:
            claimed: list[ClaimedExecution] = await self._run(
                self._in_transaction, sql_queue.claim, worker, limit, lease, namespace_limit
            )
            return claimed
        # One round trip: admitting (under the admission lock) while the last claim saw executions
        # that need a decision, else plainly; a plain claim that left some admits at once.
        admit = self._admitting or namespace_limit > 0
        if admit or self._hot is None:
            claimed, self._admitting = await self._run(
                self._claim_batch, worker, limit, lease, namespace_limit, admit
            )
        else:
            claimed, self._admitting = await self._hot.claim(worker, limit, lease)
            if claimed:  # their events, numbered by it (or the trigger wakes the sequencers)
                self._wakeup.signal("events")
        if self._admitting and not admit and len(claimed) < limit:
            more, self._admitting = await self._run(
                self._claim_batch, worker, limit - len(claimed), lease, namespace_limit, True
            )
            claimed += more
        return claimed

    def _claim_batch(
        self, worker: str, limit: int, lease: timedelta, namespace_limit: int, admit: bool
    ) -> tuple[list[ClaimedExecution], bool]:
        with self._queue.sync_engine.connect() as conn:
            claimed, restricted = sql_queue.claim_batch(
                conn, worker, limit, lease, namespace_limit, admit=admit
            )
        if claimed:  # their events, numbered by it (or the trigger wakes the sequencers)
            self._wakeup.signal("events")
        return claimed, restricted

    async def next_due_time(self) -> tuple[datetime | None, datetime]:
        earliest = sa.select(sa.func.min(executions.c.due_time)).where(executions.c.state == ex.QUEUED)
        return await self._run(self._earliest, earliest)

    async def queue_summary(self) -> QueueSummary:
        return await self._run(self._queue_summary)

    def _queue_summary(self) -> QueueSummary:
        # One pass over the partial index of QUEUED executions.
        with self._sync.connect() as conn:
            now = database_now(conn)
            due = sa.case((executions.c.due_time <= now, executions.c.due_time))
            depth, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(due)).where(executions.c.state == ex.QUEUED)
            ).one()
        return QueueSummary(int(depth), _aware(oldest), now)

    async def renew_leases(self, worker: str, execution_ids: list[str], lease: timedelta) -> LeaseRenewal:
        renewal: LeaseRenewal = await self._run(
            self._in_transaction, sql_queue.renew, worker, execution_ids, lease
        )
        return renewal

    def blocking_renewals(self) -> _BlockingRenewals:
        return _BlockingRenewals(self._engine.url.render_as_string(hide_password=False))

    async def finish_executions(
        self, items: list[tuple[ClaimedExecution, RunOutcome]], worker: str, retry: RetryPlanner
    ) -> list[Execution | None]:
        results: list[Execution | None]
        if self._hot is not None and all(sql_queue.finishes_plainly(c, o, retry) for c, o in items):
            results = await self._hot.finish(items, worker)
            if any(results):  # their events, numbered by it (or the trigger wakes the sequencers)
                self._wakeup.signal("events")
        elif self._postgres:
            results = await self._run(self._finish_batch, items, worker, retry)
        else:
            results = await self._run(self._in_transaction, sql_queue.finish_many, items, worker, retry)
        # A serial turn, a concurrency limit's room or a retry may be free now (a worker pool knows
        # its own free slots): wake the claimers of this process.
        if any(sql_queue.may_unblock(c, o, retry) for c, o in items):
            self._wakeup.signal("executions")
        return results

    def _finish_batch(
        self, items: list[tuple[ClaimedExecution, RunOutcome]], worker: str, retry: RetryPlanner
    ) -> list[Execution | None]:
        """The finish of a batch where some run does not end plainly: the statement of every
        outcome and what the others need (retries, dependents, callbacks) in one transaction. (A
        batch of plain ends is one autocommitted statement, `_HotStatements.finish`.)"""
        with self._transaction() as conn:
            ended = sql_queue.finish_batch(conn, items, worker)
            sql_queue.finish_rest(conn, items, ended, retry)
        if any(ended):
            self._wakeup.signal("events_new")
        return ended

    async def release_executions(self, worker: str, execution_ids: list[str]) -> None:
        await self._run(self._in_transaction, sql_queue.release, worker, execution_ids)
        self._wakeup.signal("executions")

    async def recover_expired(self, retry: RetryPlanner, *, limit: int) -> list[Execution]:
        lost: list[Execution] = await self._run(self._in_transaction, sql_queue.recover, retry, limit)
        if lost:
            self._wakeup.signal("executions")
        return lost

    async def take_remote(self, takes: Sequence[RemoteTake], *, namespace_limit: int = 0) -> RemoteTaken:
        namespace_limit = max(0, namespace_limit)
        if not self._postgres:
            each: RemoteTaken = await self._run(
                self._in_transaction, sql_remote.take_each, takes, namespace_limit
            )
            return each
        # As `claim_executions`: admitting while the last take saw executions that need a
        # decision or a namespace limit is set, else plainly; a plain take that left some admits
        # at once for the room left.
        admit = self._remote_admitting or namespace_limit > 0
        taken, self._remote_admitting = await self._run(
            self._take_remote_batch, takes, admit, namespace_limit
        )
        if self._remote_admitting and not admit:
            rest = [replace(t, limit=t.limit - len(c)) for t, c in zip(takes, taken.claims, strict=True)]
            if any(t.limit > 0 for t in rest):
                more, self._remote_admitting = await self._run(
                    self._take_remote_batch, rest, True, namespace_limit
                )
                claims = [a + b for a, b in zip(taken.claims, more.claims, strict=True)]
                taken = RemoteTaken(claims, taken.more or more.more)
        return taken

    def _take_remote_batch(
        self, takes: Sequence[RemoteTake], admit: bool, namespace_limit: int
    ) -> tuple[RemoteTaken, bool]:
        if admit:
            with self._transaction(engine=self._queue.sync_engine) as conn:
                sql_remote.lock_admission(conn, namespace_limit)
                taken, restricted = sql_remote.take_batch(
                    conn, takes, admit=True, namespace_limit=namespace_limit
                )
        else:
            with self._queue.sync_engine.connect() as conn:
                taken, restricted = sql_remote.take_batch(conn, takes, admit=False)
        if any(taken.claims):
            self._wakeup.signal("events_new")
        return taken, restricted

    async def renew_remote(
        self, batches: Sequence[list[HeldRemoteLease]], lease: timedelta
    ) -> list[LeaseRenewal]:
        renewals: list[LeaseRenewal]
        if self._postgres:  # one autocommitted statement, by the database's clock
            renewals = await self._run(self._read, sql_remote.renew, batches, lease, None)
        else:
            renewals = await self._run(self._in_transaction, sql_remote.renew, batches, lease)
        return renewals

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
        if request_id:
            replay = await self._recorded_resource(namespace, request_id, "RunJob")
            if replay is not None:
                return await self.get_execution(namespace, replay)
        run = _Run(namespace, job_id, arguments, request_id, actor, tuple(skip_while_running))
        try:
            row = await self._runs.submit(run)
        except exc.IntegrityError:
            replay = await self._recorded_resource(namespace, request_id, "RunJob") if request_id else None
            if replay is None:
                raise
            return await self.get_execution(namespace, replay)
        if row["state"] == ExecutionState.QUEUED.value:
            self._wakeup.signal("executions")
        return execution_from_row(row)

    async def _commit_runs(self, runs: list[_Run]) -> list[dict[str, Any] | Exception]:
        """The runs that arrived together, in one transaction; if it fails for a reason one run may
        cause (a request id taken), each run again alone, so that reason fails only its own."""
        try:
            return await self._run(self._run_batch, runs)
        except errors.StorageUnavailable:
            raise
        except Exception:
            if len(runs) == 1:
                raise
        results: list[dict[str, Any] | Exception] = []
        for run in runs:
            try:
                results += await self._run(self._run_batch, [run])
            except Exception as error:
                results.append(error)
        return results

    def _run_batch(self, runs: list[_Run]) -> list[dict[str, Any] | Exception]:
        results: list[dict[str, Any] | Exception] = []
        with self._transaction() as conn:
            now = database_now(conn)
            pending = conn.info[PENDING_EVENTS]
            notified = False
            for run in runs:
                queued = len(pending)
                try:
                    row = self._run_job(
                        conn,
                        run.namespace,
                        run.job_id,
                        run.arguments,
                        run.request_id,
                        run.skip_while_running,
                        now,
                        notify=not notified,
                    )
                except (errors.NotFound, errors.InvalidArgument) as error:  # raised before it wrote anything
                    results.append(error)
                    continue
                notified = True
                results.append(row)
                if run.actor:
                    pending[queued:] = [{**e, "actor": run.actor} for e in pending[queued:]]
        if notified:
            self._wakeup.signal("events_new")
        return results

    def _run_job(
        self,
        conn: Connection,
        namespace: str,
        job_id: str,
        arguments: JsonObject,
        request_id: str,
        skip_while_running: Sequence[str],
        now: datetime,
        *,
        notify: bool = True,
    ) -> dict[str, Any]:
        job = conn.execute(GET_JOB, {"namespace": namespace, "id": job_id}).first()
        if job is None:
            raise errors.NotFound("job", job_name(namespace, job_id))
        arguments = checked_arguments(job.arguments_schema, arguments)
        # RunJob respect_overlap: skipped, like a tick, while a run of such a schedule is active.
        busy = (
            conn.execute(
                sa.select(executions.c.schedule_id, executions.c.id)
                .where(
                    executions.c.namespace == namespace,
                    executions.c.schedule_id.in_(skip_while_running),
                    executions.c.state.in_(ex.ACTIVE_STATES),
                )
                .limit(1)
            ).first()
            if skip_while_running
            else None
        )
        row = ex.new_row(
            namespace=namespace,
            job_id=job_id,
            trigger=ExecutionTrigger.RUN_NOW,
            scheduled_time=now,
            arguments=arguments,
            now=now,
            state=ExecutionState.SKIPPED if busy else ExecutionState.QUEUED,
            skip_reason=SkipReason.OVERLAP if busy else None,
            error=(
                f"skipped: {execution_name(namespace, busy.id)} of schedule "
                f"{schedule_name(namespace, busy.schedule_id)} (overlap policy SKIP) is still running"
                if busy
                else ""
            ),
        )
        if request_id:
            conn.execute(
                _RECORD_REQUEST,
                _request_params(
                    {"namespace": namespace, "id": row["id"], "create_time": now}, request_id, "RunJob"
                ),
            )
        conn.execute(sa.insert(executions), [row])
        if notify:  # once per transaction is enough: PostgreSQL delivers it at commit
            sql_engine.notify(conn, "executions")
        ex.emit(conn, [sql_events.execution_event(row, now)])
        return row

    async def get_execution(self, namespace: str, execution_id: str) -> Execution:
        row = await self._read_by_key(_GET_EXECUTION, namespace, execution_id)
        if row is None:
            raise errors.NotFound("execution", execution_name(namespace, execution_id))
        return execution_from_row(row)

    async def list_executions(self, namespace: str, page: Page, where: ExecutionFilter) -> Listing[Execution]:
        query = ex.filtered(namespace, where)
        if page.after:
            query = ex.after_cursor(query, page.after)
        sized = sql_paging.sized_page(query, ex.NEWEST_FIRST, page.size, postgres=self._postgres)
        rows, more = sql_paging.kept(await self._run(self._all, sized), page.size)
        items = rows_to_executions(rows)
        return Listing(items=items, next_after=ex.cursor_of(items[-1]) if more else None)

    async def cancel_execution(
        self, namespace: str, execution_id: str, reason: str, *, actor: str = ""
    ) -> Execution:
        """Cancels the run `execution_id` is an attempt of; the attempt cancelled (see `sql_queue.cancel`)."""
        cancelled: str = await self._run(
            self._in_transaction_by, actor, sql_queue.cancel, namespace, execution_id, reason
        )
        return await self.get_execution(namespace, cancelled)

    # Run control

    async def append_logs(self, namespace: str, execution_id: str, chunks: list[tuple[int, str]]) -> None:
        await self._run(self._in_transaction, sql_logs.append_logs, namespace, execution_id, chunks)
        self._wakeup.signal("logs")

    async def read_logs(
        self, namespace: str, execution_id: str, offset: int, limit: int
    ) -> list[tuple[int, str, datetime]]:
        chunks: list[tuple[int, str, datetime]] = await self._run(
            self._read, sql_logs.read_logs, namespace, execution_id, offset, limit
        )
        return chunks

    def _read(self, work: Callable[..., T], *args: Any) -> T:
        with self._sync.connect() as conn:
            return work(conn, *args)

    async def claim_callbacks(self, limit: int) -> list[tuple[Execution, Job]]:
        claimed: list[tuple[Execution, Job]] = await self._run(
            self._in_transaction, sql_callbacks.claim_callbacks, limit
        )
        return claimed

    async def record_callback(
        self,
        execution: Execution,
        *,
        http_status: int | None,
        error: str,
        delivered: bool,
        next_time: datetime | None,
    ) -> None:
        await self._run(
            self._in_transaction,
            sql_callbacks.record_callback,
            execution.namespace,
            execution.id,
            execution.callback,
            http_status,
            error,
            delivered,
            next_time,
        )
        if next_time is not None:
            self._wakeup.signal("callbacks")

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
        namespace = schedule.namespace
        if request_id:
            replay = await self._recorded_resource(namespace, request_id, "BackfillSchedule")
            if replay is not None:
                return await self._run(self._read, sql_backfill.backfill_executions, namespace, replay)
        try:
            backfill_id: str = await self._run(
                self._in_transaction_by,
                actor,
                self._backfill,
                schedule,
                ticks,
                serial,
                max_concurrency,
                request_id,
            )
        except exc.IntegrityError:
            replay = (
                await self._recorded_resource(namespace, request_id, "BackfillSchedule")
                if request_id
                else None
            )
            if replay is None:
                raise
            backfill_id = replay
        self._wakeup.signal("executions")
        executions_: list[Execution] = await self._run(
            self._read, sql_backfill.backfill_executions, namespace, backfill_id
        )
        return executions_

    def _backfill(
        self,
        conn: Connection,
        schedule: Schedule,
        ticks: list[datetime],
        serial: bool,
        max_concurrency: int,
        request_id: str,
        now: datetime,
    ) -> str:
        """Queue the backfill; returns its id (time-ordered like an execution id)."""
        backfill_id = ex.new_execution_id(now)
        if request_id:
            record = {"namespace": schedule.namespace, "id": backfill_id, "create_time": now}
            conn.execute(_RECORD_REQUEST, _request_params(record, request_id, "BackfillSchedule"))
        sql_backfill.backfill(
            conn,
            schedule.namespace,
            schedule.job_id,
            schedule.id,
            schedule.arguments,
            ticks,
            serial,
            max_concurrency,
            backfill_id,
            now,
        )
        return backfill_id

    # Events

    async def sequence_events(self, limit: int) -> int:
        if self._hot is not None:
            numbered = await self._hot.number_events(limit)
        else:
            numbered = await self._run(self._sequence_events, limit)
        if numbered:
            self._wakeup.signal("events")
        return numbered

    def _sequence_events(self, limit: int) -> int:
        # SQLite. No clock read: numbering needs no time.
        with self._transaction() as conn:
            return sql_events.sequence_pending(conn, limit)

    async def latest_event_sequence(self) -> int:
        latest: int = await self._run(self._read, sql_events.latest)
        return latest

    async def read_events(
        self, where: EventFilter, *, after: int, limit: int, up_to: int | None = None
    ) -> list[Event]:
        rows = await self._run(self._all, sql_events.select(where, after, limit, up_to))
        return sql_events.to_events(rows)

    async def read_event_page(
        self, where: EventFilter, *, after: int, limit: int, max_bytes: int, up_to: int | None = None
    ) -> EventPage:
        query = sql_events.select_page(where, after, limit, max_bytes, up_to, postgres=self._postgres)
        rows = await self._run(self._all, query)
        return EventPage(
            events=sql_events.to_events(rows),
            sizes=[int(r.page_bytes) for r in rows],
            cut=bool(rows) and int(rows[0].page_rows) > len(rows),
        )

    async def prune_events(self, before: datetime, *, limit: int) -> int:
        pruned: int = await self._run(
            self._in_transaction, lambda conn, b, n, now: sql_events.prune(conn, b, n), before, limit
        )
        return pruned

    # Operations

    async def register_replica(self, replica: Replica) -> None:
        await self._run(self._in_transaction, sql_replicas.register, replica)

    async def heartbeat_replica(self, replica_id: str, loops_down: tuple[str, ...] = ()) -> bool:
        alive: bool = await self._run(self._read, sql_replicas.heartbeat, replica_id, loops_down)
        return alive

    async def remove_replica(self, replica_id: str) -> None:
        await self._run(self._read, sql_replicas.remove, replica_id)

    async def prune_replicas(self, silent_for: timedelta) -> int:
        pruned: int = await self._run(self._read, sql_replicas.prune, silent_for)
        return pruned

    async def cluster_status(self, lag_window: timedelta) -> ClusterStatus:
        status: ClusterStatus = await self._run(self._read, sql_replicas.cluster_status, lag_window)
        return status

    async def prune_executions(self, policy: RetentionPolicy, *, limit: int) -> int:
        pruned: int = await self._run(self._in_transaction, sql_retention.prune, policy, limit)
        return pruned


def _aware(value: datetime | None) -> datetime | None:
    # Aggregates (MIN) bypass the column type: SQLite hands back naive UTC text.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Run:
    """One RunJob call waiting for its batch."""

    namespace: str
    job_id: str
    arguments: JsonObject
    request_id: str
    actor: str
    skip_while_running: tuple[str, ...]

    def claims(self) -> list[tuple[str, str, str]]:
        return [("request", self.namespace, self.request_id)] if self.request_id else []


class _HotStatements:
    """PostgreSQL: the statements of every run, each one autocommitted statement, prepared and
    sent from the event loop on a connection of its kind (`sql_wire.WireConnection`): a plain
    claim, a finish of plain ends, and the events' numbering. Through the pool each would cost
    the server about 300 us more, whatever it does.

    A claim or a finish whose connection breaks is not sent again (it may have committed): it
    fails with StorageUnavailable, as through the pool, and its caller's retry finds what it
    did (a finish only ends runs still RUNNING under its lease). A numbering changes nothing
    twice, and is sent again once."""

    def __init__(self, url: str, engine: AsyncEngine) -> None:
        store = engine.sync_engine
        self._claims = WireConnection(url, store, resend=False, options=QUEUE_SESSION_OPTIONS)
        self._finishes = WireConnection(url, store, resend=False, options=FINISH_SESSION_OPTIONS)
        self._numbering = WireConnection(url, store, resend=True)
        self._claim = PreparedStatement(sql_queue.CLAIM_BATCH, engine.dialect)
        self._finish = PreparedStatement(sql_queue.FINISH_BATCH, engine.dialect)
        self._number = PreparedStatement(sql_events.NUMBER_PENDING, engine.dialect)

    async def claim(self, worker: str, limit: int, lease: timedelta) -> tuple[list[ClaimedExecution], bool]:
        rows = await self._claims.fetch(self._claim, sql_queue.claim_params(worker, limit, lease))
        return sql_queue.claimed_from(rows)

    async def finish(
        self, items: list[tuple[ClaimedExecution, RunOutcome]], worker: str
    ) -> list[Execution | None]:
        rows = await self._finishes.fetch(self._finish, sql_queue.finish_params(items, worker))
        return sql_queue.finished(items, rows)

    async def number_events(self, limit: int) -> int:
        rows = await self._numbering.fetch(self._number, {"limit": limit})
        return int(rows[0]["numbered"])

    async def close(self) -> None:
        for connection in (self._claims, self._finishes, self._numbering):
            await connection.close()
