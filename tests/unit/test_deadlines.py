"""Deadlines of a schedule's ticks: finish_by as a wall-clock time across daylight-saving changes,
and which deadlines a tick has missed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cronwire_server.core.deadlines import Candidate, finish_deadline, misses
from cronwire_server.core.model import DeadlineKind, Deadlines

BERLIN = "Europe/Berlin"
AT_0930 = Deadlines(finish_by_local_minutes=9 * 60 + 30)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_finish_by_keeps_its_wall_time_across_the_spring_change() -> None:
    # Saturday 2027-03-27 23:00 CET (22:00 UTC); clocks go forward on Sunday at 02:00.
    tick = utc(2027, 3, 27, 22, 0)
    # Sunday 09:30 CEST is 07:30 UTC: a fixed 24-hour step from Saturday's 09:30 CET would be 08:30.
    assert finish_deadline(AT_0930, tick, BERLIN) == utc(2027, 3, 28, 7, 30)


def test_finish_by_keeps_its_wall_time_across_the_autumn_change() -> None:
    tick = utc(2027, 10, 30, 22, 0)  # Sunday 00:00 CEST; clocks go back at 03:00
    assert finish_deadline(AT_0930, tick, BERLIN) == utc(2027, 10, 31, 8, 30)  # 09:30 CET


def test_a_skipped_wall_time_falls_after_the_jump_and_a_repeated_one_on_its_first_occurrence() -> None:
    at_0230 = Deadlines(finish_by_local_minutes=2 * 60 + 30)
    # 02:30 does not exist on 2027-03-28 in Berlin: read with the offset before (+01:00) -> 01:30 UTC,
    # which is 03:30 CEST.
    assert finish_deadline(at_0230, utc(2027, 3, 27, 23, 0), BERLIN) == utc(2027, 3, 28, 1, 30)
    # 02:30 happens twice on 2027-10-31: the first (CEST, +02:00) is 00:30 UTC.
    assert finish_deadline(at_0230, utc(2027, 10, 30, 23, 0), BERLIN) == utc(2027, 10, 31, 0, 30)


def test_finish_by_is_the_first_such_time_after_the_tick() -> None:
    # A tick at 09:00 local must end by 09:30 the same day; one at 10:00, by 09:30 the next day.
    assert finish_deadline(AT_0930, utc(2027, 6, 1, 7, 0), BERLIN) == utc(2027, 6, 1, 7, 30)
    assert finish_deadline(AT_0930, utc(2027, 6, 1, 8, 0), BERLIN) == utc(2027, 6, 2, 7, 30)
    after = Deadlines(finish_by_after=timedelta(minutes=45))
    assert finish_deadline(after, utc(2027, 6, 1, 8, 0), BERLIN) == utc(2027, 6, 1, 8, 45)
    assert finish_deadline(Deadlines(), utc(2027, 6, 1, 8, 0), BERLIN) is None


def test_which_deadlines_a_tick_has_missed() -> None:
    tick = utc(2027, 6, 1, 8, 0)
    deadlines = Deadlines(
        start_within=timedelta(minutes=5),
        finish_by_after=timedelta(hours=1),
        max_duration=timedelta(minutes=30),
    )
    queued = Candidate("ns", "s", "j", deadlines, "UTC", tick, execution_id="e1")
    assert list(misses(queued, tick + timedelta(minutes=4))) == []
    assert [m.kind for m in misses(queued, tick + timedelta(minutes=5))] == [DeadlineKind.START_WITHIN]
    assert [m.kind for m in misses(queued, tick + timedelta(hours=1))] == [
        DeadlineKind.START_WITHIN,
        DeadlineKind.FINISH_BY,
    ]
    running = Candidate("ns", "s", "j", deadlines, "UTC", tick, execution_id="e1", started=tick)
    (too_long,) = misses(running, tick + timedelta(minutes=31))
    assert too_long.kind is DeadlineKind.MAX_DURATION
    assert too_long.deadline == tick + timedelta(minutes=30)
    assert too_long.execution_id == "e1"
