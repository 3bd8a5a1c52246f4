"""ScheduleService over a real channel, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format

from cronwire.v1 import job_pb2, job_service_pb2, schedule_pb2, schedule_service_pb2
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire.v1.schedule_service_pb2_grpc import ScheduleServiceStub
from tests.integration.api.test_job_service import expect_error

PARENT = "namespaces/ops"
JOB = f"{PARENT}/jobs/backup"
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
async def job(jobs: JobServiceStub) -> job_pb2.Job:
    request = job_service_pb2.CreateJobRequest(
        parent=PARENT, job_id="backup", job=job_pb2.Job(executor="noop")
    )
    return (await jobs.CreateJob(request)).job


def spec(**fields: Any) -> schedule_pb2.Schedule:
    base = {"job": JOB, "trigger": {"cron": {"expression": "0 9 * * 1-5"}}, "timeZone": "Europe/Berlin"}
    return json_format.ParseDict({**base, **fields}, schedule_pb2.Schedule())


async def create(schedules: ScheduleServiceStub, schedule_id: str, **fields: Any) -> schedule_pb2.Schedule:
    request = schedule_service_pb2.CreateScheduleRequest(
        parent=PARENT, schedule_id=schedule_id, schedule=spec(**fields)
    )
    return (await schedules.CreateSchedule(request)).schedule


@pytest.mark.usefixtures("job")
async def test_create_fills_defaults_and_the_next_fire_time(schedules: ScheduleServiceStub) -> None:
    created = await create(schedules, "weekday-9am", arguments={"full": True})
    assert created.name == f"{PARENT}/schedules/weekday-9am"
    assert created.misfire_policy == schedule_pb2.MISFIRE_POLICY_RUN_ONCE
    assert created.overlap_policy == schedule_pb2.OVERLAP_POLICY_SKIP
    assert created.catchup_window.seconds == 3600
    fire = created.next_fire_time.ToDatetime(tzinfo=UTC)
    local = fire.astimezone(BERLIN)
    assert fire > datetime.now(UTC)
    assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True)
    got = (await schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=created.name))).schedule
    assert got.stats.next_run_time == created.next_fire_time
    got.ClearField("stats")
    assert got == created
    assert json_format.MessageToDict(got.arguments) == {"full": True}


@pytest.mark.usefixtures("job")
async def test_every_trigger_kind_round_trips(schedules: ScheduleServiceStub) -> None:
    trigger = {
        "anyOf": {
            "triggers": [
                {"cron": {"expression": "*/10 * * * * *", "dstPolicy": "DST_POLICY_SKIP"}},
                {"interval": {"every": "90s"}},
                {
                    "allOf": {
                        "triggers": [
                            {"cron": {"expression": "0 0 * * *", "dstPolicy": "DST_POLICY_DEBIAN"}},
                            {"date": {"runTime": "2030-01-01T00:00:00Z"}},
                        ]
                    }
                },
            ]
        }
    }
    created = await create(schedules, "combo", trigger=trigger, jitter="5s", startTime="2026-01-01T00:00:00Z")
    assert json_format.MessageToDict(created.trigger) == trigger
    assert created.jitter.seconds == 5
    assert created.HasField("next_fire_time")


async def test_schedule_for_a_missing_job_is_not_found(schedules: ScheduleServiceStub) -> None:
    _, reason = await expect_error(create(schedules, "orphan"), grpc.StatusCode.NOT_FOUND)
    assert reason == "JOB_NOT_FOUND"


@pytest.mark.usefixtures("job")
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"trigger": {"cron": {"expression": "61 9 * * *"}}}, "schedule.trigger.cron.expression"),
        ({"trigger": {"cron": {"expression": "0 9 * *"}}}, "schedule.trigger.cron.expression"),
        ({"timeZone": "Mars/Olympus_Mons"}, "schedule.time_zone"),
        ({"trigger": {"interval": {"every": "0s"}}}, "schedule.trigger.interval.every"),
        ({"trigger": {}}, "schedule.trigger"),
        ({"job": "backup"}, "schedule.job"),
        ({"startTime": "2030-01-02T00:00:00Z", "endTime": "2030-01-01T00:00:00Z"}, "schedule.end_time"),
    ],
)
async def test_bad_schedule_names_the_field_and_stores_nothing(
    schedules: ScheduleServiceStub, fields: dict[str, Any], field: str
) -> None:
    violations, reason = await expect_error(
        create(schedules, "bad", **fields), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert field in violations, violations
    assert reason
    listed = await schedules.ListSchedules(schedule_service_pb2.ListSchedulesRequest(parent=PARENT))
    assert list(listed.schedules) == []


async def test_list_filters_by_job_and_pages(jobs: JobServiceStub, schedules: ScheduleServiceStub) -> None:
    for job_id in ("backup", "report"):
        await jobs.CreateJob(
            job_service_pb2.CreateJobRequest(parent=PARENT, job_id=job_id, job=job_pb2.Job(executor="noop"))
        )
    for index in range(3):
        await create(schedules, f"b{index}")
    await create(schedules, "r0", job=f"{PARENT}/jobs/report")
    first = await schedules.ListSchedules(
        schedule_service_pb2.ListSchedulesRequest(parent=PARENT, job=JOB, page_size=2)
    )
    second = await schedules.ListSchedules(
        schedule_service_pb2.ListSchedulesRequest(
            parent=PARENT, job=JOB, page_size=2, page_token=first.next_page_token
        )
    )
    assert [s.name.rsplit("/", 1)[1] for s in [*first.schedules, *second.schedules]] == ["b0", "b1", "b2"]
    assert second.next_page_token == ""
    everything = await schedules.ListSchedules(schedule_service_pb2.ListSchedulesRequest(parent=PARENT))
    assert len(everything.schedules) == 4


@pytest.mark.usefixtures("job")
async def test_update_recomputes_the_next_fire_time(schedules: ScheduleServiceStub) -> None:
    created = await create(schedules, "move")
    change = spec(name=created.name, trigger={"cron": {"expression": "30 18 * * *"}})
    updated = (
        await schedules.UpdateSchedule(
            schedule_service_pb2.UpdateScheduleRequest(
                schedule=change, update_mask=field_mask_pb2.FieldMask(paths=["trigger"])
            )
        )
    ).schedule
    local = updated.next_fire_time.ToDatetime(tzinfo=UTC).astimezone(BERLIN)
    assert (local.hour, local.minute) == (18, 30)
    assert updated.time_zone == "Europe/Berlin"
    assert updated.etag != created.etag

    stale = spec(name=created.name, description="late", etag=created.etag)
    _, reason = await expect_error(
        schedules.UpdateSchedule(schedule_service_pb2.UpdateScheduleRequest(schedule=stale)),
        grpc.StatusCode.ABORTED,
    )
    assert reason == "ETAG_MISMATCH"
    moved = spec(name=created.name, job=f"{PARENT}/jobs/other")
    violations, _ = await expect_error(
        schedules.UpdateSchedule(schedule_service_pb2.UpdateScheduleRequest(schedule=moved)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "schedule.job" in violations
    bad = spec(name=created.name, timeZone="Nowhere/Land")
    violations, _ = await expect_error(
        schedules.UpdateSchedule(schedule_service_pb2.UpdateScheduleRequest(schedule=bad)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "schedule.time_zone" in violations


@pytest.mark.usefixtures("job")
async def test_pause_and_resume(schedules: ScheduleServiceStub) -> None:
    created = await create(schedules, "pausable")
    paused = (
        await schedules.PauseSchedule(
            schedule_service_pb2.PauseScheduleRequest(name=created.name, reason="maintenance")
        )
    ).schedule
    assert paused.paused
    assert paused.pause_reason == "maintenance"
    assert not paused.HasField("next_fire_time")
    got = (await schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=created.name))).schedule
    assert got.paused
    resumed = (
        await schedules.ResumeSchedule(schedule_service_pb2.ResumeScheduleRequest(name=created.name))
    ).schedule
    assert not resumed.paused
    assert resumed.pause_reason == ""
    assert resumed.HasField("next_fire_time")


@pytest.mark.usefixtures("job")
async def test_create_paused(schedules: ScheduleServiceStub) -> None:
    created = await create(schedules, "born-paused", paused=True)
    assert created.paused
    assert not created.HasField("next_fire_time")


@pytest.mark.usefixtures("job")
async def test_delete(schedules: ScheduleServiceStub) -> None:
    created = await create(schedules, "gone")
    await expect_error(
        schedules.DeleteSchedule(schedule_service_pb2.DeleteScheduleRequest(name=created.name, etag="old")),
        grpc.StatusCode.ABORTED,
    )
    await schedules.DeleteSchedule(schedule_service_pb2.DeleteScheduleRequest(name=created.name))
    await expect_error(
        schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=created.name)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_preview_across_spring_forward_keeps_nine_o_clock_berlin(
    schedules: ScheduleServiceStub,
) -> None:
    request = schedule_service_pb2.PreviewScheduleRequest(schedule=spec(), count=5)
    request.after_time.FromDatetime(datetime(2027, 3, 24, 12, tzinfo=UTC))
    response = await schedules.PreviewSchedule(request)
    assert response.time_zone == "Europe/Berlin"
    times = [t.fire_time.ToDatetime(tzinfo=UTC) for t in response.fire_times]
    assert [t.astimezone(BERLIN).hour for t in times] == [9] * 5
    assert [(t.day, t.hour) for t in times] == [(25, 8), (26, 8), (29, 7), (30, 7), (31, 7)]
    assert [t.local_time for t in response.fire_times][2] == "2027-03-29T09:00:00+02:00"
    assert not any(t.in_dst_gap or t.in_dst_fold for t in response.fire_times)


async def test_preview_flags_a_time_in_the_autumn_fold(schedules: ScheduleServiceStub) -> None:
    request = schedule_service_pb2.PreviewScheduleRequest(
        schedule=spec(trigger={"cron": {"expression": "30 2 * * *"}}), count=3
    )
    request.after_time.FromDatetime(datetime(2027, 10, 30, 12, tzinfo=UTC))
    response = await schedules.PreviewSchedule(request)
    flagged = [t.local_time for t in response.fire_times if t.in_dst_fold]
    assert flagged == ["2027-10-31T02:30:00+02:00"]


@pytest.mark.usefixtures("job")
async def test_preview_of_a_stored_schedule_and_bad_requests(schedules: ScheduleServiceStub) -> None:
    created = await create(
        schedules, "stored", trigger={"interval": {"every": "3600s"}}, startTime="2030-01-01T00:00:00Z"
    )
    request = schedule_service_pb2.PreviewScheduleRequest(name=created.name, count=3)
    response = await schedules.PreviewSchedule(request)
    assert [t.local_time for t in response.fire_times] == [
        "2030-01-01T01:00:00+01:00",
        "2030-01-01T02:00:00+01:00",
        "2030-01-01T03:00:00+01:00",
    ]
    violations, _ = await expect_error(
        schedules.PreviewSchedule(schedule_service_pb2.PreviewScheduleRequest(name=created.name, count=5000)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "count" in violations
    violations, _ = await expect_error(
        schedules.PreviewSchedule(
            schedule_service_pb2.PreviewScheduleRequest(
                schedule=spec(trigger={"cron": {"expression": "bad"}})
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "schedule.trigger.cron.expression" in violations
    await expect_error(
        schedules.PreviewSchedule(
            schedule_service_pb2.PreviewScheduleRequest(name=f"{PARENT}/schedules/none")
        ),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # The 02:30 run of the spring change: at the jump, flagged, or not at all.
        (None, [("2027-03-28T01:30:00+01:00", False), ("2027-03-28T03:00:00+02:00", True)]),
        ("DST_POLICY_DEBIAN", [("2027-03-28T01:30:00+01:00", False), ("2027-03-28T03:00:00+02:00", True)]),
        ("DST_POLICY_SKIP", [("2027-03-28T01:30:00+01:00", False), ("2027-03-28T03:30:00+02:00", False)]),
    ],
)
async def test_preview_shows_the_dst_policy_in_the_spring_gap(
    schedules: ScheduleServiceStub, policy: str | None, expected: list[tuple[str, bool]]
) -> None:
    cron: dict[str, Any] = {"expression": "30 0-4 * * *"}
    if policy is not None:
        cron["dstPolicy"] = policy
    request = schedule_service_pb2.PreviewScheduleRequest(schedule=spec(trigger={"cron": cron}), count=3)
    request.after_time.FromDatetime(datetime(2027, 3, 28, 0, 0, tzinfo=UTC))  # 01:00 in Berlin
    response = await schedules.PreviewSchedule(request)
    assert [(t.local_time, t.in_dst_gap) for t in response.fire_times][:2] == expected


async def test_preview_of_a_wildcard_minute_in_the_fold_runs_both_hours(
    schedules: ScheduleServiceStub,
) -> None:
    request = schedule_service_pb2.PreviewScheduleRequest(
        schedule=spec(trigger={"cron": {"expression": "*/30 2 * * *"}}), count=5
    )
    request.after_time.FromDatetime(datetime(2027, 10, 30, 12, tzinfo=UTC))
    response = await schedules.PreviewSchedule(request)
    assert [(t.local_time, t.in_dst_fold) for t in response.fire_times] == [
        ("2027-10-31T02:00:00+02:00", True),
        ("2027-10-31T02:30:00+02:00", True),
        ("2027-10-31T02:00:00+01:00", True),
        ("2027-10-31T02:30:00+01:00", True),
        ("2027-11-01T02:00:00+01:00", False),
    ]


@pytest.mark.usefixtures("job")
@pytest.mark.parametrize(
    ("trigger", "field", "fragment"),
    [
        (
            {"cron": {"expression": "0 0 31 2 *"}},
            "schedule.trigger.cron.expression",
            "day 31 never occurs in FEB",
        ),
        (
            {"cron": {"expression": "0 0 1 * * 8"}},
            "schedule.trigger.cron.expression",
            "day-of-week: 8 is out",
        ),
        (
            {"cron": {"expression": "30 2 * 3 0L", "dstPolicy": "DST_POLICY_SKIP"}},
            "schedule.trigger.cron.dst_policy",
            "never fires in Europe/Berlin",
        ),
        (
            {"cron": {"expression": "0 0 * * *", "dstPolicy": 9}},
            "schedule.trigger.cron.dst_policy",
            "unknown",
        ),
    ],
)
async def test_a_cron_that_cannot_fire_is_refused_naming_the_field(
    schedules: ScheduleServiceStub, trigger: dict[str, Any], field: str, fragment: str
) -> None:
    violations, _ = await expect_error(
        create(schedules, "bad", trigger=trigger), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert fragment in violations[field], violations
    listed = await schedules.ListSchedules(schedule_service_pb2.ListSchedulesRequest(parent=PARENT))
    assert list(listed.schedules) == []


@pytest.mark.usefixtures("job")
async def test_a_skip_schedule_is_stored_with_its_policy(schedules: ScheduleServiceStub) -> None:
    created = await create(
        schedules, "skip", trigger={"cron": {"expression": "@daily", "dstPolicy": "DST_POLICY_SKIP"}}
    )
    got = (await schedules.GetSchedule(schedule_service_pb2.GetScheduleRequest(name=created.name))).schedule
    assert got.trigger.cron.dst_policy == schedule_pb2.DST_POLICY_SKIP
    assert got.trigger.cron.expression == "@daily"


# --- bounded trigger arithmetic ------------------------------------------------------


def cron(expression: str) -> dict[str, Any]:
    return {"cron": {"expression": expression}}


def never_both(a: str, b: str) -> dict[str, Any]:
    return {"allOf": {"triggers": [cron(f"0 0 * * {a}"), cron(f"0 0 * * {b}")]}}


# About 150 bytes of trigger that used to hold a server's event loop for seconds per preview:
# each all_of goes round looking for a midnight that is two weekdays at once.
NESTED_TRIGGER = {
    "anyOf": {
        "triggers": [
            never_both("MON", "TUE"),
            never_both("WED", "THU"),
            never_both("FRI", "SAT"),
            never_both("SUN", "MON"),
        ]
    }
}


def nested(depth: int) -> dict[str, Any]:
    """`depth` combinations inside one another, any_of outermost, alternating with all_of."""
    trigger: dict[str, Any] = {"anyOf": {"triggers": [cron("0 0 * * *"), cron("0 12 * * *")]}}
    for level in range(depth - 1):
        kind = "allOf" if level % 2 == 0 else "anyOf"
        trigger = {kind: {"triggers": [trigger, cron("0 * * * *")]}}
    return trigger


WIDE = {"anyOf": {"triggers": [cron(f"{minute} * * * *") for minute in range(33)]}}
TOO_DEEP_FIELD = (
    "schedule.trigger.any_of.triggers[0].all_of.triggers[0].any_of.triggers[0].all_of.triggers[0].any_of"
)


@pytest.mark.usefixtures("job")
@pytest.mark.parametrize(
    ("trigger", "field", "fragment"),
    [
        (nested(5), TOO_DEEP_FIELD, "at most 4 deep"),
        (WIDE, "schedule.trigger.any_of.triggers[32]", "at most 32 crons, intervals and dates"),
        (never_both("MON", "TUE"), "schedule.trigger.all_of", "within 20000 search steps"),
        (NESTED_TRIGGER, "schedule.trigger.any_of.triggers[0].all_of", "within 20000 search steps"),
    ],
)
async def test_a_trigger_too_deep_too_wide_or_too_costly_is_refused_naming_the_field(
    schedules: ScheduleServiceStub, trigger: dict[str, Any], field: str, fragment: str
) -> None:
    assert len(json_format.ParseDict(NESTED_TRIGGER, schedule_pb2.Trigger()).SerializeToString()) < 160
    await create(schedules, "fine", trigger=nested(4))
    violations, _ = await expect_error(
        create(schedules, "bad", trigger=trigger), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert list(violations) == [field]
    assert fragment in violations[field]
    change = spec(name=f"{PARENT}/schedules/fine", trigger=trigger)
    violations, _ = await expect_error(
        schedules.UpdateSchedule(
            schedule_service_pb2.UpdateScheduleRequest(
                schedule=change, update_mask=field_mask_pb2.FieldMask(paths=["trigger"])
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert list(violations) == [field]
    preview = schedule_service_pb2.PreviewScheduleRequest(schedule=spec(trigger=trigger), count=10)
    violations, _ = await expect_error(schedules.PreviewSchedule(preview), grpc.StatusCode.INVALID_ARGUMENT)
    assert list(violations) == [field]
    listed = await schedules.ListSchedules(schedule_service_pb2.ListSchedulesRequest(parent=PARENT))
    assert [s.name for s in listed.schedules] == [f"{PARENT}/schedules/fine"]
