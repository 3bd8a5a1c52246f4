"""Schedule rules: validation, next fire times, pause and resume, previews.

Every "now" here is the database's (`Store.now`), never this replica's clock: a replica whose
clock is off must store the same first fire times as any other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from cronwire_server.auth.principal import current_actor
from cronwire_server.core import calendars, triggers
from cronwire_server.core.arguments import checked_arguments
from cronwire_server.core.errors import (
    AlreadyExists,
    CalendarsChanged,
    DeadlineExceeded,
    EtagMismatch,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from cronwire_server.core.fanout import fan_out_of
from cronwire_server.core.model import (
    Calendar,
    EventType,
    Execution,
    Listing,
    OverlapPolicy,
    Page,
    Schedule,
)
from cronwire_server.core.names import schedule_name
from cronwire_server.core.optimistic import read_modify_write
from cronwire_server.storage import Store

MAX_DESCRIPTION = 2048
MAX_PREVIEW = 1000
MAX_BACKFILL = 1000
# Executions one backfill may lead to: its ticks times its job's fan-out (dependents included).
MAX_BACKFILL_EXECUTIONS = 10_000
DEFAULT_PREVIEW = 10
# A preview (or a backfill's tick list) computes in a thread, never on the event loop, and
# gives up after this long: each search is bounded by triggers.SEARCH_STEPS, but a thousand
# of them are not.
PREVIEW_TIMEOUT = 5.0
# Such threads at once per replica: each takes the GIL in turns with the event loop, so a
# flood of previews would slow the loop (health, lease renewal) down. Others wait their turn,
# within their own timeout.
PREVIEW_THREADS = 2

T = TypeVar("T")

# Writes of a schedule refused because a calendar it uses changed meanwhile, redone at most so
# many times in all (each on the calendars read again).
CALENDAR_ATTEMPTS = 5

# The fields that decide when a schedule fires; changing one recomputes next_fire_time.
TIMING_FIELDS = ("trigger", "time_zone", "start_time", "end_time")


def anchor(schedule: Schedule, now: datetime) -> datetime:
    """The instant interval ticks count from: the start time, else the creation time."""
    return schedule.start_time or schedule.create_time or now


def validate_schedule(schedule: Schedule) -> None:
    """Raise InvalidArgument naming every bad field (paths relative to the Schedule message)."""
    violations: list[FieldViolation] = []
    try:
        triggers.validate_schedule_timing(schedule)
    except InvalidArgument as error:
        violations.extend(error.violations)
    if len(schedule.description) > MAX_DESCRIPTION:
        violations.append(FieldViolation("description", f"must be at most {MAX_DESCRIPTION} characters"))
    if violations:
        raise InvalidArgument(violations)


def with_calendars(schedule: Schedule, world: dict[str, Calendar]) -> Schedule:
    """`schedule` with the calendars it names (its trigger's included) and those they name
    (`Schedule.calendars`) from `world`, its namespace's calendars; InvalidArgument naming each
    one that does not exist."""
    named = calendars.schedule_references(schedule)
    violations = [
        FieldViolation(field, f"calendar {calendar_id!r} does not exist")
        for field, calendar_id in named
        if calendar_id not in world
    ]
    if violations:
        raise InvalidArgument(violations)
    return dataclasses.replace(schedule, calendars=calendars.reach(world, [c for _, c in named]))


def next_run_time(schedule: Schedule, anchor_time: datetime) -> datetime | None:
    """The first tick from `schedule.next_fire_time` on that its calendars do not exclude; None
    when there is none within calendars.MAX_SKIPPED_STRETCHES excluded stretches (or the trigger
    ends).

    Each excluded tick's stretch (see `calendars.stretch_end`) is stepped over with one trigger
    search, so a weekend costs two searches however often the trigger fires in it.
    """
    tick = schedule.next_fire_time
    if not calendars.uses_calendars(schedule):
        return tick
    try:
        for _ in range(calendars.MAX_SKIPPED_STRETCHES):
            if tick is None or calendars.exclusion(schedule, tick) is None:
                return tick
            after = calendars.stretch_end(schedule, tick) - timedelta(microseconds=1)
            tick = triggers.next_fire_time(schedule, after, anchor_time)
    except triggers.TriggerTooExpensive:
        return tick
    return None


def shown(schedule: Schedule) -> Schedule:
    """The schedule as callers see it: its next fire time is the next tick that runs, past the
    ticks its calendars exclude (the dispatcher keeps the next tick, to record those as SKIPPED)."""
    if not calendars.uses_calendars(schedule) or schedule.next_fire_time is None:
        return schedule
    anchor_time = schedule.start_time or schedule.create_time or schedule.next_fire_time
    next_run = next_run_time(schedule, anchor_time)
    stats = schedule.stats
    if stats is not None and stats.next_run_time is not None:
        stats = dataclasses.replace(stats, next_run_time=next_run)
    return dataclasses.replace(schedule, next_fire_time=next_run, stats=stats)


def replanned(schedule: Schedule, now: datetime) -> Schedule:
    """`schedule`, given the current versions of its calendars, with its next fire time planned
    again: its trigger's next tick when the trigger reads a calendar (business days), from the
    tick it was waiting for if that is due already, else from now. Exclusions need nothing: they
    are decided at each tick, and the next fire time callers see is computed from the calendars
    kept with the schedule (`shown`). A paused schedule keeps its next fire time for its misfire
    policy."""
    if schedule.paused or not calendars.trigger_references(schedule.trigger):
        return schedule
    waiting = schedule.next_fire_time
    after = min(now, waiting - timedelta(microseconds=1)) if waiting is not None else now
    try:
        fire = triggers.next_fire_time(schedule, after, anchor(schedule, now))
    except triggers.TriggerTooExpensive:
        fire = None
    return dataclasses.replace(schedule, next_fire_time=fire)


def with_next_fire_time(schedule: Schedule, now: datetime) -> Schedule:
    return dataclasses.replace(
        schedule, next_fire_time=triggers.next_fire_time(schedule, now, anchor(schedule, now))
    )


def _with_exclusion(schedule: Schedule, time: triggers.PreviewTime) -> triggers.PreviewTime:
    """`time` saying which of the schedule's calendars excludes it, and why."""
    if not calendars.uses_calendars(schedule):
        return time
    excluded = calendars.exclusion(schedule, time.fire_time)
    if excluded is None:
        return time
    return dataclasses.replace(time, excluded_by=excluded.calendar_id, exclusion_reason=excluded.reason)


class ScheduleManager:
    """The schedule operations, over a Store."""

    def __init__(
        self, store: Store, *, max_per_namespace: int = 0, preview_timeout: float = PREVIEW_TIMEOUT
    ) -> None:
        self._store = store
        self._max_per_namespace = max_per_namespace
        self._preview_timeout = preview_timeout
        self._preview_threads = asyncio.Semaphore(PREVIEW_THREADS)

    async def _off_loop(self, work: Callable[[float], T]) -> T:
        """`work(deadline)` in a thread, given up on after the preview timeout (DEADLINE_EXCEEDED).

        `deadline` (time.monotonic()) goes down to every search step, so the thread stops too
        rather than run on after the caller has its answer.
        """
        timeout = self._preview_timeout
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                async with self._preview_threads:
                    return await asyncio.to_thread(work, deadline)
        except (TimeoutError, triggers.SearchTimedOut):
            raise DeadlineExceeded(
                f"computing the fire times took longer than {timeout:g}s; "
                "ask for fewer (count, or a shorter range) or simplify the trigger",
                reason="PREVIEW_TOO_EXPENSIVE",
            ) from None

    async def create(
        self, schedule: Schedule, *, request_id: str = "", validate_only: bool = False
    ) -> Schedule:
        validate_schedule(schedule)
        planned = await self._with_calendars(schedule)  # its calendars exist (before its job)
        job = await self._store.get_job(schedule.namespace, schedule.job_id)
        arguments = checked_arguments(job.arguments_schema, schedule.arguments)
        for attempt in range(CALENDAR_ATTEMPTS):
            if attempt:  # the calendars as they are now
                planned = await self._with_calendars(schedule)
            planned = dataclasses.replace(planned, arguments=arguments)
            now = await self._store.now()
            if planned.start_time is None:
                # Pin the anchor so interval ticks do not drift with restarts or updates.
                planned = dataclasses.replace(planned, start_time=now.replace(microsecond=0))
            if validate_only:
                return shown(await self._check_create(with_next_fire_time(planned, now), now))
            try:
                created = await self._store.create_schedule(
                    with_next_fire_time(planned, now),
                    request_id=request_id,
                    limit=self._max_per_namespace,
                    actor=current_actor(),
                )
            except CalendarsChanged:
                # A calendar it names changed after it was read: planned again on the new one.
                if attempt == CALENDAR_ATTEMPTS - 1:
                    raise
                continue
            return shown(created)
        raise AssertionError("unreachable")

    async def _with_calendars(self, schedule: Schedule) -> Schedule:
        if not calendars.schedule_references(schedule):
            return dataclasses.replace(schedule, calendars={})
        return with_calendars(schedule, await self._store.namespace_calendars(schedule.namespace))

    async def _check_create(self, schedule: Schedule, now: datetime) -> Schedule:
        """AIP-163 validate_only (the job was found already): ALREADY_EXISTS for a taken id,
        else the schedule as it would be stored; nothing is stored."""
        try:
            await self._store.get_schedule(schedule.namespace, schedule.id)
        except NotFound:
            return dataclasses.replace(schedule, create_time=now, update_time=now)
        raise AlreadyExists("schedule", schedule_name(schedule.namespace, schedule.id))

    async def get(self, namespace: str, schedule_id: str, *, with_stats: bool = False) -> Schedule:
        """The schedule; with its statistics if `with_stats` (read in the same statement)."""
        return shown(await self._store.get_schedule(namespace, schedule_id, with_stats=with_stats))

    async def list_page(self, namespace: str, page: Page, *, job_id: str = "") -> Listing[Schedule]:
        """A page of schedules, each with its statistics."""
        listing = await self._store.list_schedules(namespace, page, job_id=job_id, with_stats=True)
        return dataclasses.replace(listing, items=[shown(s) for s in listing.items])

    async def update(
        self,
        namespace: str,
        schedule_id: str,
        change: Callable[[Schedule], Schedule],
        *,
        expected_etag: str = "",
        validate_only: bool = False,
    ) -> Schedule:
        """With `validate_only`, everything is checked and the updated schedule returned unstored."""
        # The job (which a schedule cannot change) for its arguments schema.
        job_id = (await self._store.get_schedule(namespace, schedule_id)).job_id
        schema = (await self._store.get_job(namespace, job_id)).arguments_schema
        for attempt in range(CALENDAR_ATTEMPTS):
            now = await self._store.now()
            world = await self._store.namespace_calendars(namespace)

            def checked(
                current: Schedule, world: dict[str, Calendar] = world, now: datetime = now
            ) -> Schedule:
                updated = change(current)
                validate_schedule(updated)
                updated = with_calendars(updated, world)
                if updated.arguments != current.arguments:
                    updated = dataclasses.replace(
                        updated, arguments=checked_arguments(schema, updated.arguments)
                    )
                if any(getattr(updated, f) != getattr(current, f) for f in TIMING_FIELDS):
                    updated = with_next_fire_time(updated, now)
                return updated

            if validate_only:
                current = await self._store.get_schedule(namespace, schedule_id)
                if expected_etag and current.etag != expected_etag:
                    raise EtagMismatch("schedule", schedule_name(namespace, schedule_id))
                return shown(checked(current))
            try:
                return shown(await self._write(namespace, schedule_id, checked, expected_etag, attempts=1))
            except CalendarsChanged:
                # A calendar changed after `world` was read: checked again on the new calendars.
                if attempt == CALENDAR_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def pause(self, namespace: str, schedule_id: str, reason: str) -> Schedule:
        # next_fire_time is kept: the ticks from it to the resume are the misfires.
        paused = await self._write(
            namespace,
            schedule_id,
            lambda s: dataclasses.replace(s, paused=True, pause_reason=reason),
            "",
            EventType.SCHEDULE_PAUSED,
        )
        return shown(paused)

    async def resume(self, namespace: str, schedule_id: str) -> Schedule:
        now = await self._store.now()

        def resume(schedule: Schedule) -> Schedule:
            if not schedule.paused:
                return schedule
            # Ticks due before now fell while paused: the misfire policy decides on them.
            return dataclasses.replace(schedule, paused=False, pause_reason="", resumed_at=now)

        return shown(await self._write(namespace, schedule_id, resume, "", EventType.SCHEDULE_RESUMED))

    async def delete(self, namespace: str, schedule_id: str, *, expected_etag: str = "") -> None:
        await self._store.delete_schedule(
            namespace, schedule_id, expected_etag=expected_etag, actor=current_actor()
        )

    async def _write(
        self,
        namespace: str,
        schedule_id: str,
        change: Callable[[Schedule], Schedule],
        expected_etag: str,
        event_type: EventType = EventType.SCHEDULE_UPDATED,
        *,
        attempts: int = CALENDAR_ATTEMPTS,
    ) -> Schedule:
        """Read, change and write the schedule. The write is refused (CalendarsChanged) when a
        calendar kept with the schedule changed after it was read (its row then holds the new
        one): read again and redone, up to `attempts` times."""
        actor = current_actor()
        for attempt in range(attempts):
            try:
                return await read_modify_write(
                    lambda: self._store.get_schedule(namespace, schedule_id),
                    lambda schedule, etag: self._store.update_schedule(
                        schedule, expected_etag=etag, event_type=event_type, actor=actor
                    ),
                    change,
                    kind="schedule",
                    name=schedule_name(namespace, schedule_id),
                    expected_etag=expected_etag,
                )
            except CalendarsChanged:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def preview_count(count: int) -> int:
        """The number of fire times a preview asking for `count` computes."""
        if count < 0 or count > MAX_PREVIEW:
            raise InvalidArgument.field("count", f"must be between 0 and {MAX_PREVIEW}")
        return count or DEFAULT_PREVIEW

    async def preview(
        self, schedule: Schedule, after: datetime | None, count: int
    ) -> list[triggers.PreviewTime]:
        """The next `count` fire times after `after` (default now); validates an unsaved spec.

        INVALID_ARGUMENT names the trigger's field when a search spends its step budget;
        DEADLINE_EXCEEDED when the whole takes longer than the preview timeout.
        """
        now = await self._store.now()
        if schedule.create_time is None:  # unsaved: the calendars of its namespace as they are
            validate_schedule(schedule)
            schedule = await self._with_calendars(schedule)

        def compute(deadline: float) -> list[triggers.PreviewTime]:
            validate_schedule(schedule)
            times = triggers.preview(schedule, after or now, count, anchor(schedule, now), deadline=deadline)
            return [_with_exclusion(schedule, t) for t in times]

        return await self._off_loop(compute)

    async def backfill(
        self,
        namespace: str,
        schedule_id: str,
        start: datetime,
        end: datetime,
        *,
        overlap_policy: OverlapPolicy,
        max_concurrency: int,
        dry_run: bool,
        request_id: str = "",
    ) -> tuple[list[triggers.PreviewTime], list[Execution]]:
        """The ticks in [start, end), and unless `dry_run` one queued BACKFILL execution per tick.

        They run at most `max_concurrency` at once; with any overlap policy but ALLOW_ALL each
        also waits until no other execution of the schedule runs.
        """
        violations = []
        if end <= start:
            violations.append(FieldViolation("end_time", "must be after start_time"))
        now = await self._store.now()
        if end > now:
            violations.append(FieldViolation("end_time", "must not be in the future"))
        if max_concurrency < 0:
            violations.append(FieldViolation("max_concurrency", "must not be negative"))
        if violations:
            raise InvalidArgument(violations)
        schedule = await self._store.get_schedule(namespace, schedule_id)
        job = await self._store.get_job(namespace, schedule.job_id)
        try:
            # Its runs get the schedule's arguments: checked against the job's schema of today.
            checked_arguments(job.arguments_schema, schedule.arguments)
        except InvalidArgument as error:
            raise InvalidArgument(
                [
                    FieldViolation(
                        v.field,
                        f"the schedule's argument does not match the job's arguments_schema: {v.description}",
                    )
                    for v in error.violations
                ]
            ) from None
        anchor_time = anchor(schedule, now)
        # History before the schedule existed is what a backfill is for: its bounds do not apply.
        unbounded = dataclasses.replace(schedule, start_time=None, end_time=None)

        def compute(deadline: float) -> tuple[list[datetime], list[triggers.PreviewTime]]:
            ticks = list(
                triggers.fire_times_between(
                    unbounded, start, end, anchor_time, MAX_BACKFILL + 1, deadline=deadline
                )
            )
            if len(ticks) > MAX_BACKFILL:
                raise InvalidArgument.field(
                    "end_time", f"the range holds more than {MAX_BACKFILL} ticks; backfill it in parts"
                )
            described = [
                _with_exclusion(
                    unbounded, triggers.describe_fire_time(unbounded, tick, anchor_time, deadline=deadline)
                )
                for tick in ticks
            ]
            # The ticks the schedule's calendars exclude are reported, not run.
            return [d.fire_time for d in described if not d.excluded_by], described

        ticks, previews = await self._off_loop(compute)
        fan_out = await fan_out_of(self._store, namespace, schedule.job_id) if ticks else 1
        if len(ticks) * fan_out > MAX_BACKFILL_EXECUTIONS:
            raise InvalidArgument.field(
                "end_time",
                f"the range holds {len(ticks)} ticks and each run of job {schedule.job_id!r} leads to "
                f"{fan_out} executions through its dependents: {len(ticks) * fan_out} in all, more than "
                f"{MAX_BACKFILL_EXECUTIONS}; backfill it in parts",
            )
        if dry_run or not ticks:
            return previews, []
        executions = await self._store.backfill(
            schedule,
            ticks,
            serial=overlap_policy is not OverlapPolicy.ALLOW_ALL,
            max_concurrency=max_concurrency or 1,
            request_id=request_id,
            actor=current_actor(),
        )
        return previews, executions
