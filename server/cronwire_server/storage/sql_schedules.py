"""Schedules in SQL: the statements that read a schedule (alone, or with its statistics in one
statement), and the error a schedule write that broke a constraint stands for.

Statements are built once, at import: the hot path only binds values. The key, event and
missing-row handling schedule writes share with job writes are `sql_jobs`'.
"""

from __future__ import annotations

from typing import NoReturn

import sqlalchemy as sa
from sqlalchemy import exc

from cronwire_server.core import errors
from cronwire_server.core.model import Schedule
from cronwire_server.core.names import job_name, schedule_name
from cronwire_server.storage import sql_engine
from cronwire_server.storage.sql_jobs import counted
from cronwire_server.storage.tables import schedules

GET_SCHEDULE = sa.select(schedules).where(
    schedules.c.namespace == sa.bindparam("namespace"), schedules.c.id == sa.bindparam("id")
)

_SCHEDULE_COUNTED, _SCHEDULE_STATS = counted(schedules, "schedule")
SCHEDULES_WITH_STATS = sa.select(schedules, *_SCHEDULE_STATS).select_from(_SCHEDULE_COUNTED)
GET_SCHEDULE_WITH_STATS = SCHEDULES_WITH_STATS.where(
    schedules.c.namespace == sa.bindparam("namespace"), schedules.c.id == sa.bindparam("id")
)


def raise_schedule_conflict(error: exc.IntegrityError, schedule: Schedule) -> NoReturn:
    violated = sql_engine.violated(error)
    if violated == "foreign_key":
        raise errors.NotFound("job", job_name(schedule.namespace, schedule.job_id)) from error
    if violated == "unique":
        raise errors.AlreadyExists("schedule", schedule_name(schedule.namespace, schedule.id)) from error
    raise error
