"""Alerts in the SDK: notification routes (where), rules (which alerts go where), incidents and
deliveries, as dataclasses over the messages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeAlias

from cronwire._convert import (
    NamedIntEnum,
    duration_from,
    enum_from,
    enum_to,
    set_duration,
    split_name,
    time_from,
)
from cronwire._types import Trigger, trigger_from_proto, trigger_to_proto
from cronwire.v1 import checkin_pb2, notification_pb2


class AlertKind(NamedIntEnum):
    """What an alert is about."""

    FAILED = notification_pb2.ALERT_KIND_FAILED
    TIMED_OUT = notification_pb2.ALERT_KIND_TIMED_OUT
    LOST = notification_pb2.ALERT_KIND_LOST
    RECOVERED = notification_pb2.ALERT_KIND_RECOVERED
    LATE = notification_pb2.ALERT_KIND_LATE
    MISSED = notification_pb2.ALERT_KIND_MISSED
    TOO_LONG = notification_pb2.ALERT_KIND_TOO_LONG
    CHECKIN_MISSED = notification_pb2.ALERT_KIND_CHECKIN_MISSED


class EmailSecurity(NamedIntEnum):
    """How an SMTP connection is protected."""

    STARTTLS = notification_pb2.EMAIL_SECURITY_STARTTLS
    SMTPS = notification_pb2.EMAIL_SECURITY_SMTPS
    NONE = notification_pb2.EMAIL_SECURITY_NONE


class DeliveryState(NamedIntEnum):
    """Where a notification stands."""

    PENDING = notification_pb2.DELIVERY_STATE_PENDING
    DELIVERED = notification_pb2.DELIVERY_STATE_DELIVERED
    FAILED = notification_pb2.DELIVERY_STATE_FAILED
    RATE_LIMITED = notification_pb2.DELIVERY_STATE_RATE_LIMITED


@dataclass(frozen=True)
class WebhookDestination:
    """A JSON POST; signed (`X-Cronwire-Signature`) with the secret named `signing_secret`."""

    url: str
    signing_secret: str = ""


@dataclass(frozen=True)
class SlackDestination:
    """A Slack-compatible incoming webhook whose URL is the secret named `url_secret`."""

    url_secret: str


@dataclass(frozen=True)
class PagerDutyDestination:
    """PagerDuty Events API v2, with the routing key in the secret named `routing_key_secret`."""

    routing_key_secret: str
    events_url: str = ""


@dataclass(frozen=True)
class EmailDestination:
    """Mail over SMTP; the password is the secret named `password_secret`."""

    smtp_host: str
    from_address: str
    to_addresses: list[str]
    smtp_port: int = 0
    security: EmailSecurity | None = None
    username: str = ""
    password_secret: str = ""


Destination: TypeAlias = WebhookDestination | SlackDestination | PagerDutyDestination | EmailDestination


@dataclass
class NotificationRoute:
    """Where notifications go. `name`, `create_time`, `update_time` and `etag` are set by the
    server."""

    destination: Destination | None = None
    name: str = ""
    description: str = ""
    max_per_hour: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""

    @property
    def id(self) -> str:
        return split_name(self.name)[1]

    def _to_proto(self) -> notification_pb2.NotificationRoute:
        message = notification_pb2.NotificationRoute(
            name=self.name, description=self.description, max_per_hour=self.max_per_hour, etag=self.etag
        )
        d = self.destination
        if isinstance(d, WebhookDestination):
            message.webhook.url = d.url
            message.webhook.signing_secret = d.signing_secret
        elif isinstance(d, SlackDestination):
            message.slack.url_secret = d.url_secret
        elif isinstance(d, PagerDutyDestination):
            message.pagerduty.routing_key_secret = d.routing_key_secret
            message.pagerduty.events_url = d.events_url
        elif isinstance(d, EmailDestination):
            message.email.CopyFrom(
                notification_pb2.EmailDestination(
                    smtp_host=d.smtp_host,
                    smtp_port=d.smtp_port,
                    security=enum_to(d.security),
                    username=d.username,
                    password_secret=d.password_secret,
                    from_address=d.from_address,
                    to_addresses=d.to_addresses,
                )
            )
        return message

    @classmethod
    def _from_proto(cls, message: notification_pb2.NotificationRoute) -> NotificationRoute:
        which = message.WhichOneof("destination")
        destination: Destination | None = None
        if which == "webhook":
            destination = WebhookDestination(message.webhook.url, message.webhook.signing_secret)
        elif which == "slack":
            destination = SlackDestination(message.slack.url_secret)
        elif which == "pagerduty":
            destination = PagerDutyDestination(
                message.pagerduty.routing_key_secret, message.pagerduty.events_url
            )
        elif which == "email":
            e = message.email
            destination = EmailDestination(
                smtp_host=e.smtp_host,
                from_address=e.from_address,
                to_addresses=list(e.to_addresses),
                smtp_port=e.smtp_port,
                security=enum_from(EmailSecurity, e.security),
                username=e.username,
                password_secret=e.password_secret,
            )
        return cls(
            destination=destination,
            name=message.name,
            description=message.description,
            max_per_hour=message.max_per_hour,
            create_time=time_from(message, "create_time"),
            update_time=time_from(message, "update_time"),
            etag=message.etag,
        )


@dataclass
class NotificationRule:
    """Which alerts (`kinds`) about which jobs (by `job`, `schedule` or job `labels`) notify
    `route`."""

    route: str = ""
    kinds: list[AlertKind] = field(default_factory=list)
    name: str = ""
    description: str = ""
    job: str = ""
    schedule: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""

    @property
    def id(self) -> str:
        return split_name(self.name)[1]

    def _to_proto(self) -> notification_pb2.NotificationRule:
        return notification_pb2.NotificationRule(
            name=self.name,
            description=self.description,
            route=self.route,
            kinds=[int(k) for k in self.kinds],  # type: ignore[misc]
            job=self.job,
            schedule=self.schedule,
            labels=self.labels,
            etag=self.etag,
        )

    @classmethod
    def _from_proto(cls, message: notification_pb2.NotificationRule) -> NotificationRule:
        return cls(
            route=message.route,
            kinds=[k for k in (enum_from(AlertKind, v) for v in message.kinds) if k is not None],
            name=message.name,
            description=message.description,
            job=message.job,
            schedule=message.schedule,
            labels=dict(message.labels),
            create_time=time_from(message, "create_time"),
            update_time=time_from(message, "update_time"),
            etag=message.etag,
        )


@dataclass(frozen=True)
class Incident:
    """A problem one rule alerted about: opened by the first alert, resolved by a success or by
    the deletion of its job, schedule, check-in or rule (`resolve_reason` says which)."""

    name: str
    rule: str
    route: str
    job: str
    schedule: str
    kind: AlertKind | None
    summary: str
    alerts: int
    open_time: datetime | None
    resolve_time: datetime | None
    dedup_key: str
    check_in: str = ""
    resolve_reason: str = ""

    @classmethod
    def _from_proto(cls, message: notification_pb2.Incident) -> Incident:
        return cls(
            name=message.name,
            rule=message.rule,
            route=message.route,
            job=message.job,
            schedule=message.schedule,
            kind=enum_from(AlertKind, message.kind),
            summary=message.summary,
            alerts=message.alerts,
            open_time=time_from(message, "open_time"),
            resolve_time=time_from(message, "resolve_time"),
            dedup_key=message.dedup_key,
            check_in=message.check_in,
            resolve_reason=message.resolve_reason,
        )


@dataclass(frozen=True)
class NotificationDelivery:
    """One notification to one route, and what became of it."""

    name: str
    route: str
    incident: str
    kind: AlertKind | None
    state: DeliveryState | None
    attempts: int
    http_status: int | None
    error: str
    summary: str
    create_time: datetime | None
    last_attempt_time: datetime | None
    next_attempt_time: datetime | None

    @classmethod
    def _from_proto(cls, message: notification_pb2.NotificationDelivery) -> NotificationDelivery:
        return cls(
            name=message.name,
            route=message.route,
            incident=message.incident,
            kind=enum_from(AlertKind, message.kind),
            state=enum_from(DeliveryState, message.state),
            attempts=message.attempts,
            http_status=message.http_status or None,
            error=message.error,
            summary=message.summary,
            create_time=time_from(message, "create_time"),
            last_attempt_time=time_from(message, "last_attempt_time"),
            next_attempt_time=time_from(message, "next_attempt_time"),
        )


class CheckInPingKind(NamedIntEnum):
    """What a check-in's ping says."""

    SUCCESS = checkin_pb2.CHECK_IN_PING_KIND_SUCCESS
    START = checkin_pb2.CHECK_IN_PING_KIND_START
    FAIL = checkin_pb2.CHECK_IN_PING_KIND_FAIL


@dataclass
class CheckIn:
    """A dead man's switch: `trigger` (read in `time_zone`) says when pings are expected; a tick
    with no ping within `grace` is a CHECKIN_MISSED alert. The other fields are set by the
    server."""

    trigger: Trigger | None = None
    name: str = ""
    description: str = ""
    time_zone: str = ""
    grace: timedelta | None = None
    labels: dict[str, str] = field(default_factory=dict)
    next_expected_time: datetime | None = None
    last_ping_time: datetime | None = None
    last_ping_kind: CheckInPingKind | None = None
    last_duration: timedelta | None = None
    missed: int = 0
    create_time: datetime | None = None
    etag: str = ""

    @property
    def id(self) -> str:
        return split_name(self.name)[1]

    def _to_proto(self) -> checkin_pb2.CheckIn:
        message = checkin_pb2.CheckIn(
            name=self.name,
            description=self.description,
            time_zone=self.time_zone,
            labels=self.labels,
            etag=self.etag,
        )
        if self.trigger is not None:
            message.trigger.CopyFrom(trigger_to_proto(self.trigger))
        if self.grace is not None:
            set_duration(message.grace, self.grace)
        return message

    @classmethod
    def _from_proto(cls, message: checkin_pb2.CheckIn) -> CheckIn:
        return cls(
            trigger=trigger_from_proto(message.trigger),
            name=message.name,
            description=message.description,
            time_zone=message.time_zone,
            grace=duration_from(message, "grace"),
            labels=dict(message.labels),
            next_expected_time=time_from(message, "next_expected_time"),
            last_ping_time=time_from(message, "last_ping_time"),
            last_ping_kind=enum_from(CheckInPingKind, message.last_ping_kind),
            last_duration=duration_from(message, "last_duration"),
            missed=message.missed,
            create_time=time_from(message, "create_time"),
            etag=message.etag,
        )


@dataclass(frozen=True)
class CreatedCheckIn:
    """A new check-in and its ping token: the only time the token is shown."""

    check_in: CheckIn
    token: str


def alert_kinds(values: Iterable[AlertKind | str]) -> list[AlertKind]:
    """Alert kinds from members or names (`failed`, `TIMED_OUT`, `timed-out`)."""
    kinds = []
    for value in values:
        if isinstance(value, AlertKind):
            kinds.append(value)
            continue
        key = value.strip().upper().replace("-", "_")
        if key not in AlertKind.__members__:
            known = ", ".join(k.lower().replace("_", "-") for k in AlertKind.__members__)
            raise ValueError(f"unknown alert kind {value!r}; one of {known}")
        kinds.append(AlertKind[key])
    return kinds
