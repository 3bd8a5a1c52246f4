"""Creates of jobs and schedules, committed in groups.

Creates that arrive while a batch's transaction runs wait, and go in together in the next one
(group commit): one multi-row INSERT of the rows, one of their events, one of their request ids,
after one statement that locks and reads the namespaces' counts for the quota. A lone create
goes at once: no timer adds to its latency. The batch's statements are steps (`sql_steps`): the
store sends them prepared on a PostgreSQL connection of the creates' own, or through SQLAlchemy.

Each create gets its own outcome: created, or the reason it was not (its id taken, its namespace
full, its job missing, its request id already recorded); one create's failure never fails
another. Two creates of one batch never share an id or a request id (the later waits for the
next batch), so each outcome is what the creates would have had one after the other.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection

from cronwire_server.core import errors
from cronwire_server.storage import sql_events, sql_kept_calendars, sql_steps
from cronwire_server.storage.sql_driver import json_document
from cronwire_server.storage.sql_steps import Step, Steps
from cronwire_server.storage.tables import UtcDateTime, jobs, namespace_usage, request_ids, schedules

__all__ = ["Create", "GroupCommit", "Outcome", "commit", "create_steps"]

# Creates per batch at most (the rest wait for the next): keeps a multi-row INSERT's parameters
# well below what either database takes in one statement.
MAX_BATCH = 256
# Callers count as concurrent for CONCURRENT_FOR seconds after an item came with COMPANY
# others pending (`GroupCommit`'s window).
COMPANY = 3
CONCURRENT_FOR = 1.0


class Outcome(enum.Enum):
    PENDING = "pending"
    CREATED = "created"
    EXISTS = "exists"  # the id is taken
    FULL = "full"  # the namespace holds its limit of this kind
    NO_JOB = "no_job"  # a schedule's job does not exist
    STALE_CALENDARS = "stale_calendars"  # a calendar a schedule uses changed since it was read
    REQUEST_TAKEN = "request_taken"  # the request id is recorded already (a retry)


@dataclass
class Create:
    """One create: the row's values, its event, and what became of it."""

    kind: str  # "job" or "schedule"
    values: dict[str, Any]
    event: dict[str, Any]
    request_id: str
    method: str
    limit: int  # 0: none
    outcome: Outcome = Outcome.PENDING
    created_at: datetime | None = None  # the row's create time, as stored

    @property
    def namespace(self) -> str:
        return str(self.values["namespace"])

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, str(self.values["id"]))

    def claims(self) -> list[tuple[str, str, str]]:
        """What no other create of its batch may share."""
        taken = [("id", *self.key)]
        if self.request_id:
            taken.append(("request", self.namespace, self.request_id))
        return taken


class Claimed(Protocol):
    def claims(self) -> list[tuple[str, str, str]]:
        """What no other item of its batch may share (it waits for the next batch)."""
        ...


T = TypeVar("T", bound=Claimed)
R = TypeVar("R")


class _Window:
    """When an item that finds no batch in flight waits for others (`GroupCommit`'s `window`).

    While callers are concurrent (an item came while COMPANY others were pending, within
    CONCURRENT_FOR), such an item waits up to `seconds` for others instead of going alone: a
    busy server pays a batch's round trip once for many callers. Fewer callers do not count:
    on a server they do not keep busy, each waiting for the others cost them more than their
    shared statement saved (loops of GetJob, measured while they counted: two callers, 1,087
    calls/s with the wait against 1,451 without; three, 1,376 against 1,650; four callers lose
    nothing, 1,675-1,684 against 1,613-1,679, at a quarter less CPU per call). The wait ends
    early once as many wait as the largest batch of the last CONCURRENT_FOR (a few callers
    each calling in a loop wait for one another, not for the time), and a wait that gathered
    no one else ends the concurrency, so a lone caller never waits twice in a row.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._concurrent_at = -math.inf
        self._peak = 0  # the most items a batch took, since `_peak_at`
        self._peak_at = -math.inf
        self._gathering: asyncio.Future[None] | None = None

    def arrived(self, now: float, *, pending: int, waiting: int) -> bool:
        """An item came, with `pending` others not answered yet, `waiting` (itself included):
        whether callers are concurrent now (one finding no batch in flight then waits)."""
        if pending >= COMPANY:
            self._concurrent_at = now
        gathering = self._gathering
        if gathering is not None and waiting >= max(2, self._peak) and not gathering.done():
            gathering.set_result(None)
        return now - self._concurrent_at < CONCURRENT_FOR

    def batched(self, now: float, size: int) -> None:
        if size >= self._peak or now - self._peak_at > CONCURRENT_FOR:
            self._peak, self._peak_at = size, now

    def alone(self) -> None:
        self._concurrent_at = -math.inf

    async def gather(self) -> None:
        """Until as many wait as batches took lately, or `seconds` passed."""
        loop = asyncio.get_running_loop()
        self._gathering = gathering = loop.create_future()
        timer = loop.call_later(self._seconds, _release, gathering)
        try:
            await gathering
        finally:
            timer.cancel()
            self._gathering = None


def _release(gathering: asyncio.Future[None]) -> None:
    if not gathering.done():
        gathering.set_result(None)


class GroupCommit(Generic[T, R]):
    """Runs `commit` on the items waiting, one batch at a time: it returns each item's result or
    its own error, in order; an error it raises (the database unavailable) goes to every caller
    of the batch."""

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[Sequence[R | Exception]]],
        *,
        lead: bool = False,
        window: float = 0.0,
    ) -> None:
        self._commit = commit
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._draining: asyncio.Task[None] | None = None
        # With `lead`, the caller of an item submitted while no batch is in flight commits it at
        # once in its own task, instead of a task made for it (a lone read costs a third less);
        # items submitted meanwhile wait and then go together. Only for commits that a caller
        # going away may interrupt (reads): the leader's batch is its own item alone.
        self._lead = lead
        self._leading = False
        self._window = _Window(window) if window else None
        # Items submitted and not answered yet: waiting, or in the batch being committed.
        self.pending = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._waiting.append((item, future))
        window = self._window
        concurrent = window is not None and window.arrived(
            loop.time(), pending=self.pending, waiting=len(self._waiting)
        )
        self.pending += 1
        try:
            if self._draining is None and not self._leading:
                if concurrent:
                    self._draining = asyncio.create_task(self._drain(window))
                elif self._lead:
                    await self._commit_leading()
                else:
                    self._draining = asyncio.create_task(self._drain())
            return await future
        finally:
            self.pending -= 1

    async def _commit_leading(self) -> None:
        self._leading = True
        try:
            await self._commit_batch(self._next_batch())  # its own item: nothing else waited
        finally:
            self._leading = False
            if self._waiting:  # submitted meanwhile, or the leader went away
                self._draining = asyncio.create_task(self._drain())

    def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        later: list[tuple[T, asyncio.Future[R]]] = []
        claimed: set[tuple[str, str, str]] = set()
        for waiting in self._waiting:
            claims = waiting[0].claims()
            if len(batch) < MAX_BATCH and claimed.isdisjoint(claims):
                batch.append(waiting)
                claimed.update(claims)
            else:
                later.append(waiting)
        self._waiting = later
        return batch

    async def _commit_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        if self._window is not None:
            self._window.batched(asyncio.get_running_loop().time(), len(batch))
        try:
            results = await self._commit([item for item, _ in batch])
        except Exception as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller went away: what it did stands
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _drain(self, window: _Window | None = None) -> None:
        try:
            if window is not None:
                await window.gather()
                if len(self._waiting) == 1:
                    window.alone()
            while self._waiting:
                await self._commit_batch(self._next_batch())
        finally:
            self._draining = None


def commit(conn: Connection, creates: list[Create]) -> None:
    """Insert what `creates` may insert, in `conn`'s open transaction, and set each outcome."""
    sql_steps.run(conn, create_steps(creates, conn.dialect.name == "postgresql"))


def create_steps(creates: list[Create], postgres: bool) -> Steps[None]:
    """The statements of a batch of creates of one kind (`sql_steps`): a schedule's job and
    calendars checked, then `insert_steps` for what passed.

    SQLite stores each create's own time; PostgreSQL stamps the rows with its own clock (now(),
    one instant for the transaction)."""
    pending = creates
    if creates[0].kind == "schedule":
        pending = yield from _with_jobs(pending, postgres)
        pending = yield from _with_current_calendars(pending, postgres)
    if pending:
        yield from insert_steps(pending, postgres)


def insert_steps(creates: list[Create], postgres: bool) -> Steps[None]:
    """The statements that insert what `creates` (of one kind, each checked already) may insert,
    and set each outcome: the namespaces' counts read and locked, the rows inserted, their request
    ids recorded, their events written. PostgreSQL's are each one statement with one set of
    parameters, so they can be sent prepared."""
    kind = creates[0].kind
    table = jobs if kind == "job" else schedules
    room = yield from _room(kind, creates, postgres)
    pending = creates
    inserted: list[Create] = []
    while pending:
        admitted: list[Create] = []
        for create in pending:
            left = room.get(create.namespace)
            if left is None or left > 0:
                admitted.append(create)
                if left is not None:
                    room[create.namespace] = left - 1
            else:
                create.outcome = Outcome.FULL
        if not admitted:
            break
        went_in = yield from _insert_rows(table, admitted, postgres)
        for create in admitted:
            stamped = went_in.get(create.key)
            if stamped is None:
                create.outcome = Outcome.EXISTS
                if create.namespace in room:
                    room[create.namespace] += 1  # its place goes to a create refused for it
            else:
                create.outcome, create.created_at = Outcome.CREATED, stamped
                inserted.append(create)
        # Rare: ids already taken left room that creates refused in this batch may take.
        pending = [c for c in pending if c.outcome is Outcome.FULL and room.get(c.namespace, 0) > 0]
    recorded = yield from _record_requests([c for c in inserted if c.request_id], postgres)
    if recorded:
        yield _undo(table, recorded, postgres)
        inserted = [c for c in inserted if c.outcome is Outcome.CREATED]
    if inserted:
        yield _events(inserted, postgres)


# PostgreSQL: the jobs of a batch's schedules that exist, locked (FOR KEY SHARE) in key order.
_POSTGRES_JOBS = sa.text(
    "SELECT j.namespace, j.id FROM jobs AS j "
    "JOIN jsonb_to_recordset(CAST(:keys AS jsonb)) AS k(namespace text, id text) "
    "ON j.namespace = k.namespace AND j.id = k.id "
    "ORDER BY j.namespace, j.id FOR KEY SHARE OF j"
).columns(namespace=sa.String(), id=sa.String())


def _with_jobs(creates: list[Create], postgres: bool) -> Steps[list[Create]]:
    """The schedules whose job exists; the job is locked (FOR KEY SHARE) until commit, so it stays."""
    wanted = sorted({(c.namespace, str(c.values["job_id"])) for c in creates})
    if postgres:
        keys = [{"namespace": namespace, "id": job_id} for namespace, job_id in wanted]
        rows = yield _POSTGRES_JOBS, {"keys": json_document(keys)}
    else:
        keyed = sa.tuple_(jobs.c.namespace, jobs.c.id)
        rows = yield sa.select(jobs.c.namespace, jobs.c.id).where(keyed.in_(wanted)), {}
    found = {(r["namespace"], r["id"]) for r in rows}
    for create in creates:
        if (create.namespace, create.values["job_id"]) not in found:
            create.outcome = Outcome.NO_JOB
    return [c for c in creates if c.outcome is Outcome.PENDING]


def _with_current_calendars(creates: list[Create], postgres: bool) -> Steps[list[Create]]:
    """The schedules whose calendars (kept with them) are still those stored; the calendars are
    locked (FOR SHARE) until commit, so that a concurrent change of one waits for the schedule
    and re-plans it too (sql_kept_calendars.unchanged)."""
    using = [c for c in creates if c.values.get("calendars")]
    if not using:
        return creates
    current = yield from sql_kept_calendars.unchanged_steps(
        [(c.namespace, c.values["calendars"]) for c in using], postgres
    )
    for create, ok in zip(using, current, strict=True):
        if not ok:
            create.outcome = Outcome.STALE_CALENDARS
    return [c for c in creates if c.outcome is Outcome.PENDING]


def _room(kind: str, creates: list[Create], postgres: bool) -> Steps[dict[str, int]]:
    """How many more rows each namespace with a limit may take; its counter row locked until
    commit (an upsert that changes nothing, in namespace order, so it works for a namespace with no
    row yet and batches on several replicas never wait for each other in a cycle)."""
    limits = {c.namespace: c.limit for c in creates if c.limit > 0}
    if not limits:
        return {}
    names = sorted(limits)
    if postgres:
        rows = yield _POSTGRES_LOCK_USAGE, {"namespaces": names, "kind": kind}
    else:
        rows = yield _SQLITE_LOCK_USAGE, [{"namespace": n, "kind": kind} for n in names]
    used = {r["namespace"]: int(r["used"]) for r in rows}
    return {n: max(0, limits[n] - used.get(n, 0)) for n in names}


def _insert_rows(
    table: sa.Table, creates: list[Create], postgres: bool
) -> Steps[dict[tuple[str, str], datetime]]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING: the (namespace, id) that went in, with their
    create time. One statement for the batch, in key order (so that batches on several replicas
    never wait for each other's rows in a cycle)."""
    creates = sorted(creates, key=lambda c: c.key)
    if postgres:
        # The rows as one JSON document: a statement built once, whose only parameter psycopg
        # sends as it is (no per-row SQL to render and parse, no array to escape).
        columns = tuple(k for k in creates[0].values if k not in _STAMPED)
        rows = json_document([{k: c.values[k] for k in columns} for c in creates])
        returned = yield _postgres_insert(table.name, columns), {"rows": rows}
        return {(r["namespace"], r["id"]): r["create_time"] for r in returned}
    returned = yield _INSERTS[table.name], [c.values for c in creates]
    went_in = {(r["namespace"], r["id"]) for r in returned}
    return {c.key: c.values["create_time"] for c in creates if c.key in went_in}


@functools.cache
def _postgres_insert(table: str, columns: tuple[str, ...]) -> sa.TextualSelect:
    names = ", ".join(f'"{c}"' for c in columns)
    picked = ", ".join(f'r."{c}"' for c in columns)
    return sa.text(
        f"INSERT INTO {table} ({names}, create_time, update_time) SELECT {picked}, now(), now() "
        "FROM jsonb_array_elements(CAST(:rows AS jsonb)) WITH ORDINALITY AS e(doc, n), "
        f"jsonb_populate_record(NULL::{table}, e.doc) AS r ORDER BY e.n "
        "ON CONFLICT DO NOTHING RETURNING namespace, id, create_time"
    ).columns(namespace=sa.String(), id=sa.String(), create_time=UtcDateTime())


# PostgreSQL: the events of a batch from one JSON document, in order, stamped now() (the rows'
# create time: one instant for the transaction).
_POSTGRES_EVENTS = sa.text(
    "INSERT INTO events (type, namespace, resource, job_id, schedule_id, actor, time, snapshot) "
    "SELECT r.type, r.namespace, r.resource, r.job_id, r.schedule_id, r.actor, now(), r.snapshot "
    "FROM jsonb_array_elements(CAST(:events AS jsonb)) WITH ORDINALITY AS e(doc, n), "
    "jsonb_populate_record(NULL::events, e.doc) AS r ORDER BY e.n"
).columns()


def _events(creates: list[Create], postgres: bool) -> Step:
    if postgres:
        fields = ("type", "namespace", "resource", "job_id", "schedule_id", "actor", "snapshot")
        events = [{k: c.event[k] for k in fields} for c in creates]
        return _POSTGRES_EVENTS, {"events": json_document(events)}
    return sql_events.INSERT, [{**c.event, "time": c.created_at} for c in creates]


_STAMPED = frozenset({"create_time", "update_time"})


_INSERTS = {
    table.name: sqlite.insert(table)
    .on_conflict_do_nothing()
    .returning(table.c.namespace, table.c.id, table.c.create_time)
    for table in (jobs, schedules)
}
# The counter rows of a batch's namespaces, locked in namespace order (codepoint order, as the
# store's other lockers sort them) by an upsert that changes nothing.
_POSTGRES_LOCK_USAGE = sa.text(
    "INSERT INTO namespace_usage (namespace, kind, used) "
    'SELECT n, CAST(:kind AS text), 0 FROM unnest(CAST(:namespaces AS text[])) AS n ORDER BY n COLLATE "C" '
    "ON CONFLICT (namespace, kind) DO UPDATE SET used = namespace_usage.used "
    "RETURNING namespace, used"
).columns(namespace=sa.String(), used=sa.BigInteger())
_SQLITE_LOCK_USAGE = (
    sqlite.insert(namespace_usage)
    .values(used=0)
    .on_conflict_do_update(
        index_elements=[namespace_usage.c.namespace, namespace_usage.c.kind],
        set_={"used": namespace_usage.c.used},
    )
    .returning(namespace_usage.c.namespace, namespace_usage.c.used)
)
_POSTGRES_RECORD = sa.text(
    "INSERT INTO request_ids (namespace, request_id, method, resource_id, create_time) "
    "SELECT r.namespace, r.request_id, r.method, r.resource_id, now() "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
    "AS r(namespace text, request_id text, method text, resource_id text) "
    "ON CONFLICT DO NOTHING RETURNING namespace, request_id"
).columns(namespace=sa.String(), request_id=sa.String())
_SQLITE_RECORD = (
    sqlite.insert(request_ids)
    .on_conflict_do_nothing()
    .returning(request_ids.c.namespace, request_ids.c.request_id)
)


def _record_requests(creates: list[Create], postgres: bool) -> Steps[list[Create]]:
    """Record the request ids of the creates that went in; those whose request id was recorded
    already (a retry racing the first try) come back, marked REQUEST_TAKEN."""
    if not creates:
        return []
    rows = [
        {
            "namespace": c.namespace,
            "request_id": c.request_id,
            "method": c.method,
            "resource_id": c.values["id"],
            **({} if postgres else {"create_time": c.created_at}),
        }
        for c in creates
    ]
    if postgres:
        returned = yield _POSTGRES_RECORD, {"rows": json_document(rows)}
    else:
        returned = yield _SQLITE_RECORD, rows
    recorded = {(r["namespace"], r["request_id"]) for r in returned}
    taken = [c for c in creates if (c.namespace, c.request_id) not in recorded]
    for create in taken:
        create.outcome, create.created_at = Outcome.REQUEST_TAKEN, None
    return taken


@functools.cache
def _postgres_undo(table: str) -> sa.TextualSelect:
    return sa.text(
        f"DELETE FROM {table} AS t "
        "USING jsonb_to_recordset(CAST(:keys AS jsonb)) AS k(namespace text, id text) "
        "WHERE t.namespace = k.namespace AND t.id = k.id"
    ).columns()


def _undo(table: sa.Table, creates: list[Create], postgres: bool) -> Step:
    if postgres:
        keys = [{"namespace": c.namespace, "id": c.values["id"]} for c in creates]
        return _postgres_undo(table.name), {"keys": json_document(keys)}
    doomed = [c.key for c in creates]
    return sa.delete(table).where(sa.tuple_(table.c.namespace, table.c.id).in_(doomed)), {}


_GET_REQUEST = sa.select(request_ids.c.method, request_ids.c.resource_id).where(
    request_ids.c.namespace == sa.bindparam("namespace"),
    request_ids.c.request_id == sa.bindparam("request_id"),
)


def recorded(conn: Connection, namespace: str, request_id: str, method: str) -> str | None:
    """The id of what the `method` request with `request_id` created; None if it is not recorded.
    InvalidArgument when the request id was used for another method."""
    row = conn.execute(_GET_REQUEST, {"namespace": namespace, "request_id": request_id}).one_or_none()
    if row is None:
        return None
    if row.method != method:
        raise errors.InvalidArgument.field("request_id", f"was already used for a {row.method} request")
    return str(row.resource_id)
