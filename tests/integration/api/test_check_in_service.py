"""CheckInService.UpdateCheckIn against a real server on each database: AIP-134 semantics (the
mask, the etag, validate_only, errors naming the field, nothing stored by a refused update), the
token kept, and the awaited tick planned again on the database's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cronwire.v1 import (
    checkin_pb2,
    checkin_service_pb2,
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
)
from cronwire.v1.checkin_service_pb2_grpc import CheckInServiceStub
from cronwire_server.storage.sql_store import SqlStore
from tests.support import eventually, status_details

NS = "namespaces/ops"
NAME = f"{NS}/checkIns/backup"


@pytest.fixture
def check_ins(channel: grpc.aio.Channel) -> CheckInServiceStub:
    return CheckInServiceStub(channel)


def _time(message: checkin_pb2.CheckIn, field: str) -> datetime:
    return getattr(message, field).ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


async def _create(check_ins: CheckInServiceStub) -> checkin_service_pb2.CreateCheckInResponse:
    spec = checkin_pb2.CheckIn(description="nightly", labels={"team": "data"})
    spec.trigger.cron.expression = "0 2 * * *"
    spec.grace.FromSeconds(600)
    return await check_ins.CreateCheckIn(
        checkin_service_pb2.CreateCheckInRequest(parent=NS, check_in_id="backup", check_in=spec)
    )


async def _update(
    check_ins: CheckInServiceStub, change: checkin_pb2.CheckIn, *paths: str, validate_only: bool = False
) -> checkin_pb2.CheckIn:
    change.name = change.name or NAME
    request = checkin_service_pb2.UpdateCheckInRequest(check_in=change, validate_only=validate_only)
    if paths:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=list(paths)))
    return (await check_ins.UpdateCheckIn(request)).check_in


async def _get(check_ins: CheckInServiceStub) -> checkin_pb2.CheckIn:
    return (await check_ins.GetCheckIn(checkin_service_pb2.GetCheckInRequest(name=NAME))).check_in


async def _refused(
    check_ins: CheckInServiceStub, change: checkin_pb2.CheckIn, *paths: str
) -> tuple[grpc.StatusCode, dict[str, str], str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _update(check_ins, change, *paths)
    violations, reason = status_details(refused.value)
    return refused.value.code(), violations, reason


async def test_an_update_changes_the_fields_masked_and_keeps_the_rest_and_the_token(
    check_ins: CheckInServiceStub,
) -> None:
    created = await _create(check_ins)
    pinged = (await check_ins.CheckIn(checkin_service_pb2.CheckInRequest(token=created.token))).check_in
    assert pinged.etag == created.check_in.etag  # a ping is no change of the check-in

    # Only the masked field changes, even if the message carries others.
    change = checkin_pb2.CheckIn(description="nightly, to S3", time_zone="Europe/Berlin", etag=pinged.etag)
    updated = await _update(check_ins, change, "description")
    assert updated.description == "nightly, to S3"
    assert updated.time_zone == "UTC"
    assert updated.trigger.cron.expression == "0 2 * * *"
    assert updated.grace.ToTimedelta() == timedelta(minutes=10)
    assert dict(updated.labels) == {"team": "data"}
    assert updated.next_expected_time == pinged.next_expected_time
    assert updated.last_ping_time == pinged.last_ping_time
    assert updated.last_ping_kind == checkin_pb2.CHECK_IN_PING_KIND_SUCCESS
    assert updated.create_time == created.check_in.create_time
    assert updated.etag != pinged.etag
    assert await _get(check_ins) == updated

    # No mask: the fields set; labels are replaced whole.
    relabelled = await _update(check_ins, checkin_pb2.CheckIn(labels={"team": "infra"}))
    assert dict(relabelled.labels) == {"team": "infra"}
    assert relabelled.description == "nightly, to S3"
    # Output-only fields in the mask are ignored (a client sends back what it read).
    same = await _update(check_ins, checkin_pb2.CheckIn(missed=7, description="x"), "missed", "name")
    assert (same.missed, same.description) == (0, "nightly, to S3")
    # `*`: every field, those unset reset to their defaults (the trigger is required).
    every = checkin_pb2.CheckIn()
    every.trigger.interval.every.FromSeconds(3600)
    reset = await _update(check_ins, every, "*")
    assert (reset.description, reset.time_zone, dict(reset.labels)) == ("", "UTC", {})
    assert reset.grace.ToTimedelta() == timedelta(minutes=5)

    # The token is the one given at create.
    again = await check_ins.CheckIn(checkin_service_pb2.CheckInRequest(token=created.token))
    assert again.check_in.name == NAME


async def test_a_stale_etag_a_bad_value_or_a_bad_mask_changes_nothing(check_ins: CheckInServiceStub) -> None:
    created = (await _create(check_ins)).check_in
    current = await _update(check_ins, checkin_pb2.CheckIn(description="first"), "description")

    code, _, reason = await _refused(
        check_ins, checkin_pb2.CheckIn(description="second", etag=created.etag), "description"
    )
    assert (code, reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")

    # A bad value beside a good one: INVALID_ARGUMENT naming the field, and neither is stored.
    too_long = checkin_pb2.CheckIn(description="second")
    too_long.grace.FromSeconds(8 * 24 * 3600)
    code, violations, _ = await _refused(check_ins, too_long, "description", "grace")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations) == {"check_in.grace"}
    bad_cron = checkin_pb2.CheckIn(description="second")
    bad_cron.trigger.cron.expression = "every now and then"
    code, violations, _ = await _refused(check_ins, bad_cron, "description", "trigger")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(violations) == ["check_in.trigger.cron.expression"]
    code, violations, _ = await _refused(check_ins, checkin_pb2.CheckIn(), "trigger")
    assert (code, list(violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["check_in.trigger"])
    code, violations, _ = await _refused(
        check_ins, checkin_pb2.CheckIn(time_zone="Nowhere/Land", description="second")
    )
    assert (code, list(violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["check_in.time_zone"])
    code, violations, _ = await _refused(check_ins, checkin_pb2.CheckIn(description="second"), "token")
    assert (code, list(violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["update_mask"])
    assert "token" in violations["update_mask"]
    assert await _get(check_ins) == current

    code, violations, _ = await _refused(check_ins, checkin_pb2.CheckIn(name="checkIns/backup"))
    assert (code, list(violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["check_in.name"])
    code, _, reason = await _refused(
        check_ins, checkin_pb2.CheckIn(name=f"{NS}/checkIns/nothing", description="x"), "description"
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CHECK_IN_NOT_FOUND")

    # validate_only: the check-in as it would be, nothing stored.
    shown = await _update(
        check_ins, checkin_pb2.CheckIn(description="maybe"), "description", validate_only=True
    )
    assert (shown.description, shown.etag) == ("maybe", current.etag)
    assert await _get(check_ins) == current


async def test_a_new_trigger_or_time_zone_plans_the_awaited_tick_again_on_the_database_clock(
    check_ins: CheckInServiceStub, store: SqlStore
) -> None:
    created = (await _create(check_ins)).check_in  # 0 2 * * *: awaited at the next 02:00 UTC

    # Every 10 s from the check-in's creation: the awaited tick is the first after the update.
    every = checkin_pb2.CheckIn()
    every.trigger.interval.every.FromSeconds(10)
    before = await store.now()
    planned = await _update(check_ins, every, "trigger")
    after = await store.now()
    tick = _time(planned, "next_expected_time")
    assert before < tick <= after + timedelta(seconds=10)
    # Ticks count from the check-in's creation (its whole second), as at create.
    anchor = _time(created, "create_time").replace(microsecond=0)
    assert (tick - anchor) % timedelta(seconds=10) == timedelta(0)

    # A cron trigger read in another zone: the next 02:00 there.
    nightly = checkin_pb2.CheckIn(time_zone="Pacific/Auckland")
    nightly.trigger.cron.expression = "0 2 * * *"
    before = await store.now()
    zoned = _time(await _update(check_ins, nightly, "trigger", "time_zone"), "next_expected_time")
    local = zoned.astimezone(ZoneInfo("Pacific/Auckland"))
    assert (local.hour, local.minute) == (2, 0)
    assert before < zoned <= before + timedelta(days=1)
    # The same zone and trigger sent again change nothing of the plan.
    kept = await _update(check_ins, nightly, "trigger", "time_zone", "description")
    assert _time(kept, "next_expected_time") == zoned

    # validate_only shows the plan it would make, and keeps the stored one.
    shown = await _update(check_ins, every, "trigger", validate_only=True)
    assert _time(shown, "next_expected_time") < zoned
    assert _time(await _get(check_ins), "next_expected_time") == zoned


async def test_a_shorter_grace_keeps_the_awaited_tick_and_its_deadline_follows(
    channel: grpc.aio.Channel, check_ins: CheckInServiceStub, store: SqlStore
) -> None:
    # Awaited every second, with an hour's grace: a tick passes unpinged, and is not missed yet.
    spec = checkin_pb2.CheckIn()
    spec.trigger.interval.every.FromSeconds(1)
    spec.grace.FromSeconds(3600)
    created = await check_ins.CreateCheckIn(
        checkin_service_pb2.CreateCheckInRequest(parent=NS, check_in_id="backup", check_in=spec)
    )
    awaited = _time(created.check_in, "next_expected_time")

    async def passed() -> bool:
        return await store.now() > awaited

    await eventually(passed, 10, "the awaited tick to pass")
    one_second = checkin_pb2.CheckIn()
    one_second.grace.FromSeconds(1)
    shortened = await _update(check_ins, one_second, "grace")
    assert _time(shortened, "next_expected_time") == awaited  # the same tick, now a second's grace

    events = event_service_pb2_grpc.EventServiceStub(channel)

    async def missed() -> list[event_pb2.Event]:
        listed = await events.ListEvents(
            event_service_pb2.ListEventsRequest(parent=NS, event_types=[event_pb2.EVENT_TYPE_CHECKIN_MISSED])
        )
        return list(listed.events)

    miss = (await eventually(missed, 15, "the CHECKIN_MISSED event"))[0]
    assert miss.resource == NAME
    assert miss.deadline_miss.scheduled_time.ToDatetime(tzinfo=UTC) == awaited
    assert miss.deadline_miss.deadline.ToDatetime(tzinfo=UTC) == awaited + timedelta(seconds=1)
