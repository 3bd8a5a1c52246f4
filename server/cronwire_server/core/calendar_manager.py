"""Calendar operations over a Store: validation against the namespace's other calendars, optimistic
updates, previews. What a calendar holds is decided in `calendars.py`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import UTC

from cronwire_server.auth.principal import current_actor
from cronwire_server.core import calendars
from cronwire_server.core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    EtagMismatch,
    InvalidArgument,
    NotFound,
)
from cronwire_server.core.model import Calendar, Listing, Page
from cronwire_server.core.names import calendar_name
from cronwire_server.core.optimistic import read_modify_write
from cronwire_server.core.schedules import replanned
from cronwire_server.storage import Store

# A year view computes in a thread and gives up after this long.
PREVIEW_TIMEOUT = 5.0


class CalendarManager:
    def __init__(self, store: Store, *, preview_timeout: float = PREVIEW_TIMEOUT) -> None:
        self._store = store
        self._preview_timeout = preview_timeout

    async def _checked(self, cal: Calendar) -> Calendar:
        """`cal` if its fields and the calendars it names are fine; else InvalidArgument naming
        the field."""
        calendars.validate_calendar(cal)
        if calendars.references(cal):
            calendars.check_references(cal, await self._store.namespace_calendars(cal.namespace))
        return cal

    async def create(self, cal: Calendar, *, request_id: str = "", validate_only: bool = False) -> Calendar:
        await self._checked(cal)
        if not validate_only:
            return await self._store.create_calendar(cal, request_id=request_id, actor=current_actor())
        try:
            await self._store.get_calendar(cal.namespace, cal.id)
        except NotFound:
            now = await self._store.now()
            return dataclasses.replace(cal, create_time=now, update_time=now)
        raise AlreadyExists("calendar", calendar_name(cal.namespace, cal.id))

    async def get(self, namespace: str, calendar_id: str) -> Calendar:
        return await self._store.get_calendar(namespace, calendar_id)

    async def list_page(self, namespace: str, page: Page) -> Listing[Calendar]:
        return await self._store.list_calendars(namespace, page)

    async def update(
        self,
        namespace: str,
        calendar_id: str,
        change: Callable[[Calendar], Calendar],
        *,
        expected_etag: str = "",
        validate_only: bool = False,
    ) -> Calendar:
        """Change the calendar; the schedules that reach it follow in the same transaction."""
        name = calendar_name(namespace, calendar_id)
        if validate_only:
            current = await self._store.get_calendar(namespace, calendar_id)
            if expected_etag and current.etag != expected_etag:
                raise EtagMismatch("calendar", name)
            return await self._checked(change(current))
        actor = current_actor()

        async def verify(cal: Calendar) -> None:
            await self._checked(cal)

        return await read_modify_write(
            lambda: self._store.get_calendar(namespace, calendar_id),
            lambda cal, etag: self._store.update_calendar(
                cal, expected_etag=etag, replan=replanned, actor=actor
            ),
            change,
            kind="calendar",
            name=name,
            expected_etag=expected_etag,
            verify=verify,
        )

    async def delete(self, namespace: str, calendar_id: str, *, expected_etag: str = "") -> None:
        await self._store.delete_calendar(
            namespace, calendar_id, expected_etag=expected_etag, actor=current_actor()
        )

    @staticmethod
    def preview_year(year: int) -> int:
        """The year a preview asking for `year` shows (0: the current one); InvalidArgument
        naming `year` out of range."""
        if year and not calendars.FIRST_YEAR <= year <= calendars.LAST_YEAR:
            raise InvalidArgument.field(
                "year", f"must be between {calendars.FIRST_YEAR} and {calendars.LAST_YEAR}, or 0"
            )
        return year

    async def preview(self, cal: Calendar, year: int) -> tuple[int, list[calendars.CalendarDay]]:
        """The days of `year` (0: the current one, in the calendar's zone) that `cal` holds; `cal`
        may be unsaved (then validated first)."""
        calendars.validate_calendar(cal)
        world = await self._store.namespace_calendars(cal.namespace)
        world = calendars.check_references(cal, world) if calendars.references(cal) else {cal.id: cal}
        if not year:
            year = (await self._store.now()).astimezone(UTC).astimezone(calendars.zone(cal.time_zone)).year

        def compute() -> list[calendars.CalendarDay]:
            return list(calendars.year_days(world, cal.id, year))

        try:
            async with asyncio.timeout(self._preview_timeout):
                return year, await asyncio.to_thread(compute)
        except TimeoutError:
            raise DeadlineExceeded(
                f"computing the calendar's days took longer than {self._preview_timeout:g}s",
                reason="PREVIEW_TOO_EXPENSIVE",
            ) from None
