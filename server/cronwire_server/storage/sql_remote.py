"""The remote queue in SQL: executions of jobs with executor `remote`, taken by remote workers.

Taking is the local claim's admission (serial turns, jobs' and backfills' concurrency limits,
and with a namespace limit the RUNNING executions of the namespace, local and remote together)
over the remote executions of the workers' queues, rows locked with SKIP LOCKED, each started
under its session's lease (`storage.remote`). On PostgreSQL one statement takes for every
session with room (`take_batch`); on SQLite, one transaction (`take_each`). Renewal goes by
the lease; finishing, releasing and recovering are the local runs' own code paths
(`Store.finish_executions`, `release_executions`, `recover_expired`), which fence by `worker`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from cronwire_server.core.model import EventType, Job
from cronwire_server.executors.registry import REMOTE
from cronwire_server.storage import sql_events, sql_queue
from cronwire_server.storage import sql_executions as ex
from cronwire_server.storage.base import ClaimedExecution, LeaseRenewal
from cronwire_server.storage.records import execution_from_row, job_from_record
from cronwire_server.storage.remote import (
    HeldRemoteLease,
    RemoteClaim,
    RemoteTake,
    RemoteTaken,
    new_lease_token,
)
from cronwire_server.storage.sql_driver import run_script
from cronwire_server.storage.sql_queue import (
    _admissible,
    _candidates,
    _namespaces_at,
    _order,
    _rank,
    admission_steps,
)
from cronwire_server.storage.tables import executions, jobs


def _queue_of(column: Any, key: str) -> sa.ColumnElement[str]:
    return sa.func.coalesce(column[key].as_string(), "")


def _wants(take: RemoteTake) -> bool:
    return take.limit > 0 and bool(take.queues) and (take.namespaces is None or bool(take.namespaces))


def take_each(
    conn: Connection, takes: Sequence[RemoteTake], namespace_limit: int, now: datetime
) -> RemoteTaken:
    """SQLite (one writer): every take in this one transaction, one after another."""
    claims = [take(conn, t, now, namespace_limit) for t in takes]
    return RemoteTaken(claims, any(len(c) == t.limit for c, t in zip(claims, takes, strict=True) if c))


def take(conn: Connection, take: RemoteTake, now: datetime, namespace_limit: int = 0) -> list[RemoteClaim]:
    """Start up to `take.limit` due remote executions for the worker, each under its own lease;
    with `namespace_limit` (> 0), only while fewer than that many of their namespace run (local
    and remote runs alike)."""
    if not _wants(take):
        return []
    query = (
        sa.select(executions, jobs.c.max_concurrency.label("job_max_concurrency"))
        .join(jobs, sa.and_(jobs.c.namespace == executions.c.namespace, jobs.c.id == executions.c.job_id))
        .where(
            executions.c.state == ex.QUEUED,
            executions.c.due_time <= now,
            jobs.c.executor == REMOTE,
            _queue_of(jobs.c.parameters, "queue").in_(take.queues),
        )
        .order_by(executions.c.due_time)
    )
    if take.tasks:
        query = query.where(_queue_of(jobs.c.parameters, "task").in_(("", *take.tasks)))
    if take.namespaces is not None:
        query = query.where(executions.c.namespace.in_(take.namespaces))
    if namespace_limit > 0:
        # As the local claim: namespaces at their limit are left out of the candidates, so that
        # their backlog does not hold up the other namespaces; `_admissible` counts exactly.
        full = _namespaces_at(conn, namespace_limit)
        if full:
            query = query.where(executions.c.namespace.not_in(full))
    # A few candidates more than wanted: a serial turn or a concurrency limit may hold some back.
    candidates = _candidates(conn, query, take.limit + 8)
    if not candidates:
        return []
    accepted, _ = _admissible(conn, candidates, namespace_limit)
    tokens = {key: new_lease_token(take.secret) for key in accepted[: take.limit]}
    if not tokens:
        return []
    rows = conn.execute(
        sa.update(executions)
        .where(
            sa.tuple_(executions.c.namespace, executions.c.id).in_(list(tokens)),
            executions.c.state == ex.QUEUED,
        )
        .values(state=ex.RUNNING, worker=take.worker, start_time=now, lease_expires_at=now + take.lease)
        .returning(*executions.c)
    ).all()
    started: list[tuple[Any, str]] = [(row._mapping, tokens[(row.namespace, row.id)]) for row in rows]
    if not started:
        return []
    ex.emit(conn, [sql_events.execution_event(values, now) for values, _ in started])
    keys = {(values["namespace"], values["job_id"]) for values, _ in started}
    rows = conn.execute(sa.select(jobs).where(sa.tuple_(jobs.c.namespace, jobs.c.id).in_(keys))).all()
    by_key = {(r.namespace, r.id): job_from_record(r._mapping) for r in rows}
    return [
        RemoteClaim(
            ClaimedExecution(execution_from_row(values), by_key[(values["namespace"], values["job_id"])]),
            token,
        )
        for values, token in started
    ]


def renew(
    conn: Connection, batches: Sequence[list[HeldRemoteLease]], lease: timedelta, now: datetime | None
) -> list[LeaseRenewal]:
    """Extend the leases still held (each by its own `worker`), locking the rows in primary-key
    order like every multi-row change of executions; for each heartbeat (a list of leases), which
    were cancelled and which are lost. One statement for all of them: with `now` None, the
    database's clock (PostgreSQL, autocommitted)."""
    keys = {(held.namespace, held.execution_id, held.worker) for leases in batches for held in leases}
    if not keys:
        return [LeaseRenewal() for _ in batches]
    held_rows = (
        sa.select(executions.c.namespace, executions.c.id)
        .where(
            sa.tuple_(executions.c.namespace, executions.c.id, executions.c.worker).in_(sorted(keys)),
            executions.c.state == ex.RUNNING,
        )
        .order_by(executions.c.namespace, executions.c.id)
        .with_for_update(of=executions)
    )
    expires = sa.func.now() + lease if now is None else now + lease
    renewed = conn.execute(
        sa.update(executions)
        .where(sa.tuple_(executions.c.namespace, executions.c.id).in_(held_rows))
        .values(lease_expires_at=expires)
        .returning(
            executions.c.namespace, executions.c.id, executions.c.worker, executions.c.cancel_requested
        )
    ).all()
    held = {(row.namespace, row.id, row.worker): bool(row.cancel_requested) for row in renewed}
    renewals = []
    for leases in batches:
        kept = {(h.namespace, h.execution_id, h.worker): h.execution_id for h in leases}
        renewals.append(
            LeaseRenewal(
                cancelled=frozenset(i for key, i in kept.items() if held.get(key)),
                lost=frozenset(i for key, i in kept.items() if key not in held),
            )
        )
    return renewals


# Taking on PostgreSQL in ONE statement, for every session with room. Sessions that may take the
# same work (the same queues, tasks and namespaces) form a class; each class picks its oldest due
# candidates, locked with SKIP LOCKED, a few more than its sessions' room (a serial turn or a
# limit may hold some back); an earlier class's first picks, as many as its room, are left out
# of a later one's. A candidate picked by two classes goes to the one whose room it is within,
# else to the earlier. Admission is the local claim's (`sql_queue._claim_sql`), stage by
# stage in due order over all the candidates: a plain take starts only candidates that need no
# decision and says whether it saw others, then the store takes again admitting, under the
# advisory lock every admitting take holds (`lock_admission`). With a namespace limit every take
# admits, and holds the local claim's admission lock too: a namespace's RUNNING executions, local
# and remote, plus the candidates ranked before one stay within the limit, counted with no other
# admitting claim or take between the count and the commit; namespaces at their limit are left
# out of the candidates (their backlog must not hold up the others'). The admitted candidates of a class
# go to its sessions' free slots in turn, the session with the most room first (slot k of every
# session before slot k + 1 of any), each started under its session's `worker`, its event
# inserted by a CTE, its job read with it. (Kept short: psycopg caches the parsing of a
# statement of at most 4,096 bytes.)
_ADMISSION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('cronwire:remote-admission'))"
_PICKED = "namespace, id, job_id, schedule_id, serial, backfill_id, group_limit, due_time, scheduled_time"
_DECIDED = f"{_PICKED}, k, max_concurrency"
_SESSION = "remote_session"
# The executions' columns the take returns: all but their output (empty while queued).
_RETURNED = [c for c in executions.c if c.name != "output"]


def _picked_sql(k: int, *, limited: bool) -> str:
    """The candidates of class `k` (its parameters are suffixed with it)."""
    room = " AND e.namespace NOT IN (SELECT namespace FROM at_limit)" if limited else ""
    earlier = "".join(
        f" AND (e.namespace, e.id) NOT IN (SELECT namespace, id FROM p{n} ORDER BY {_order('p' + str(n))}"
        f" LIMIT :room_{n})"
        for n in range(k)
    )
    return f"""
p{k} AS MATERIALIZED (
    SELECT {", ".join("e." + c for c in _PICKED.split(", "))}, {k} AS k
    FROM executions AS e
    WHERE e.state = '{ex.QUEUED}' AND e.due_time <= now()
      AND EXISTS (
          SELECT FROM jobs AS j
          WHERE j.namespace = e.namespace AND j.id = e.job_id AND j.executor = '{REMOTE}'
            AND coalesce(j.parameters ->> 'queue', '') = ANY(:queues_{k})
            AND (:tasks_{k} = '{{}}' OR coalesce(j.parameters ->> 'task', '') = ANY(:tasks_{k})))
      AND (:namespaces_{k} IS NULL OR e.namespace = ANY(:namespaces_{k}))
      AND NOT (e.serial AND e.schedule_id <> '' AND EXISTS (
          SELECT FROM executions AS q
          WHERE q.namespace = e.namespace AND q.schedule_id = e.schedule_id AND q.state = '{ex.QUEUED}'
            AND ({_order("q")}) < ({_order("e")}))){room}{earlier}
    ORDER BY e.due_time
    LIMIT :limit_{k}
    FOR UPDATE OF e SKIP LOCKED
),"""


def _take_sql(classes: int, *, admit: bool, limited: bool = False) -> str:
    """With `limited` (admitting only), the namespace limit `:namespace_limit` applies too."""
    assert admit or not limited, "a namespace limit is decided by an admitting take"
    picked = "".join(_picked_sql(k, limited=limited) for k in range(classes))
    if limited:
        picked = (
            f"""
at_limit AS MATERIALIZED (
    SELECT r.namespace FROM executions AS r WHERE r.state = '{ex.RUNNING}'
    GROUP BY r.namespace HAVING count(*) >= :namespace_limit
),"""
            + picked
        )
    union = " UNION ALL ".join(f"SELECT * FROM p{k}" for k in range(classes))
    saturated = " OR ".join(f"(SELECT count(*) FROM p{k}) >= :limit_{k}" for k in range(classes))
    if admit:
        decided = admission_steps(_DECIDED, "c")
        if limited:
            decided += f"""
namespace_room AS (
    SELECT {_DECIDED},
           {_rank("s.namespace", "s")}
           + (SELECT count(*) FROM executions AS r
              WHERE r.namespace = s.namespace AND r.state = '{ex.RUNNING}')
           <= :namespace_limit AS ok
    FROM job_room AS s WHERE s.ok
),
a AS (SELECT * FROM namespace_room WHERE ok),"""
        else:
            decided += """
a AS (SELECT * FROM job_room WHERE ok),"""
    else:
        decided = """
a AS (SELECT * FROM c WHERE NOT restricted),"""
    columns = ", ".join(f"s.{c.name}" for c in _RETURNED)
    job_columns = ", ".join(f"j.{c.name} j_{c.name}" for c in jobs.c)
    return f"""
WITH {picked}
c AS MATERIALIZED (
    SELECT DISTINCT ON (p.namespace, p.id) p.*, j.max_concurrency,
           (p.serial AND p.schedule_id <> '') OR (p.group_limit > 0 AND p.backfill_id <> '')
           OR j.max_concurrency > 0 AS restricted
    FROM (SELECT *, row_number() OVER (PARTITION BY k ORDER BY due_time, scheduled_time, id) AS n
          FROM ({union}) AS u) AS p
    JOIN jobs AS j ON j.namespace = p.namespace AND j.id = p.job_id
    ORDER BY p.namespace, p.id, p.n > (:class_rooms)[p.k + 1], p.k
),
{decided}
x AS MATERIALIZED (
    SELECT a.namespace, a.id, t.session
    FROM (SELECT namespace, id, k, row_number() OVER (PARTITION BY k ORDER BY {_order("a")}) AS n
          FROM a) AS a
    JOIN (SELECT t.k, t.session, row_number() OVER (PARTITION BY t.k ORDER BY n.n, t.room DESC, t.session) n
          FROM unnest(:classes, :rooms) WITH ORDINALITY AS t(k, room, session),
               generate_series(1, t.room) AS n(n)) AS t
      ON t.k = a.k AND t.n = a.n
),
v AS MATERIALIZED (
    SELECT coalesce((SELECT bool_or(restricted) FROM c), false) AS restricted, {saturated} AS saturated
),
s AS (
    UPDATE executions AS e
    SET state = '{ex.RUNNING}', worker = (:workers)[x.session], start_time = now(),
        lease_expires_at = now() + :lease
    FROM x
    WHERE e.namespace = x.namespace AND e.id = x.id
    RETURNING e.*, x.session AS {_SESSION}
),
w AS (
    INSERT INTO events (type, namespace, resource, job_id, schedule_id, actor, time, snapshot)
    SELECT '{EventType.EXECUTION_STARTED.value}', namespace,
           'namespaces/' || namespace || '/executions/' || id, job_id, schedule_id, '', start_time,
           jsonb_build_object('execution', {sql_events.execution_snapshot_sql("s", _SESSION)})
    FROM s ORDER BY due_time
)
SELECT v.restricted, v.saturated, s.{_SESSION}, {columns}, {job_columns}
FROM v LEFT JOIN (s JOIN jobs AS j ON j.namespace = s.namespace AND j.id = s.job_id) ON true
ORDER BY s.due_time, s.scheduled_time, s.id
"""


_TAKE_STATEMENTS: dict[tuple[int, bool, bool], sa.TextualSelect] = {}


def _take_statement(classes: int, *, admit: bool, limited: bool) -> sa.TextualSelect:
    """Built once per number of classes and variant (psycopg then prepares it)."""
    key = (classes, admit, limited)
    statement = _TAKE_STATEMENTS.get(key)
    if statement is None:
        text = sa.text(ex.compact(_take_sql(classes, admit=admit, limited=limited))).bindparams(
            sa.bindparam("classes", type_=ARRAY(sa.Integer())),
            sa.bindparam("rooms", type_=ARRAY(sa.Integer())),
            sa.bindparam("class_rooms", type_=ARRAY(sa.Integer())),
            sa.bindparam("workers", type_=ARRAY(sa.Text())),
            sa.bindparam("lease", type_=sa.Interval()),
            *(
                sa.bindparam(f"{name}_{k}", type_=ARRAY(sa.Text()))
                for k in range(classes)
                for name in ("queues", "tasks", "namespaces")
            ),
            *([sa.bindparam("namespace_limit", type_=sa.Integer())] if limited else []),
        )
        statement = text.columns(
            sa.column("restricted", sa.Boolean()),
            sa.column("saturated", sa.Boolean()),
            sa.column(_SESSION, sa.Integer()),
            *_RETURNED,
            *(sa.column(f"j_{c.name}", c.type) for c in jobs.c),
        )
        _TAKE_STATEMENTS[key] = statement
    return statement


# Candidates a class looks at beyond its sessions' room: a serial turn or a limit may hold some back.
EXTRA_CANDIDATES = 8


def take_batch(
    conn: Connection, takes: Sequence[RemoteTake], *, admit: bool, namespace_limit: int = 0
) -> tuple[RemoteTaken, bool]:
    """PostgreSQL: one statement for every take. Plain (`admit` False), it starts only executions
    that need no admission decision and says whether it saw others; admitting, it decides for
    all, and must run in a transaction after `lock_admission` (with the same `namespace_limit`).
    A `namespace_limit` (> 0) is decided by admitting takes only. Returns what was taken and
    whether candidates needing a decision were seen."""
    limited = namespace_limit > 0
    assert admit or not limited, "a namespace limit is decided by an admitting take"
    wanted = [i for i, t in enumerate(takes) if _wants(t)]
    claims: list[list[RemoteClaim]] = [[] for _ in takes]
    if not wanted:
        return RemoteTaken(claims), False
    classes: dict[tuple[Any, ...], int] = {}
    params: dict[str, Any] = {}
    session_classes, rooms, workers, class_rooms = [], [], [], []
    for index in wanted:
        t = takes[index]
        key = (t.queues, t.tasks, t.namespaces)
        k = classes.get(key)
        if k is None:
            k = classes[key] = len(classes)
            params[f"queues_{k}"] = list(t.queues)
            params[f"tasks_{k}"] = ["", *t.tasks] if t.tasks else []
            params[f"namespaces_{k}"] = None if t.namespaces is None else list(t.namespaces)
            class_rooms.append(0)
        class_rooms[k] += t.limit
        session_classes.append(k)
        rooms.append(t.limit)
        workers.append(t.worker)
    for k, room in enumerate(class_rooms):
        params[f"room_{k}"] = room
        params[f"limit_{k}"] = room + EXTRA_CANDIDATES
    lease = {t.lease for t in takes}
    assert len(lease) == 1, "one lease for every take of a batch"
    params.update(
        classes=session_classes, rooms=rooms, class_rooms=class_rooms, workers=workers, lease=lease.pop()
    )
    if limited:
        params["namespace_limit"] = namespace_limit
    rows = conn.execute(_take_statement(len(classes), admit=admit, limited=limited), params).all()
    first = rows[0]._mapping
    jobs_by_key: dict[tuple[str, str], Job] = {}
    for row in rows:
        values = row._mapping
        if values["id"] is None:  # nothing started: the verdict's row alone
            continue
        job_key = (values["namespace"], values["job_id"])
        job = jobs_by_key.get(job_key)
        if job is None:
            job = job_from_record({c.name: values[f"j_{c.name}"] for c in jobs.c})
            jobs_by_key[job_key] = job
        index = wanted[values[_SESSION] - 1]
        claims[index].append(
            RemoteClaim(
                ClaimedExecution(execution_from_row(values), job), new_lease_token(takes[index].secret)
            )
        )
    full = any(len(claims[i]) == takes[i].limit for i in wanted)
    return RemoteTaken(claims, bool(first["saturated"]) or full), bool(first["restricted"])


def lock_admission(conn: Connection, namespace_limit: int = 0) -> None:
    """In a transaction, before an admitting `take_batch`: one admitting take at a time, so that
    the running counts it decides by are not stale by another's starts. With a namespace limit,
    the local claim's admission lock too (after this one, in one round trip): a namespace's
    local and remote runs are counted together, so no admitting claim may start any between
    this take's count and its commit. (A local claim holds only its own lock: no deadlock.)"""
    if namespace_limit > 0:
        run_script(conn, [_ADMISSION_LOCK, sql_queue._ADMISSION_LOCK])
    else:
        conn.exec_driver_sql(_ADMISSION_LOCK)
