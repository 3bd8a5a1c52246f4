"""The SDK's public surface is explicit and pinned: a change to it is a deliberate change here."""

from __future__ import annotations

import inspect
import subprocess
import sys

import cronwire

EXPORTED = [
    "DeadlineKind",
    "DeadlineMiss",
    "CheckIn",
    "CheckInPingKind",
    "CreatedCheckIn",
    "AlertKind",
    "Deadlines",
    "DeliveryState",
    "EmailDestination",
    "EmailSecurity",
    "Incident",
    "NotificationDelivery",
    "NotificationRoute",
    "NotificationRule",
    "PagerDutyDestination",
    "SlackDestination",
    "WebhookDestination",
    "UNSET",
    "TaskContext",
    "Worker",
    "current_task",
    "AllOfTrigger",
    "AlreadyExists",
    "AnyOfTrigger",
    "AsyncClient",
    "BackfillResult",
    "BusinessDayTrigger",
    "Calendar",
    "CalendarDay",
    "CalendarPreview",
    "CallbackDelivery",
    "Client",
    "ClusterStatus",
    "CompletionCallback",
    "Conflict",
    "ConnectedWorker",
    "CreatedKey",
    "CronTrigger",
    "CronwireError",
    "DateRange",
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
    "PublicHolidays",
    "QueuedExecution",
    "Replica",
    "ResourceExhausted",
    "RetryPolicy",
    "Role",
    "RRuleTrigger",
    "Schedule",
    "SchedulePreview",
    "SchedulingLag",
    "SkipReason",
    "TLSConfig",
    "TimeRange",
    "Trigger",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Weekday",
    "YearlyDate",
    "__version__",
]

CLIENT_METHODS = [
    "backfill_schedule",
    "cancel_execution",
    "close",
    "cluster_status",
    "create_calendar",
    "create_check_in",
    "create_job",
    "create_key",
    "create_notification_route",
    "create_notification_rule",
    "create_schedule",
    "delete_calendar",
    "delete_check_in",
    "delete_job",
    "delete_notification_route",
    "delete_notification_rule",
    "delete_schedule",
    "get_calendar",
    "get_check_in",
    "get_execution",
    "get_job",
    "get_key",
    "get_notification_route",
    "get_notification_rule",
    "get_schedule",
    "iter_calendars",
    "iter_check_ins",
    "iter_events",
    "iter_executions",
    "iter_jobs",
    "iter_keys",
    "iter_namespaces",
    "iter_notification_routes",
    "iter_notification_rules",
    "iter_schedules",
    "list_calendars",
    "list_check_ins",
    "list_events",
    "list_executions",
    "list_incidents",
    "list_job_types",
    "list_jobs",
    "list_keys",
    "list_namespaces",
    "list_notification_deliveries",
    "list_notification_routes",
    "list_notification_rules",
    "list_schedules",
    "logs",
    "namespace",
    "pause_schedule",
    "ping_check_in",
    "preview_calendar",
    "preview_schedule",
    "resume_schedule",
    "revoke_key",
    "run",
    "run_job",
    "update_calendar",
    "update_check_in",
    "update_job",
    "update_notification_route",
    "update_notification_rule",
    "update_schedule",
    "wait_for_execution",
    "watch",
]


def _public(cls: type) -> list[str]:
    return sorted(name for name in vars(cls) if not name.startswith("_"))


def test_all_is_pinned_and_importable() -> None:
    assert sorted(cronwire.__all__) == sorted(EXPORTED)
    for name in cronwire.__all__:
        assert hasattr(cronwire, name), name


def test_no_generated_class_is_exported() -> None:
    for name in cronwire.__all__:
        module = getattr(getattr(cronwire, name), "__module__", "") or ""
        assert not module.startswith("cronwire.v1"), name


def test_clients_have_the_same_pinned_methods() -> None:
    assert _public(cronwire.Client) == CLIENT_METHODS
    assert _public(cronwire.AsyncClient) == CLIENT_METHODS


def test_async_client_methods_are_coroutines_or_async_iterators() -> None:
    for name in CLIENT_METHODS:
        if name == "namespace":
            continue
        method = getattr(cronwire.AsyncClient, name)
        streaming = name.startswith("iter_") or name in ("logs", "watch")
        if streaming:
            assert not inspect.iscoroutinefunction(method), name
        else:
            assert inspect.iscoroutinefunction(method), name


def test_every_public_callable_has_a_docstring() -> None:
    for cls in (cronwire.Client, cronwire.AsyncClient):
        for name in _public(cls):
            assert inspect.getdoc(getattr(cls, name)), f"{cls.__name__}.{name}"
    for name in cronwire.__all__:
        value = getattr(cronwire, name)
        if inspect.isclass(value):
            assert inspect.getdoc(value), name


def test_enums_carry_no_proto_prefix() -> None:
    assert cronwire.ExecutionState.SUCCEEDED.name == "SUCCEEDED"
    assert cronwire.OverlapPolicy.QUEUE_ONE.name == "QUEUE_ONE"
    assert cronwire.EventType.EXECUTION_FAILED.name == "EXECUTION_FAILED"
    assert all("UNSPECIFIED" not in member.name for member in cronwire.EventType)


def test_error_classes_share_one_root() -> None:
    for name in cronwire.__all__:
        value = getattr(cronwire, name)
        if inspect.isclass(value) and issubclass(value, Exception):
            assert issubclass(value, cronwire.CronwireError), name


def test_the_client_never_imports_the_server() -> None:
    code = (
        "import sys, cronwire, cronwire.cli, cronwire.aio; "
        "print(sorted(m for m in sys.modules if m.startswith('cronwire_server')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
