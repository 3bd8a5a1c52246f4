"""Alerts: notification routes (where), rules (which alerts go where), incidents (one per
problem: a run failing five times in a row alerts once, and its recovery resolves it) and
deliveries (each notification and what became of it).

Plain dataclasses and decisions; storage is `storage.sql_notifications`, sending is
`cronwire_server.notifier`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import (
    DeadlineKind,
    Event,
    EventType,
    Execution,
    ExecutionState,
    SkipReason,
)
from cronwire_server.core.names import format_name, parse_name

# The default and the largest `max_per_hour` of a route.
DEFAULT_PER_HOUR = 30
MAX_PER_HOUR = 3600
MAX_RECIPIENTS = 10
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SECRET_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,127}$")
# An address: local@domain, no spaces, no line breaks, no second address hidden in it.
EMAIL_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}$")
HOST = re.compile(r"^[A-Za-z0-9.:\[\]-]{1,253}$")


class AlertKind(enum.Enum):
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    RECOVERED = "recovered"
    LATE = "late"
    MISSED = "missed"
    TOO_LONG = "too_long"
    CHECKIN_MISSED = "checkin_missed"


# Kinds that count in the one "failure" incident of a job and schedule: a run that fails, times
# out and is lost in a row is one problem.
FAILURE_KINDS = frozenset({AlertKind.FAILED, AlertKind.TIMED_OUT, AlertKind.LOST})
DEADLINE_ALERTS = {
    DeadlineKind.START_WITHIN: AlertKind.LATE,
    DeadlineKind.FINISH_BY: AlertKind.MISSED,
    DeadlineKind.MAX_DURATION: AlertKind.TOO_LONG,
    DeadlineKind.CHECK_IN_GRACE: AlertKind.CHECKIN_MISSED,
}


def family(kind: AlertKind) -> str:
    """Alerts of one family about one job and schedule are one incident."""
    return "failure" if kind in FAILURE_KINDS else kind.value


class EmailSecurity(enum.Enum):
    STARTTLS = "starttls"
    SMTPS = "smtps"
    NONE = "none"


@dataclass(frozen=True)
class WebhookDestination:
    url: str
    signing_secret: str = ""


@dataclass(frozen=True)
class SlackDestination:
    url_secret: str


@dataclass(frozen=True)
class PagerDutyDestination:
    routing_key_secret: str
    events_url: str = ""


@dataclass(frozen=True)
class EmailDestination:
    smtp_host: str
    from_address: str
    to_addresses: tuple[str, ...]
    smtp_port: int = 0
    security: EmailSecurity = EmailSecurity.STARTTLS
    username: str = ""
    password_secret: str = ""

    @property
    def port(self) -> int:
        if self.smtp_port:
            return self.smtp_port
        return {EmailSecurity.STARTTLS: 587, EmailSecurity.SMTPS: 465, EmailSecurity.NONE: 25}[self.security]


Destination: TypeAlias = WebhookDestination | SlackDestination | PagerDutyDestination | EmailDestination


@dataclass
class NotificationRoute:
    namespace: str
    id: str
    destination: Destination
    description: str = ""
    max_per_hour: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""

    @property
    def name(self) -> str:
        return format_name("route", self.namespace, self.id)

    @property
    def per_hour(self) -> int:
        return self.max_per_hour or DEFAULT_PER_HOUR


@dataclass
class NotificationRule:
    namespace: str
    id: str
    route_id: str
    kinds: frozenset[AlertKind]
    description: str = ""
    job_id: str = ""
    schedule_id: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    create_time: datetime | None = None
    update_time: datetime | None = None
    etag: str = ""

    @property
    def name(self) -> str:
        return format_name("rule", self.namespace, self.id)

    def selects(self, job_id: str, schedule_id: str, job_labels: Mapping[str, str] | None) -> bool:
        """Whether alerts about this job and schedule concern the rule (kinds aside)."""
        if self.job_id and self.job_id != job_id:
            return False
        if self.schedule_id and self.schedule_id != schedule_id:
            return False
        if self.labels:
            labels = job_labels or {}
            return all(labels.get(k) == v for k, v in self.labels.items())
        return True


@dataclass(frozen=True)
class Incident:
    namespace: str
    seq: int
    rule_id: str
    route_id: str
    job_id: str
    schedule_id: str
    kind: AlertKind
    summary: str
    alerts: int
    open_time: datetime
    resolve_time: datetime | None
    dedup_key: str
    check_in_id: str = ""
    # Why it was resolved (the success, or the deletion, that did); "" while open.
    resolve_reason: str = ""

    @property
    def name(self) -> str:
        return format_name("incident", self.namespace, f"i{self.seq}")


class DeliveryState(enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Delivery:
    namespace: str
    seq: int
    route_id: str
    incident_seq: int
    kind: AlertKind
    resolve: bool
    state: DeliveryState
    attempts: int
    summary: str
    create_time: datetime
    # What is sent (`Alert.to_json`).
    alert: dict[str, Any] = field(default_factory=dict)
    http_status: int | None = None
    error: str = ""
    last_attempt_time: datetime | None = None
    next_attempt_time: datetime | None = None

    @property
    def name(self) -> str:
        return format_name("delivery", self.namespace, f"d{self.seq}")


@dataclass(frozen=True)
class Observed:
    """What an event says, for alerting: the alert kind, a success (which resolves), or the
    deletion of a job, schedule or check-in (which resolves its open incidents, whatever rule
    opened them)."""

    kind: AlertKind | None  # None: a success, or a deletion
    job_id: str
    schedule_id: str
    summary: str
    execution_id: str = ""
    scheduled_time: datetime | None = None
    check_in_id: str = ""
    deleted: bool = False


_ENDED = {
    EventType.EXECUTION_FAILED: AlertKind.FAILED,
    EventType.EXECUTION_TIMED_OUT: AlertKind.TIMED_OUT,
    EventType.EXECUTION_LOST: AlertKind.LOST,
}
_DELETED = frozenset({EventType.JOB_DELETED, EventType.SCHEDULE_DELETED, EventType.CHECKIN_DELETED})
# The event types the notifier reads.
WATCHED = frozenset(
    {
        *_ENDED,
        EventType.EXECUTION_SUCCEEDED,
        EventType.EXECUTION_SKIPPED,
        EventType.DEADLINE_MISSED,
        EventType.CHECKIN_MISSED,
        EventType.CHECKIN_SUCCEEDED,
        EventType.CHECKIN_FAILED,
        *_DELETED,
    }
)


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def observe(event: Event) -> Observed | None:
    """What `event` means for alerts, or None when nothing."""
    job_name = format_name("job", event.namespace, event.job_id) if event.job_id else ""
    if event.type in _DELETED:
        by = f" by {event.actor}" if event.actor else ""
        summary = f"{event.resource} was deleted{by}"
        if event.type is EventType.CHECKIN_DELETED:
            check_in_id = parse_name(event.resource, "check_in", "resource").id
            return Observed(None, "", "", summary, check_in_id=check_in_id, deleted=True)
        schedule_id = event.schedule_id if event.type is EventType.SCHEDULE_DELETED else ""
        return Observed(None, event.job_id, schedule_id, summary, deleted=True)
    if event.type in _ENDED or event.type in (EventType.EXECUTION_SUCCEEDED, EventType.EXECUTION_SKIPPED):
        execution = event.snapshot if isinstance(event.snapshot, Execution) else None
        if execution is None:
            return None
        when = execution.scheduled_time
        if event.type is EventType.EXECUTION_SUCCEEDED:
            return Observed(
                None, event.job_id, event.schedule_id, f"{job_name} succeeded", execution.id, when
            )
        if event.type is EventType.EXECUTION_SKIPPED:
            if execution.skip_reason is not SkipReason.MISSED:
                return None
            return Observed(
                AlertKind.MISSED,
                event.job_id,
                event.schedule_id,
                f"{job_name}: the tick of {_when(when)} was missed (no replica ran in its catch-up window)",
                execution.id,
                when,
            )
        kind = _ENDED[event.type]
        state = {ExecutionState.TIMED_OUT: "timed out", ExecutionState.LOST: "was lost"}.get(
            execution.state, "failed"
        )
        detail = f": {_short(execution.error)}" if execution.error else ""
        if execution.exit_code is not None and str(execution.exit_code) not in execution.error:
            detail = f" (exit code {execution.exit_code}){detail}"
        elif execution.http_status is not None and str(execution.http_status) not in execution.error:
            detail = f" (HTTP {execution.http_status}){detail}"
        return Observed(
            kind,
            event.job_id,
            event.schedule_id,
            f"{job_name} {state} (attempt {execution.attempt}){detail}",
            execution.id,
            when,
        )
    if event.type in (EventType.CHECKIN_MISSED, EventType.CHECKIN_SUCCEEDED, EventType.CHECKIN_FAILED):
        check_in_id = parse_name(event.resource, "check_in", "resource").id
        if event.type is EventType.CHECKIN_SUCCEEDED:
            return Observed(None, "", "", f"{event.resource} pinged", check_in_id=check_in_id)
        if event.type is EventType.CHECKIN_FAILED:
            return Observed(
                AlertKind.FAILED, "", "", f"{event.resource} reported a failure", check_in_id=check_in_id
            )
        tick = event.deadline_miss.scheduled_time if event.deadline_miss else event.time
        return Observed(
            AlertKind.CHECKIN_MISSED,
            "",
            "",
            f"{event.resource}: no ping for the tick of {_when(tick)}",
            scheduled_time=tick,
            check_in_id=check_in_id,
        )
    if event.type is EventType.DEADLINE_MISSED and event.deadline_miss is not None:
        miss = event.deadline_miss
        kind = DEADLINE_ALERTS[miss.kind]
        what = {
            DeadlineKind.START_WITHIN: "had not started by",
            DeadlineKind.FINISH_BY: "had not finished by",
            DeadlineKind.MAX_DURATION: "was still running at",
        }[miss.kind]
        return Observed(
            kind,
            event.job_id,
            event.schedule_id,
            f"{event.resource}: the tick of {_when(miss.scheduled_time)} {what} its "
            f"{miss.kind.value} deadline {_when(miss.deadline)}",
            miss.execution_id,
            miss.scheduled_time,
        )
    return None


# Validation


def check_secret_name(value: str, field_path: str, *, required: bool) -> str:
    if not value:
        if required:
            raise InvalidArgument.field(field_path, "is required: the name of a secret")
        return value
    if not SECRET_NAME.fullmatch(value):
        raise InvalidArgument.field(field_path, f"{value!r} is not a secret name")
    return value


def check_destination(destination: Destination, url_problem: Any) -> None:
    """InvalidArgument naming the field of what is wrong; `url_problem(url)` says why a URL may
    not be called (the http executor's check), or None."""
    if isinstance(destination, WebhookDestination):
        why = url_problem(destination.url) if destination.url else "is required"
        if why:
            raise InvalidArgument.field("webhook.url", why)
        check_secret_name(destination.signing_secret, "webhook.signing_secret", required=False)
    elif isinstance(destination, SlackDestination):
        check_secret_name(destination.url_secret, "slack.url_secret", required=True)
    elif isinstance(destination, PagerDutyDestination):
        check_secret_name(destination.routing_key_secret, "pagerduty.routing_key_secret", required=True)
        if destination.events_url:
            why = url_problem(destination.events_url)
            if why:
                raise InvalidArgument.field("pagerduty.events_url", why)
    else:
        if not destination.smtp_host or not HOST.fullmatch(destination.smtp_host):
            raise InvalidArgument.field("email.smtp_host", "must be a host name or address")
        if not 0 <= destination.smtp_port <= 65535:
            raise InvalidArgument.field("email.smtp_port", "must be 0 to 65535")
        if not EMAIL_ADDRESS.fullmatch(destination.from_address):
            raise InvalidArgument.field("email.from_address", "must be one address, local@domain")
        if not 1 <= len(destination.to_addresses) <= MAX_RECIPIENTS:
            raise InvalidArgument.field("email.to_addresses", f"must hold 1 to {MAX_RECIPIENTS} addresses")
        for i, address in enumerate(destination.to_addresses):
            if not EMAIL_ADDRESS.fullmatch(address):
                raise InvalidArgument.field(f"email.to_addresses[{i}]", "must be one address, local@domain")
        if destination.username and not destination.password_secret:
            raise InvalidArgument.field("email.password_secret", "is required with a username")
        if destination.username and any(ord(c) < 32 for c in destination.username):
            raise InvalidArgument.field("email.username", "must not hold control characters")
        check_secret_name(destination.password_secret, "email.password_secret", required=False)
        if destination.security is EmailSecurity.NONE and destination.username:
            raise InvalidArgument.field(
                "email.security", "NONE sends in the clear: no login (username) over it"
            )


def check_route(route: NotificationRoute, url_problem: Any) -> NotificationRoute:
    if not 0 <= route.max_per_hour <= MAX_PER_HOUR:
        raise InvalidArgument.field(
            "max_per_hour", f"must be 0 (the default, {DEFAULT_PER_HOUR}) to {MAX_PER_HOUR}"
        )
    check_destination(route.destination, url_problem)
    return route


def check_rule(rule: NotificationRule) -> NotificationRule:
    if not rule.kinds:
        raise InvalidArgument.field("kinds", "name at least one alert kind")
    return rule
