"""Calendars in SQL: their rows, and the calendars kept with the schedules that reach them.

Synchronous SQLAlchemy Core work, run by `SqlStore` on its engine (see `SqlStore._run`).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from cronwire_server.core import calendars as rules
from cronwire_server.core import errors
from cronwire_server.core.model import Calendar, EventType, Schedule
from cronwire_server.core.names import calendar_name, schedule_name
from cronwire_server.storage import sql_creates, sql_events
from cronwire_server.storage.records import (
    calendar_fields,
    calendar_from_record,
    calendars_to_json,
    schedule_from_record,
)
from cronwire_server.storage.sql_executions import emit
from cronwire_server.storage.tables import calendars, request_ids, schedules

METHOD_CREATE = "CreateCalendar"
# A schedule that reaches a changed calendar, with the calendars as they are now -> the same
# schedule with its next fire time planned again (core.schedules.replanned).
Replanner = Callable[[Schedule, datetime], Schedule]


def _new_etag() -> str:
    return secrets.token_hex(8)


def _key(table: sa.Table, namespace: str, calendar_id: str) -> list[sa.ColumnElement[bool]]:
    return [table.c.namespace == namespace, table.c.id == calendar_id]


def create(conn: Connection, cal: Calendar, request_id: str, now: Any) -> Row[Any] | str:
    """Insert the calendar (and its request id); the row, or the id a retried request made."""
    if request_id:
        earlier = sql_creates.recorded(conn, cal.namespace, request_id, METHOD_CREATE)
        if earlier is not None:
            return earlier
    exists = conn.execute(sa.select(calendars.c.id).where(*_key(calendars, cal.namespace, cal.id))).first()
    if exists is not None:
        raise errors.AlreadyExists("calendar", calendar_name(cal.namespace, cal.id))
    values = {
        "namespace": cal.namespace,
        "id": cal.id,
        **calendar_fields(cal),
        "create_time": now,
        "update_time": now,
        "etag": _new_etag(),
    }
    row = conn.execute(sa.insert(calendars).values(values).returning(*calendars.c)).one()
    _event(conn, EventType.CALENDAR_CREATED, cal.namespace, cal.id, row.create_time)
    if request_id:
        conn.execute(
            sa.insert(request_ids).values(
                namespace=cal.namespace,
                request_id=request_id,
                method=METHOD_CREATE,
                resource_id=cal.id,
                create_time=row.create_time,
            )
        )
    return row


def get(conn: Connection, namespace: str, calendar_id: str) -> Calendar:
    row = conn.execute(sa.select(calendars).where(*_key(calendars, namespace, calendar_id))).one_or_none()
    if row is None:
        raise errors.NotFound("calendar", calendar_name(namespace, calendar_id))
    return calendar_from_record(row._mapping)


def of_namespace(conn: Connection, namespace: str) -> dict[str, Calendar]:
    rows = conn.execute(sa.select(calendars).where(calendars.c.namespace == namespace)).all()
    return {row.id: calendar_from_record(row._mapping) for row in rows}


def update(conn: Connection, cal: Calendar, expected_etag: str, replan: Replanner, now: datetime) -> Row[Any]:
    """UPDATE the calendar if the etag matches, then refresh the calendars kept with every
    schedule of the namespace that reaches it and plan its next fire time again (`replan`), in
    the caller's transaction."""
    where = _key(calendars, cal.namespace, cal.id)
    if expected_etag:
        where.append(calendars.c.etag == expected_etag)
    values = {**calendar_fields(cal), "update_time": now, "etag": _new_etag()}
    row = conn.execute(
        sa.update(calendars).where(*where).values(values).returning(*calendars.c)
    ).one_or_none()
    if row is None:
        if conn.execute(sa.select(calendars.c.id).where(*_key(calendars, cal.namespace, cal.id))).first():
            raise errors.EtagMismatch("calendar", calendar_name(cal.namespace, cal.id))
        raise errors.NotFound("calendar", calendar_name(cal.namespace, cal.id))
    # The schedules are locked before the calendars are read: an update of another calendar that
    # got to them first has committed by then, and its change is read here too.
    using = conn.execute(
        sa.select(schedules)
        .where(schedules.c.namespace == cal.namespace, schedules.c.calendars.is_not(None))
        .order_by(schedules.c.namespace, schedules.c.id)
        .with_for_update()
    ).all()
    _event(conn, EventType.CALENDAR_UPDATED, cal.namespace, cal.id, row.update_time)
    world = of_namespace(conn, cal.namespace)
    for record in using:
        schedule = schedule_from_record(record._mapping)
        if cal.id not in schedule.calendars:
            continue
        reached = rules.reach(world, [c for _, c in rules.schedule_references(schedule)])
        planned = replan(dataclasses.replace(schedule, calendars=reached), now)
        conn.execute(
            sa.update(schedules)
            .where(schedules.c.namespace == schedule.namespace, schedules.c.id == schedule.id)
            .values(
                calendars=calendars_to_json(reached) if reached else None,
                next_fire_time=planned.next_fire_time,
            )
        )
    return row


def _event(conn: Connection, kind: EventType, namespace: str, calendar_id: str, when: datetime) -> None:
    """Queue the calendar's event, written with the transaction (no snapshot: read the calendar)."""
    emit(conn, [sql_events.row(kind, namespace, calendar_name(namespace, calendar_id), when)])


def delete(conn: Connection, namespace: str, calendar_id: str, expected_etag: str, now: datetime) -> None:
    """DELETE the calendar unless a schedule or another calendar names it."""
    name = calendar_name(namespace, calendar_id)
    if conn.dialect.name == "postgresql":
        # Locked first: a schedule written with it meanwhile (which holds it FOR SHARE, see
        # sql_kept_calendars) has committed before the schedules are read below, and one written after
        # finds it gone.
        conn.execute(
            sa.select(calendars.c.id).where(*_key(calendars, namespace, calendar_id)).with_for_update()
        )
    others = [c for c in of_namespace(conn, namespace).values() if calendar_id in rules.references(c)]
    if others:
        raise errors.FailedPrecondition(
            f"calendar {name!r} is named by calendar {others[0].name!r}; change that one first",
            reason="CALENDAR_IN_USE",
        )
    for record in conn.execute(
        sa.select(schedules).where(schedules.c.namespace == namespace, schedules.c.calendars.is_not(None))
    ).all():
        schedule = schedule_from_record(record._mapping)
        if calendar_id in {c for _, c in rules.schedule_references(schedule)}:
            raise errors.FailedPrecondition(
                f"calendar {name!r} is named by schedule {schedule_name(namespace, schedule.id)!r}; "
                "change or delete that schedule first",
                reason="CALENDAR_IN_USE",
            )
    where = _key(calendars, namespace, calendar_id)
    if expected_etag:
        where.append(calendars.c.etag == expected_etag)
    if conn.execute(sa.delete(calendars).where(*where).returning(calendars.c.id)).first() is None:
        if conn.execute(sa.select(calendars.c.id).where(*_key(calendars, namespace, calendar_id))).first():
            raise errors.EtagMismatch("calendar", name)
        raise errors.NotFound("calendar", name)
    _event(conn, EventType.CALENDAR_DELETED, namespace, calendar_id, now)
