"""The domain's exception root. The API layer maps each class to one gRPC status."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (`job.parameters.argv`) and why."""

    field: str
    description: str

    def under(self, prefix: str) -> FieldViolation:
        """The same violation with its path below `prefix` (`job` + `timeout`)."""
        return FieldViolation(f"{prefix}.{self.field}" if self.field else prefix, self.description)


class CronwireError(Exception):
    """Root of every error the server reports to callers.

    `reason` is a stable UPPER_SNAKE code (the ErrorInfo reason on the wire).
    """

    reason = "INTERNAL"
    # Seconds after which the same call may succeed (sent as RetryInfo); None: do not retry as is.
    retry_delay: float | None = None

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(CronwireError):
    """The request is malformed; `violations` names each bad field."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None) -> None:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations) or "invalid argument"
        super().__init__(message, reason=reason)
        self.violations = violations

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason=reason)

    def under(self, prefix: str) -> InvalidArgument:
        return InvalidArgument([v.under(prefix) for v in self.violations], reason=self.reason)


class NotFound(CronwireError):
    """The named resource does not exist (or the caller may not see it)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found", reason=f"{kind.upper()}_NOT_FOUND")
        self.kind = kind
        self.name = name


class AlreadyExists(CronwireError):
    """A resource with that name exists already."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} already exists", reason=f"{kind.upper()}_ALREADY_EXISTS")
        self.kind = kind
        self.name = name


class EtagMismatch(CronwireError):
    """The request's etag is not the resource's current one (AIP-154)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(
            f"{kind} {name!r} was changed since the given etag was read; read it again and retry",
            reason="ETAG_MISMATCH",
        )
        self.kind = kind
        self.name = name


class CalendarsChanged(CronwireError):
    """A calendar a schedule names (or reaches) changed or went between reading it and writing the
    schedule with it: the write is refused, to be redone with the calendars as they are now."""

    reason = "CALENDARS_CHANGED"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"a calendar that schedule {name!r} uses changed while it was written; retry",
        )


class FailedPrecondition(CronwireError):
    """The request is valid but the resource is not in a state that allows it."""

    reason = "FAILED_PRECONDITION"


class ResourceExhausted(CronwireError):
    """A limit was reached; the message says which and what to do."""

    reason = "RESOURCE_EXHAUSTED"


class RateLimited(ResourceExhausted):
    """A caller sent requests faster than its allowed rate; `retry_delay` says when to try again."""

    reason = "RATE_LIMITED"

    def __init__(self, message: str, retry_delay: float) -> None:
        super().__init__(message)
        self.retry_delay = retry_delay


class Unauthenticated(CronwireError):
    """No valid credentials: one message for every cause, so it tells an attacker nothing."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(CronwireError):
    """The caller is known but its role does not allow the call."""

    reason = "PERMISSION_DENIED"


class OutOfRange(CronwireError):
    """The request points past what exists (e.g. events no longer retained)."""

    reason = "OUT_OF_RANGE"


class DeadlineExceeded(CronwireError):
    """The server gave up on a computation that took longer than it allows (a preview, say)."""

    reason = "DEADLINE_EXCEEDED"


class StorageUnavailable(CronwireError):
    """The database could not be reached; the call may be retried."""

    reason = "STORAGE_UNAVAILABLE"
    retry_delay = 1.0
