"""The calendars kept with a schedule, checked against the stored ones in the transaction that
writes the schedule (CreateSchedule's batch, UpdateSchedule)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cronwire_server.storage.records import calendar_from_record, calendar_rules_to_json
from cronwire_server.storage.tables import calendars


def unchanged(conn: Connection, kept: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[bool]:
    """For each (namespace, the calendars kept with a schedule about to be written, as
    records.calendars_to_json made them), whether they are still the calendars stored.

    On PostgreSQL the calendar rows are locked FOR SHARE, in key order, until the caller's
    transaction ends: an UpdateCalendar (which locks its row, then the schedules that reach it)
    or DeleteCalendar of one of them waits for the schedule to be written and then sees it; one
    that came first has committed, and its change is read here. Either way no schedule keeps a
    calendar's old content."""
    wanted = sorted({(namespace, cid) for namespace, json in kept for cid in json or {}})
    if not wanted:
        return [True] * len(kept)
    query = sa.select(calendars).where(sa.tuple_(calendars.c.namespace, calendars.c.id).in_(wanted))
    if conn.dialect.name == "postgresql":
        query = query.order_by(calendars.c.namespace, calendars.c.id).with_for_update(read=True)
    stored = {
        (row.namespace, row.id): calendar_rules_to_json(calendar_from_record(row._mapping))
        for row in conn.execute(query)
    }
    return [
        all(stored.get((namespace, cid)) == rules for cid, rules in (json or {}).items())
        for namespace, json in kept
    ]
