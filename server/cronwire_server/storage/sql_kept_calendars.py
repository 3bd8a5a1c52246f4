"""The calendars kept with a schedule, checked against the stored ones in the transaction that
writes the schedule (CreateSchedule's batch, UpdateSchedule)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.storage import sql_steps
from cronwire_server.storage.records import calendar_from_record, calendar_rules_to_json
from cronwire_server.storage.sql_driver import json_document
from cronwire_server.storage.sql_steps import Steps
from cronwire_server.storage.tables import calendars

Kept = Mapping[str, Any] | None  # a schedule's calendars as records.calendars_to_json made them


def unchanged(conn: Connection, kept: Sequence[tuple[str, Kept]]) -> list[bool]:
    """`unchanged_steps` in `conn`'s open transaction."""
    return sql_steps.run(conn, unchanged_steps(kept, conn.dialect.name == "postgresql"))


# PostgreSQL: the calendars of a batch's keys, locked (FOR SHARE) in key order.
_POSTGRES_CALENDARS = sa.text(
    "SELECT c.* FROM calendars AS c "
    "JOIN jsonb_to_recordset(CAST(:keys AS jsonb)) AS k(namespace text, id text) "
    "ON c.namespace = k.namespace AND c.id = k.id "
    "ORDER BY c.namespace, c.id FOR SHARE OF c"
).columns(*calendars.c)


def unchanged_steps(kept: Sequence[tuple[str, Kept]], postgres: bool) -> Steps[list[bool]]:
    """For each (namespace, the calendars kept with a schedule about to be written, as
    records.calendars_to_json made them), whether they are still the calendars stored
    (`sql_steps`).

    On PostgreSQL the calendar rows are locked FOR SHARE, in key order, until the caller's
    transaction ends: an UpdateCalendar (which locks its row, then the schedules that reach it)
    or DeleteCalendar of one of them waits for the schedule to be written and then sees it; one
    that came first has committed, and its change is read here. Either way no schedule keeps a
    calendar's old content."""
    wanted = sorted({(namespace, cid) for namespace, json in kept for cid in json or {}})
    if not wanted:
        return [True] * len(kept)
    if postgres:
        keys = [{"namespace": namespace, "id": cid} for namespace, cid in wanted]
        rows = yield _POSTGRES_CALENDARS, {"keys": json_document(keys)}
    else:
        keyed = sa.tuple_(calendars.c.namespace, calendars.c.id)
        rows = yield sa.select(calendars).where(keyed.in_(wanted)), {}
    stored = {(r["namespace"], r["id"]): calendar_rules_to_json(calendar_from_record(r)) for r in rows}
    return [
        all(stored.get((namespace, cid)) == rules for cid, rules in (json or {}).items())
        for namespace, json in kept
    ]
