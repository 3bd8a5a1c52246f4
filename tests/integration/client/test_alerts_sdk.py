"""The SDK's updates of alerts over a real channel, on each database: a check-in (its token kept,
its awaited tick planned again), a notification route (its destination replaced whole) and a
rule; the fields not given stay, a stale etag is a Conflict, validate_only stores nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest

import cronwire


async def test_update_a_check_in(aio_client: cronwire.AsyncClient) -> None:
    created = await aio_client.create_check_in(
        "backup",
        trigger=cronwire.CronTrigger("0 2 * * *"),
        grace=timedelta(minutes=10),
        labels={"team": "data"},
        description="nightly",
    )
    first = created.check_in
    updated = await aio_client.update_check_in(
        first, trigger=cronwire.IntervalTrigger(timedelta(seconds=10)), description="to S3"
    )
    assert updated.trigger == cronwire.IntervalTrigger(timedelta(seconds=10))
    assert updated.description == "to S3"
    assert updated.grace == timedelta(minutes=10)
    assert (updated.labels, updated.time_zone) == ({"team": "data"}, "UTC")
    assert updated.next_expected_time is not None
    assert first.next_expected_time is not None
    assert updated.next_expected_time < first.next_expected_time  # planned again: within 10 s
    assert updated.etag != first.etag

    # `first` carries its etag, now stale.
    with pytest.raises(cronwire.Conflict):
        await aio_client.update_check_in(first, description="late")
    # None resets: grace to its default, no labels.
    reset = await aio_client.update_check_in("backup", grace=None, labels=None)
    assert (reset.grace, reset.labels, reset.description) == (timedelta(minutes=5), {}, "to S3")
    with pytest.raises(cronwire.InvalidArgument) as bad:
        await aio_client.update_check_in("backup", grace=timedelta(days=8), description="x")
    assert [v.field for v in bad.value.field_violations] == ["check_in.grace"]
    shown = await aio_client.update_check_in("backup", time_zone="Europe/Berlin", validate_only=True)
    assert shown.time_zone == "Europe/Berlin"
    stored = await aio_client.get_check_in("backup")
    assert (stored.time_zone, stored.description, stored.etag) == ("UTC", "to S3", reset.etag)
    with pytest.raises(ValueError, match="nothing to update"):
        await aio_client.update_check_in("backup")

    pinged = await aio_client.ping_check_in(created.token)  # the token of the create
    assert pinged.name == first.name


async def test_update_a_route_and_a_rule(aio_client: cronwire.AsyncClient) -> None:
    hook = cronwire.WebhookDestination("https://ops.example.com/hook", signing_secret="OPS_HOOK_KEY")
    route = await aio_client.create_notification_route("ops", destination=hook, max_per_hour=10)
    await aio_client.create_notification_route(
        "pager", destination=cronwire.PagerDutyDestination("PD_ROUTING_KEY")
    )
    await aio_client.create_job("etl", executor="noop")
    rule = await aio_client.create_notification_rule(
        "etl-failures", route="ops", kinds=["failed"], job="etl", labels={"team": "data"}
    )

    described = await aio_client.update_notification_route(route, description="the ops channel")
    assert (described.description, described.destination, described.max_per_hour) == (
        "the ops channel",
        hook,
        10,
    )
    # Another kind of destination replaces the webhook; None: the default hourly limit.
    mail = cronwire.EmailDestination(
        smtp_host="smtp.example.com",
        from_address="cronwire@example.com",
        to_addresses=["oncall@example.com"],
        security=cronwire.EmailSecurity.SMTPS,
        username="cronwire",
        password_secret="SMTP_PASSWORD",
    )
    mailed = await aio_client.update_notification_route("ops", destination=mail, max_per_hour=None)
    assert mailed.destination == mail
    assert (mailed.max_per_hour, mailed.description) == (0, "the ops channel")
    with pytest.raises(cronwire.Conflict):
        await aio_client.update_notification_route(route, description="stale")
    with pytest.raises(cronwire.InvalidArgument) as bad:
        await aio_client.update_notification_route(
            "ops", destination=cronwire.WebhookDestination("ftp://ops.example.com/hook")
        )
    assert [v.field for v in bad.value.field_violations] == ["route.webhook.url"]
    assert (await aio_client.get_notification_route("ops")).destination == mail

    moved = await aio_client.update_notification_rule(
        rule, route="pager", kinds=["failed", "timed-out"], job=None, labels=None
    )
    assert moved.route.endswith("/notificationRoutes/pager")
    assert moved.kinds == [cronwire.AlertKind.FAILED, cronwire.AlertKind.TIMED_OUT]
    assert (moved.job, moved.labels) == ("", {})
    with pytest.raises(cronwire.Conflict):
        await aio_client.update_notification_rule(rule, description="stale")
    with pytest.raises(cronwire.NotFound):
        await aio_client.update_notification_rule("etl-failures", route="nowhere")
    shown = await aio_client.update_notification_rule("etl-failures", job="etl", validate_only=True)
    assert shown.job.endswith("/jobs/etl")
    assert (await aio_client.get_notification_rule("etl-failures")).job == ""
