"""The role each RPC needs: one table, checked by the interceptor for every call.

A method missing here is refused to every key (and a test fails), so a new RPC cannot
slip through unprotected.
"""

from __future__ import annotations

from cronwire_server.auth.keys import Role

_V, _E, _A, _W = Role.VIEWER, Role.EDITOR, Role.ADMIN, Role.WORKER

REQUIRED_ROLES: dict[str, Role] = {
    "/cronwire.v1.JobService/CreateJob": _E,
    "/cronwire.v1.JobService/GetJob": _V,
    "/cronwire.v1.JobService/ListJobs": _V,
    "/cronwire.v1.JobService/UpdateJob": _E,
    "/cronwire.v1.JobService/DeleteJob": _E,
    "/cronwire.v1.JobService/RunJob": _E,
    "/cronwire.v1.JobService/ListJobTypes": _V,
    "/cronwire.v1.ScheduleService/CreateSchedule": _E,
    "/cronwire.v1.ScheduleService/GetSchedule": _V,
    "/cronwire.v1.ScheduleService/ListSchedules": _V,
    "/cronwire.v1.ScheduleService/UpdateSchedule": _E,
    "/cronwire.v1.ScheduleService/DeleteSchedule": _E,
    "/cronwire.v1.ScheduleService/PauseSchedule": _E,
    "/cronwire.v1.ScheduleService/ResumeSchedule": _E,
    "/cronwire.v1.ScheduleService/BackfillSchedule": _E,
    "/cronwire.v1.ScheduleService/PreviewSchedule": _V,
    "/cronwire.v1.CalendarService/CreateCalendar": _E,
    "/cronwire.v1.CalendarService/GetCalendar": _V,
    "/cronwire.v1.CalendarService/ListCalendars": _V,
    "/cronwire.v1.CalendarService/UpdateCalendar": _E,
    "/cronwire.v1.CalendarService/DeleteCalendar": _E,
    "/cronwire.v1.CalendarService/PreviewCalendar": _V,
    "/cronwire.v1.NotificationService/CreateNotificationRoute": _E,
    "/cronwire.v1.NotificationService/GetNotificationRoute": _V,
    "/cronwire.v1.NotificationService/ListNotificationRoutes": _V,
    "/cronwire.v1.NotificationService/UpdateNotificationRoute": _E,
    "/cronwire.v1.NotificationService/DeleteNotificationRoute": _E,
    "/cronwire.v1.NotificationService/CreateNotificationRule": _E,
    "/cronwire.v1.NotificationService/GetNotificationRule": _V,
    "/cronwire.v1.NotificationService/ListNotificationRules": _V,
    "/cronwire.v1.NotificationService/UpdateNotificationRule": _E,
    "/cronwire.v1.NotificationService/DeleteNotificationRule": _E,
    "/cronwire.v1.NotificationService/ListIncidents": _V,
    "/cronwire.v1.CheckInService/CreateCheckIn": _E,
    "/cronwire.v1.CheckInService/GetCheckIn": _V,
    "/cronwire.v1.CheckInService/ListCheckIns": _V,
    "/cronwire.v1.CheckInService/UpdateCheckIn": _E,
    "/cronwire.v1.CheckInService/DeleteCheckIn": _E,
    # A ping: a key that may read the check-in's namespace, and the check-in's token.
    "/cronwire.v1.CheckInService/CheckIn": _V,
    "/cronwire.v1.NotificationService/ListNotificationDeliveries": _V,
    "/cronwire.v1.ExecutionService/GetExecution": _V,
    "/cronwire.v1.ExecutionService/ListExecutions": _V,
    "/cronwire.v1.ExecutionService/CancelExecution": _E,
    "/cronwire.v1.ExecutionService/StreamExecutionLogs": _V,
    "/cronwire.v1.EventService/WatchEvents": _V,
    "/cronwire.v1.EventService/ListEvents": _V,
    "/cronwire.v1.KeyService/CreateKey": _A,
    "/cronwire.v1.KeyService/GetKey": _A,
    "/cronwire.v1.KeyService/ListKeys": _A,
    "/cronwire.v1.KeyService/RevokeKey": _A,
    "/cronwire.v1.ClusterService/GetClusterStatus": _V,
    "/cronwire.v1.ClusterService/ListNamespaces": _V,
    # Only worker keys, and they nothing else (Role.may).
    "/cronwire.v1.WorkerService/Connect": _W,
}

# Standard services, whole: they need a key only when not exempt (--auth-exempt-services).
SERVICE_ROLES: dict[str, Role] = {
    "grpc.health.v1.Health": _V,
    "grpc.reflection.v1alpha.ServerReflection": _V,
    "grpc.reflection.v1.ServerReflection": _V,
}


def required_role(method: str) -> Role | None:
    """The role `method` (`/package.Service/Method`) needs; None if it is not in the tables."""
    return REQUIRED_ROLES.get(method) or SERVICE_ROLES.get(method.split("/")[1])
