"""Check-ins: dead man's switches for work cronwire does not run.

A check-in has a trigger, read like a schedule's, whose ticks expect a ping. The tick awaited is
`next_expected_time`; a ping at time P covers every tick up to P, so the next awaited tick is the
first after P. When the awaited tick is `grace` old with no ping, it is missed (one event), and the
next awaited tick is the first after `now - grace`: ticks that passed unpinged while nothing
watched (every replica down) are folded into that one miss rather than replayed.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cronwire_server.core.model import Schedule, TriggerSpec
from cronwire_server.core.names import format_name
from cronwire_server.core.triggers import next_fire_time, validate_schedule_timing

DEFAULT_GRACE = timedelta(minutes=5)
MAX_GRACE = timedelta(days=7)


class PingKind(enum.Enum):
    SUCCESS = "success"
    START = "start"
    FAIL = "fail"


@dataclass
class CheckIn:
    namespace: str
    id: str
    trigger: TriggerSpec
    time_zone: str = "UTC"
    description: str = ""
    grace: timedelta = DEFAULT_GRACE
    labels: dict[str, str] = field(default_factory=dict)
    # Output only
    next_expected_time: datetime | None = None
    last_ping_time: datetime | None = None
    last_ping_kind: PingKind | None = None
    last_duration: timedelta | None = None
    missed: int = 0
    create_time: datetime | None = None
    etag: str = ""

    @property
    def name(self) -> str:
        return format_name("check_in", self.namespace, self.id)

    def as_schedule(self) -> Schedule:
        """The trigger arithmetic of schedules, for its ticks."""
        return Schedule(
            namespace=self.namespace,
            id=self.id,
            job_id="",
            trigger=self.trigger,
            time_zone=self.time_zone,
            create_time=self.create_time,
        )


def validate(check_in: CheckIn) -> CheckIn:
    """InvalidArgument naming the field of what is wrong."""
    from cronwire_server.core.errors import InvalidArgument

    if not timedelta(0) < check_in.grace <= MAX_GRACE:
        raise InvalidArgument.field("grace", f"must be positive and at most {MAX_GRACE.days} days")
    validate_schedule_timing(check_in.as_schedule())
    return check_in


def next_tick(check_in: CheckIn, after: datetime) -> datetime | None:
    """The first tick strictly after `after`; None when the trigger has ended."""
    anchor = check_in.create_time or after
    return next_fire_time(check_in.as_schedule(), after, anchor)


def new_token() -> tuple[str, str]:
    """A ping token and the digest that is stored."""
    token = "ci_" + secrets.token_urlsafe(24)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
