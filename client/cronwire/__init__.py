"""cronwire: the client SDK and CLI of the cronwire job-scheduling service.

    from datetime import timedelta
    import cronwire

    with cronwire.Client("127.0.0.1:50051") as client:
        client.create_job("backup", executor="shell", parameters={"argv": ["pg_dump", "app"]},
                          timeout=timedelta(minutes=10))
        client.create_schedule("nightly", job="backup", trigger=cronwire.CronTrigger("0 3 * * *"),
                               time_zone="Europe/Berlin")
        execution = client.run("backup")          # waits until it has ended
        print(execution.state, execution.output)

`AsyncClient` has the same methods for asyncio. Failed calls raise `CronwireError` subclasses.
"""

from __future__ import annotations

from cronwire._channel import TLSConfig
from cronwire._errors import (
    AlreadyExists,
    Conflict,
    CronwireError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from cronwire._keys import CreatedKey, Key, Role
from cronwire._requests import UNSET
from cronwire._types import (
    AllOfTrigger,
    AnyOfTrigger,
    BackfillResult,
    CallbackDelivery,
    ClusterStatus,
    CompletionCallback,
    CronTrigger,
    DateTrigger,
    DependencyCondition,
    DstPolicy,
    Event,
    EventType,
    Execution,
    ExecutionRetention,
    ExecutionState,
    ExecutionStats,
    ExecutionTrigger,
    FireTime,
    IntervalTrigger,
    Job,
    JobDependent,
    JobType,
    LogChunk,
    LogStream,
    MisfirePolicy,
    Namespace,
    OverlapPolicy,
    Page,
    QueuedExecution,
    Replica,
    RetryPolicy,
    Schedule,
    SchedulePreview,
    SchedulingLag,
    SkipReason,
    Trigger,
)
from cronwire._version import __version__
from cronwire.aio import AsyncClient
from cronwire.client import Client

__all__ = [
    "UNSET",
    "AllOfTrigger",
    "AlreadyExists",
    "AnyOfTrigger",
    "AsyncClient",
    "BackfillResult",
    "CallbackDelivery",
    "Client",
    "ClusterStatus",
    "CompletionCallback",
    "Conflict",
    "CreatedKey",
    "CronTrigger",
    "CronwireError",
    "DateTrigger",
    "DeadlineExceeded",
    "DependencyCondition",
    "DstPolicy",
    "Event",
    "EventType",
    "Execution",
    "ExecutionRetention",
    "ExecutionState",
    "ExecutionStats",
    "ExecutionTrigger",
    "FailedPrecondition",
    "FieldViolation",
    "FireTime",
    "IntervalTrigger",
    "InvalidArgument",
    "Job",
    "JobDependent",
    "JobType",
    "Key",
    "LogChunk",
    "LogStream",
    "MisfirePolicy",
    "Namespace",
    "NotFound",
    "OutOfRange",
    "OverlapPolicy",
    "Page",
    "PermissionDenied",
    "QueuedExecution",
    "Replica",
    "ResourceExhausted",
    "RetryPolicy",
    "Role",
    "Schedule",
    "SchedulePreview",
    "SchedulingLag",
    "SkipReason",
    "TLSConfig",
    "Trigger",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "__version__",
]
