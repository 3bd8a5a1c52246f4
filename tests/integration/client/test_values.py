"""Text forms of durations, times, enums and documents (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cronwire import (
    AllOfTrigger,
    AnyOfTrigger,
    CronTrigger,
    DateTrigger,
    ExecutionState,
    FireTime,
    IntervalTrigger,
    Job,
    MisfirePolicy,
    RetryPolicy,
)
from cronwire._documents import DocumentError, read_trigger, to_document
from cronwire._values import format_duration, format_time, parse_duration, parse_enum, parse_time

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("10m", timedelta(minutes=10)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5s", timedelta(seconds=1.5)),
        ("500ms", timedelta(milliseconds=500)),
        ("2d", timedelta(days=2)),
        ("600", timedelta(seconds=600)),
        ("600s", timedelta(seconds=600)),
        ("0", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "10x", "m", "1h 30m", "-5s", "1hh", "nan"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    "value",
    [
        timedelta(0),
        timedelta(seconds=1.5),
        timedelta(minutes=10),
        timedelta(hours=1, minutes=30),
        timedelta(days=2, seconds=1),
    ],
)
def test_format_duration_round_trips(value: timedelta) -> None:
    assert parse_duration(format_duration(value)) == value


def test_format_duration_is_short() -> None:
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    assert format_duration(timedelta(0)) == "0s"
    assert format_duration(timedelta(milliseconds=250)) == "0.25s"


def test_parse_time() -> None:
    assert parse_time("2030-01-01T00:00:00Z") == datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_time("2030-01-01T02:00:00+02:00") == datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_time("2030-01-01 00:00") == datetime(2030, 1, 1, tzinfo=UTC)  # no offset: UTC
    assert parse_time("now", NOW) == NOW
    assert parse_time("-2h", NOW) == NOW - timedelta(hours=2)
    assert parse_time("+30m", NOW) == NOW + timedelta(minutes=30)
    with pytest.raises(ValueError, match="invalid time"):
        parse_time("tomorrow")


def test_format_time() -> None:
    assert format_time(datetime(2030, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) == "2030-01-01T00:00:00Z"
    assert format_time(datetime(2030, 1, 1, 0, 0, 0, 5000, tzinfo=UTC)) == "2030-01-01T00:00:00.005000Z"


def test_parse_enum() -> None:
    assert parse_enum(MisfirePolicy, "run-once") is MisfirePolicy.RUN_ONCE
    assert parse_enum(ExecutionState, "Timed_Out") is ExecutionState.TIMED_OUT
    with pytest.raises(ValueError, match="one of skip, run-once, run-all"):
        parse_enum(MisfirePolicy, "sometimes")


def test_documents() -> None:
    job = Job(
        name="namespaces/d/jobs/j",
        executor="noop",
        timeout=timedelta(minutes=5),
        retry_policy=RetryPolicy(max_attempts=2),
        create_time=datetime(2030, 1, 1, tzinfo=UTC),
    )
    document = to_document(job)
    assert document["timeout"] == "5m"
    assert document["retry_policy"]["initial_backoff"] is None
    assert document["create_time"] == "2030-01-01T00:00:00Z"
    fire = FireTime(
        datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    )
    assert to_document(fire)["local_time"] == "2030-01-01T01:00:00+01:00"
    assert to_document(ExecutionState.LOST) == "LOST"


def test_triggers_round_trip() -> None:
    trigger = AnyOfTrigger(
        [
            CronTrigger("0 3 * * *"),
            AllOfTrigger(
                [IntervalTrigger(timedelta(hours=1)), DateTrigger(datetime(2030, 1, 1, tzinfo=UTC))]
            ),
        ]
    )
    document = to_document(trigger)
    assert document == {
        "any_of": [{"cron": "0 3 * * *"}, {"all_of": [{"every": "1h"}, {"at": "2030-01-01T00:00:00Z"}]}]
    }
    assert read_trigger(document, "trigger") == trigger


def test_read_trigger_names_the_place() -> None:
    with pytest.raises(DocumentError) as error:
        read_trigger({"any_of": [{"every": "often"}]}, "trigger")
    assert error.value.path == "trigger.any_of[0].every"
    with pytest.raises(DocumentError, match="exactly one"):
        read_trigger({"cron": "* * * * *", "every": "1m"}, "trigger")
