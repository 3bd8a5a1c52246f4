"""Time flags of the CLI as a user types them: relative times as their own word, dates, wall times
read in --tz, one-shot times in the past refused, cron macros."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cronwire.cli import EXIT_USAGE
from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_relative_times_as_their_own_word(cw: Run) -> None:  # noqa: F811
    assert cw("jobs", "create", "tick", "--executor", "noop").code == 0
    assert cw("schedules", "create", "hourly", "--job", "tick", "--cron", "@hourly").code == 0

    backfill = cw(
        "schedules", "backfill", "hourly", "--start", "-6h", "--end", "now", "--dry-run", "-o", "json"
    )
    assert backfill.code == 0, backfill.err
    ticks = [_time(t["fire_time"]) for t in backfill.json()["fire_times"]]
    now = datetime.now(UTC)
    assert len(ticks) in (6, 7)  # 7 only when the command ran on the hour
    assert all(now - timedelta(hours=6, minutes=1) <= t <= now for t in ticks)
    assert all(t.minute == 0 and t.second == 0 for t in ticks)

    for argv in (
        ("executions", "list", "--since", "-1h"),
        ("executions", "list", "--since", "-1h30m", "--until", "+5m"),
        ("executions", "list", "--since", "-1d", "--until", "now"),
        ("executions", "list", "--since", "2026-01-01", "--until", "2099-01-01 09:30"),
        ("schedules", "preview", "hourly", "--after", "-2h", "--count", "2"),
    ):
        listed = cw(*argv)
        assert listed.code == 0, (argv, listed.err)

    preview = cw(
        "schedules", "preview", "--cron", "@hourly", "--after", "-2h", "--count", "1", "-o", "json"
    ).json()
    first = _time(preview["fire_times"][0]["fire_time"])
    assert now - timedelta(hours=2) <= first <= now - timedelta(hours=1)

    bad = cw("executions", "list", "--since", "-6x")
    assert bad.code == EXIT_USAGE
    assert "argument --since: invalid time '-6x'" in bad.err


def test_at_is_read_in_the_time_zone(cw: Run) -> None:  # noqa: F811
    assert cw("jobs", "create", "tick", "--executor", "noop").code == 0
    created = cw(
        "schedules",
        "create",
        "newyear",
        "--job",
        "tick",
        "--at",
        "2030-01-01T09:00",
        "--tz",
        "Europe/Berlin",
        "-o",
        "json",
    )
    assert created.code == 0, created.err
    assert created.json()["trigger"] == {"at": "2030-01-01T08:00:00Z"}
    assert created.json()["next_fire_time"] == "2030-01-01T08:00:00Z"

    # An offset given wins over --tz; no --tz means UTC.
    explicit = cw(
        "schedules", "create", "explicit", "--job", "tick", "--at", "2030-01-01T09:00Z", "-o", "json"
    )
    assert explicit.json()["trigger"] == {"at": "2030-01-01T09:00:00Z"}
    # An update with a wall time and no --tz reads it in the schedule's own zone (summer: UTC+2).
    moved = cw("schedules", "update", "newyear", "--at", "2030-07-01 09:00", "-o", "json")
    assert moved.code == 0, moved.err
    assert moved.json()["trigger"] == {"at": "2030-07-01T07:00:00Z"}

    unknown = cw("schedules", "create", "x", "--job", "tick", "--at", "2030-01-01T09:00", "--tz", "Mars/Base")
    assert unknown.code == EXIT_USAGE
    assert "unknown time zone 'Mars/Base'" in unknown.err


def test_one_shot_time_in_the_past_is_refused(cw: Run) -> None:  # noqa: F811
    assert cw("jobs", "create", "tick", "--executor", "noop").code == 0
    past = cw("schedules", "create", "late", "--job", "tick", "--at", "2020-01-01T00:00:00Z")
    assert past.code == EXIT_USAGE
    assert "--at 2020-01-01T00:00:00Z is in the past" in past.err
    assert cw("schedules", "get", "late").code == 1  # nothing stored
    relative = cw("schedules", "create", "late", "--job", "tick", "--at", "-5m")
    assert relative.code == EXIT_USAGE
    assert "is in the past" in relative.err
    soon = cw("schedules", "create", "soon", "--job", "tick", "--at", "+1h", "-o", "json")
    assert soon.code == 0, soon.err
    assert _time(soon.json()["next_fire_time"]) > datetime.now(UTC) + timedelta(minutes=59)


@pytest.mark.parametrize(
    ("macro", "after", "expected"),
    [
        ("@hourly", "2030-01-01T10:20:00Z", "2030-01-01T11:00:00Z"),
        ("@daily", "2030-01-01T10:20:00Z", "2030-01-02T00:00:00Z"),
        ("@weekly", "2030-01-01T10:20:00Z", "2030-01-06T00:00:00Z"),  # a Sunday
        ("@monthly", "2030-01-01T10:20:00Z", "2030-02-01T00:00:00Z"),
        ("@yearly", "2030-01-01T10:20:00Z", "2031-01-01T00:00:00Z"),
    ],
)
def test_cron_macros(cw: Run, macro: str, after: str, expected: str) -> None:  # noqa: F811
    assert cw("jobs", "create", "tick", "--executor", "noop").code == 0
    created = cw("schedules", "create", "s", "--job", "tick", "--cron", macro, "-o", "json")
    assert created.code == 0, created.err
    assert created.json()["trigger"] == {"cron": macro}
    preview = cw("schedules", "preview", "s", "--after", after, "--count", "1", "-o", "json")
    assert preview.code == 0, preview.err
    assert preview.json()["fire_times"][0]["fire_time"] == expected
