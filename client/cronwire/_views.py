"""The human views of the CLI: one table per listing, one key/value block per resource."""

from __future__ import annotations

import calendar as month_grid
import json
from collections import Counter
from datetime import date
from typing import Any

from cronwire._alerts import Incident
from cronwire._output import (
    cell,
    detail_cell,
    details,
    short,
    showing_exact_times,
    table,
    table_cell,
    trigger_text,
)
from cronwire._types import (
    Calendar,
    CalendarPreview,
    CallbackDelivery,
    ClusterStatus,
    Deadlines,
    Event,
    Execution,
    ExecutionRetention,
    ExecutionStats,
    FireTime,
    Job,
    JobType,
    Namespace,
    RetryPolicy,
    Schedule,
    SchedulePreview,
)
from cronwire._values import format_duration


def _retry_text(policy: RetryPolicy | None) -> str:
    """`4 (3 retries), backoff 30s, x2, up to 1h`: the attempts in all, the first included."""
    if policy is None or policy.max_attempts <= 1:
        return "1 (no retries)"
    retries = policy.max_attempts - 1
    parts = [f"{policy.max_attempts} ({retries} {'retry' if retries == 1 else 'retries'})"]
    if policy.initial_backoff is not None:
        parts.append(f"backoff {format_duration(policy.initial_backoff)}")
    if policy.backoff_multiplier:
        parts.append(f"x{policy.backoff_multiplier:g}")
    if policy.max_backoff is not None:
        parts.append(f"up to {format_duration(policy.max_backoff)}")
    return ", ".join(parts)


def _retention_text(retention: ExecutionRetention | None) -> str:
    if retention is None:
        return "the server's retention"
    parts = [f"the newest {retention.max_count}" if retention.max_count else "any number"]
    parts.append(f"for {format_duration(retention.max_age)}" if retention.max_age else "forever")
    return " ".join(parts)


def success_rate(stats: ExecutionStats | None) -> str | None:
    """The share of the runs with an outcome that succeeded (`-` when none has one yet)."""
    if stats is None or not stats.succeeded + stats.failed:
        return None
    return f"{100 * stats.succeeded / (stats.succeeded + stats.failed):.0f}%"


def _last_run(stats: ExecutionStats | None, when: Any) -> str | None:
    if stats is None or stats.last_run_time is None:
        return None
    state = stats.last_run_state.name if stats.last_run_state is not None else "UNKNOWN"
    return f"{state} {when(stats.last_run_time)}"


def _stats_pairs(stats: ExecutionStats | None) -> list[tuple[str, Any]]:
    if stats is None:
        return []
    rate = success_rate(stats)
    return [
        ("runs", f"{stats.total} ({stats.succeeded} succeeded, {stats.failed} failed)"),
        ("success rate", f"{rate} of the runs that succeeded or failed" if rate else None),
        ("last run", _last_run(stats, detail_cell)),
        ("next run", stats.next_run_time),
        ("median duration", stats.p50_duration),
        *([("deadlines missed", stats.deadlines_missed)] if stats.deadlines_missed else []),
    ]


def job_details(job: Job) -> str:
    return details([*_job_pairs(job), *_stats_pairs(job.stats)])


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _argument_type(declared: Any) -> str:
    """`integer, >= 1`, `one of "eu", "us"`, `array of string`: what an argument may be."""
    if declared is True or declared == {}:
        return "any"
    if declared is False:
        return "refused"
    if not isinstance(declared, dict):
        return _json(declared)
    if "const" in declared:
        return f"= {_json(declared['const'])}"
    if isinstance(declared.get("enum"), list):
        return "one of " + ", ".join(_json(v) for v in declared["enum"])
    kind = declared.get("type")
    text = " or ".join(kind) if isinstance(kind, list) else str(kind) if kind else ""
    items = declared.get("items")
    if text == "array" and isinstance(items, dict) and items:
        text = f"array of {_argument_type(items)}"
    bounds = [
        f"{sign} {_json(declared[key])}"
        for key, sign in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        )
        if key in declared
    ]
    if "pattern" in declared:
        bounds.append(f"matching {declared['pattern']}")
    if "$ref" in declared:
        bounds.append(f"see {declared['$ref']}")
    return ", ".join([text or "any", *bounds]) if bounds or text else "any"


def _declared(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The top-level properties of a schema, its required names, and every name it declares:
    the required ones first, each group by name (a schema's keys come back in no set order)."""
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
    names = sorted({*properties, *required}, key=lambda name: (name not in required, name))
    return properties, required, names


def arguments_summary(schema: dict[str, Any] | None) -> str:
    """`region (required), days, dry_run; no others`: the arguments a job's schema declares."""
    if not schema:
        return "any"
    _, required, names = _declared(schema)
    text = ", ".join(f"{n} (required)" if n in required else n for n in names) or "see jobs describe"
    if schema.get("additionalProperties") is False:
        text += "; no others"
    return text


def arguments_text(schema: dict[str, Any] | None) -> str:
    """A job's arguments_schema for people: one row per top-level argument it declares (type,
    whether required, default, description), and what it says of other arguments."""
    if not schema:
        return "  any (no arguments_schema)\n"
    properties, required, names = _declared(schema)
    rows = []
    for name in names:
        declared = properties.get(name, True)
        body = declared if isinstance(declared, dict) else {}
        rows.append(
            [
                name,
                _argument_type(declared),
                name in required,
                _json(body["default"]) if "default" in body else None,
                body.get("description") or body.get("title"),
            ]
        )
    text = _indent(table(["NAME", "TYPE", "REQUIRED", "DEFAULT", "DESCRIPTION"], rows)) if rows else ""
    other = schema.get("additionalProperties", True)
    if other is not True and other != {}:
        text += f"  other arguments: {_argument_type(other)}\n"
    described = {"type", "properties", "required", "additionalProperties", "$schema", "title", "description"}
    rest = {k: v for k, v in schema.items() if k not in described}
    if rest:
        text += f"  more rules: {_json(rest)}\n"
    return text or f"  {_json(schema)}\n"


def _job_pairs(job: Job, schema_inline: bool = True) -> list[tuple[str, Any]]:
    dependents = ", ".join(
        f"{short(d.job, job.namespace)} ({d.condition.name if d.condition else 'ON_SUCCESS'})"
        for d in job.dependents
    )
    callback = None
    if job.callback is not None:
        states = ",".join(s.name for s in job.callback.states) or "every end"
        callback = f"{job.callback.url} on {states}{' (signed)' if job.callback.secret_set else ''}"
    pairs: list[tuple[str, Any]] = [
        ("name", job.name),
        ("executor", job.executor),
        ("parameters", job.parameters),
        ("description", job.description),
        ("timeout", job.timeout),
        ("attempts", _retry_text(job.retry_policy)),
        ("max concurrency", job.max_concurrency or None),
        ("dependents", dependents),
        ("callback", callback),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(job.labels.items()))),
        ("keeps", _retention_text(job.execution_retention)),
        *([("arguments", arguments_summary(job.arguments_schema))] if schema_inline else []),
        ("created", job.create_time),
        ("updated", job.update_time),
        ("etag", job.etag),
    ]
    return pairs


def jobs_table(jobs: list[Job], namespace: str) -> str:
    rows = []
    for job in jobs:
        stats = job.stats
        rows.append(
            [
                short(job.name, namespace),
                job.executor,
                _last_run(stats, table_cell),
                stats.next_run_time if stats else None,
                success_rate(stats),
                job.timeout,
                _retry_text(job.retry_policy),
                job.description,
            ]
        )
    headers = ["NAME", "EXECUTOR", "LAST RUN", "NEXT RUN", "SUCCESS %", "TIMEOUT", "ATTEMPTS", "DESCRIPTION"]
    return table(headers, rows)


def job_types_table(types: list[JobType]) -> str:
    return table(["NAME", "DESCRIPTION"], [[t.name, t.description] for t in types])


def namespaces_table(namespaces: list[Namespace]) -> str:
    return table(["NAME", "JOBS", "SCHEDULES"], [[n.id, n.job_count, n.schedule_count] for n in namespaces])


def schedule_details(schedule: Schedule) -> str:
    return details([*_schedule_pairs(schedule), *_stats_pairs(schedule.stats)])


def _schedule_pairs(schedule: Schedule) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        ("name", schedule.name),
        ("job", schedule.job),
        ("trigger", trigger_text(schedule.trigger)),
        ("time zone", schedule.time_zone),
        ("description", schedule.description),
        (
            "paused",
            f"yes ({schedule.pause_reason})"
            if schedule.paused and schedule.pause_reason
            else schedule.paused,
        ),
        ("next fire", schedule.next_fire_time),
        ("start", schedule.start_time),
        ("end", schedule.end_time),
        ("jitter", schedule.jitter),
        ("misfire policy", schedule.misfire_policy.name if schedule.misfire_policy else None),
        ("catch-up window", schedule.catchup_window),
        ("overlap policy", schedule.overlap_policy.name if schedule.overlap_policy else None),
        ("arguments", schedule.arguments),
        ("created", schedule.create_time),
        ("updated", schedule.update_time),
        ("etag", schedule.etag),
    ]
    # Shown only when set: a schedule without calendars reads as before.
    calendars = [
        ("exclude calendars", ", ".join(schedule.exclude_calendars)),
        ("only on calendars", ", ".join(schedule.only_on_calendars)),
    ]
    pairs[-3:-3] = [(key, value) for key, value in calendars if value]
    if schedule.deadlines is not None:
        pairs[-3:-3] = [("deadlines", deadlines_text(schedule.deadlines))]
    return pairs


def incident_text(incident: Incident) -> str:
    """`FAILED, 5 alert(s), OPEN: ...`."""
    state = f"resolved {cell(incident.resolve_time)}" if incident.resolve_time else "OPEN"
    kind = incident.kind.name if incident.kind else "?"
    return f"{kind}, {incident.alerts} alert(s), {state}: {incident.summary}"


def deadlines_text(deadlines: Deadlines) -> str:
    """`start within 5m, finish by 09:30, max duration 1h`."""
    parts = []
    if deadlines.start_within is not None:
        parts.append(f"start within {cell(deadlines.start_within)}")
    if isinstance(deadlines.finish_by, str):
        parts.append(f"finish by {deadlines.finish_by} local")
    elif deadlines.finish_by is not None:
        parts.append(f"finish within {cell(deadlines.finish_by)} of the tick")
    if deadlines.max_duration is not None:
        parts.append(f"max duration {cell(deadlines.max_duration)}")
    return ", ".join(parts)


def _section(title: str, body: str, empty: str = "none") -> str:
    return f"\n{title}:\n" + (body if body else f"  {empty}\n")


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def active_table(executions: list[Execution], namespace: str) -> str:
    rows = [
        [short(e.name, namespace), e.state, e.trigger.name if e.trigger else None, e.attempt, e.start_time]
        for e in executions
    ]
    return table(["NAME", "STATE", "TRIGGER", "ATTEMPT", "STARTED"], rows)


def job_describe(
    job: Job, schedules: list[Schedule], active: list[Execution], recent: list[Execution], namespace: str
) -> str:
    """`jobs describe`: the job, its arguments, its statistics, its schedules, what runs now, its
    last runs."""
    text = details(_job_pairs(job, schema_inline=False))
    text += _section("arguments", arguments_text(job.arguments_schema))
    text += _section("statistics", _indent(details(_stats_pairs(job.stats))) if job.stats else "")
    schedule_rows = [
        [short(s.name, namespace), trigger_text(s.trigger), s.time_zone, s.paused, s.next_fire_time]
        for s in schedules
    ]
    text += _section(
        "schedules",
        _indent(table(["NAME", "TRIGGER", "TIME ZONE", "PAUSED", "NEXT FIRE"], schedule_rows))
        if schedules
        else "",
    )
    text += _section("running or queued", _indent(active_table(active, namespace)) if active else "")
    text += _section(
        f"last {len(recent)} runs" if recent else "last runs",
        _indent(executions_table(recent, namespace)) if recent else "",
    )
    return text


def skipped_text(skipped: list[Execution], capped: bool) -> str:
    """`3 (overlap 2, missed 1)`: skipped ticks by reason."""
    if not skipped:
        return "0"
    reasons = Counter(e.skip_reason.name.lower() if e.skip_reason else "unknown" for e in skipped)
    by_reason = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
    return f"{len(skipped)}{'+' if capped else ''} ({by_reason})"


def schedule_describe(
    schedule: Schedule,
    preview: SchedulePreview,
    skipped: list[Execution],
    skipped_capped: bool,
    active: list[Execution],
    recent: list[Execution],
    namespace: str,
) -> str:
    """`schedules describe`: the schedule, its statistics, its next fire times, skipped ticks,
    what runs now and its last runs."""
    text = details(_schedule_pairs(schedule))
    stats = [*_stats_pairs(schedule.stats), ("skipped ticks", skipped_text(skipped, skipped_capped))]
    text += _section("statistics", _indent(details(stats)))
    text += _section(
        f"next {len(preview.fire_times)} fire times" if preview.fire_times else "next fire times",
        _indent(preview_table(preview, with_age=True)) if preview.fire_times else "",
        "none planned",
    )
    text += _section("running or queued", _indent(active_table(active, namespace)) if active else "")
    text += _section(
        f"last {len(recent)} runs" if recent else "last runs",
        _indent(executions_table(recent, namespace)) if recent else "",
    )
    return text


def schedules_table(schedules: list[Schedule], namespace: str) -> str:
    rows = [
        [
            short(s.name, namespace),
            short(s.job, namespace),
            trigger_text(s.trigger),
            s.time_zone,
            s.paused,
            s.next_fire_time,
        ]
        for s in schedules
    ]
    return table(["NAME", "JOB", "TRIGGER", "TIME ZONE", "PAUSED", "NEXT FIRE"], rows)


def preview_table(preview: SchedulePreview, with_age: bool = False) -> str:
    with_age = with_age and not showing_exact_times()

    def flags(time: FireTime) -> str:
        marks = [m for m, on in (("DST gap", time.in_dst_gap), ("DST fold", time.in_dst_fold)) if on]
        if time.excluded:
            calendar_id = time.excluded_by.rpartition("/")[2]
            marks.append(f"SKIPPED by calendar {calendar_id}: {time.exclusion_reason}")
        return ", ".join(marks)

    headers = ["FIRE TIME (UTC)", f"LOCAL TIME ({preview.time_zone})"] + (["IN"] if with_age else [])
    rows = [
        [cell(t.fire_time), t.local_time.isoformat()] + ([t.fire_time] if with_age else []) + [flags(t)]
        for t in preview.fire_times
    ]
    return table([*headers, "NOTE"], rows)


def _outcome(execution: Execution) -> str:
    if execution.exit_code is not None:
        return f"exit {execution.exit_code}"
    if execution.http_status is not None:
        return f"HTTP {execution.http_status}"
    if execution.skip_reason is not None:
        return execution.skip_reason.name.lower()
    return ""


def _delivery_text(delivery: CallbackDelivery | None) -> str | None:
    """`failed after 5 attempts: HTTP 500 (...)`: the completion callback's delivery."""
    if delivery is None:
        return None
    attempts = f"{delivery.attempts} attempt{'' if delivery.attempts == 1 else 's'}"
    if delivery.delivered:
        status = f" (HTTP {delivery.http_status})" if delivery.http_status is not None else ""
        return f"delivered after {attempts}{status}"
    if not delivery.attempts:
        return "pending"
    code = delivery.http_status
    reasons = [f"HTTP {code}"] if code is not None and str(code) not in delivery.error else []
    if delivery.error:
        reasons.append(delivery.error)
    last = f", last at {cell(delivery.last_attempt_time)}" if delivery.last_attempt_time else ""
    return f"not delivered after {attempts}{last}: {'; '.join(reasons) or 'no answer'}"


def execution_details(execution: Execution) -> str:
    pairs: list[tuple[str, Any]] = [
        ("name", execution.name),
        ("job", execution.job),
        ("schedule", execution.schedule),
        ("state", execution.state),
        ("outcome", _outcome(execution)),
        ("error", execution.error),
        ("trigger", execution.trigger.name if execution.trigger else None),
        ("attempt", execution.attempt),
        ("first attempt", execution.first_attempt),
        ("parent", execution.parent_execution),
        ("arguments", execution.arguments),
        ("scheduled", execution.scheduled_time),
        ("started", execution.start_time),
        ("ended", execution.end_time),
        ("duration", execution.duration),
        ("next attempt", execution.next_attempt_time),
        ("worker", execution.worker),
        ("result", execution.result),
        ("callback", _delivery_text(execution.callback_delivery)),
    ]
    text = details(pairs)
    if execution.output:
        truncated = " (truncated)" if execution.output_truncated else ""
        text += f"output{truncated}:\n{execution.output}"
        if not execution.output.endswith("\n"):
            text += "\n"
    return text


def executions_table(executions: list[Execution], namespace: str) -> str:
    rows = [
        [
            short(e.name, namespace),
            short(e.job, namespace),
            e.state,
            e.trigger.name if e.trigger else None,
            e.attempt,
            e.scheduled_time,
            e.duration,
            _outcome(e),
        ]
        for e in executions
    ]
    return table(["NAME", "JOB", "STATE", "TRIGGER", "ATTEMPT", "SCHEDULED", "DURATION", "OUTCOME"], rows)


def event_line(event: Event) -> str:
    kind = event.type.name if event.type else "UNKNOWN"
    state = ""
    if event.execution is not None and event.execution.error:
        state = f"  {event.execution.error}"
    return f"{event.sequence}  {cell(event.time)}  {kind}  {event.resource}{state}\n"


def events_table(events: list[Event]) -> str:
    rows = [[e.sequence, e.time, e.type.name if e.type else None, e.resource] for e in events]
    return table(["SEQUENCE", "TIME", "TYPE", "RESOURCE"], rows)


def cluster_status_view(status: ClusterStatus, namespace: str) -> str:
    """The queue and the lag as key/value lines, then one row per replica."""
    lag = status.scheduling_lag
    oldest = status.oldest_queued_execution
    lines = details(
        [
            ("server version", status.server_version),
            ("queued", status.queued_executions),
            (
                "oldest queued",
                f"{short(oldest.name, namespace)} (job {short(oldest.job, namespace)}, "
                f"queued {cell(oldest.create_time)})"
                if oldest is not None
                else None,
            ),
            ("running", status.running_executions),
            (
                f"lag ({cell(lag.window)})",
                f"p50 {_seconds(lag.p50)}, p90 {_seconds(lag.p90)}, p99 {_seconds(lag.p99)} "
                f"over {lag.samples} started"
                if lag.samples
                else "no executions started",
            ),
        ]
    )
    alive = sum(1 for r in status.replicas if r.alive)
    rows = [
        [
            r.id,
            r.version,
            ",".join(r.roles),
            r.start_time,
            r.heartbeat_time,
            "yes" if r.alive else "NO",
            ",".join(r.loops_down) or "-",
        ]
        for r in status.replicas
    ]
    replicas = table(
        ["REPLICA", "VERSION", "ROLES", "STARTED", "LAST HEARTBEAT", "ALIVE", "LOOPS DOWN"], rows
    )
    text = f"{lines}\nreplicas: {alive} alive of {len(status.replicas)}\n{replicas}"
    if not status.workers:
        return text + "remote workers: none connected\n"
    # One row per queue a worker serves: the free slots of each queue at a glance.
    rows = [
        [
            queue,
            w.identity,
            str(w.free_slots),
            str(w.running),
            ",".join(w.namespaces) or "*",
            w.replica,
            w.connect_time,
        ]
        for queue in sorted({q for w in status.workers for q in w.queues})
        for w in status.workers
        if queue in w.queues
    ]
    workers = table(["QUEUE", "WORKER", "FREE SLOTS", "RUNNING", "NAMESPACES", "REPLICA", "CONNECTED"], rows)
    return f"{text}remote workers: {len(status.workers)} connected\n{workers}"


def _seconds(value: Any) -> str:
    return f"{value.total_seconds():.3f}s"


# Calendars


def _calendar_rules(calendar: Calendar) -> list[tuple[str, Any]]:
    dates = [d.start.isoformat() + (f"..{d.end.isoformat()}" if d.end else "") for d in calendar.dates]
    return [
        ("dates", ", ".join(dates) or None),
        ("yearly", ", ".join(f"{y.month:02d}-{y.day:02d}" for y in calendar.yearly_dates) or None),
        ("weekdays", ", ".join(w.name.lower()[:3] for w in calendar.weekdays) or None),
        (
            "public holidays",
            ", ".join(
                h.country + (f"-{h.subdivision}" if h.subdivision else "") for h in calendar.public_holidays
            )
            or None,
        ),
        ("hours", ", ".join(f"{t.start}-{t.end}" for t in calendar.time_ranges) or None),
        ("include", ", ".join(calendar.include_calendars) or None),
        ("exclude", ", ".join(calendar.exclude_calendars) or None),
    ]


def calendar_details(calendar: Calendar) -> str:
    pairs: list[tuple[str, Any]] = [
        ("name", calendar.name),
        ("time zone", calendar.time_zone),
        ("description", calendar.description),
        *[(k, v) for k, v in _calendar_rules(calendar) if v is not None],
        ("created", calendar.create_time),
        ("updated", calendar.update_time),
        ("etag", calendar.etag),
    ]
    return details(pairs)


def calendars_table(calendars: list[Calendar], namespace: str) -> str:
    def rules(calendar: Calendar) -> str:
        return "; ".join(f"{k} {v}" for k, v in _calendar_rules(calendar) if v is not None)

    rows = [[short(c.name, namespace), c.time_zone, rules(c)] for c in calendars]
    return table(["NAME", "TIME ZONE", "RULES"], rows)


_WEEKDAY_NAMES = {name.lower() for name in month_grid.day_name}


def calendar_year_view(preview: CalendarPreview) -> str:
    """Twelve month grids, three across: a day the calendar holds whole is marked `*`, a day it
    holds in part `~`; then the days it holds for a reason other than their weekday."""
    held = {d.day: d for d in preview.days}
    blocks = []
    for month in range(1, 13):
        lines = [month_grid.month_name[month].center(28).rstrip(), " Mo  Tu  We  Th  Fr  Sa  Su"]
        for week in month_grid.Calendar().monthdayscalendar(preview.year, month):
            cells = []
            for day in week:
                if not day:
                    cells.append("    ")
                    continue
                found = held.get(date(preview.year, month, day))
                mark = " " if found is None else ("~" if found.time_ranges else "*")
                cells.append(f"{day:3d}{mark}")
            lines.append("".join(cells).rstrip())
        blocks.append(lines)
    out = [f"{preview.year}, {preview.time_zone}: * whole day on the calendar, ~ part of the day\n"]
    for row in range(0, 12, 3):
        group = blocks[row : row + 3]
        height = max(len(b) for b in group)
        for i in range(height):
            out.append("   ".join((b[i] if i < len(b) else "").ljust(28) for b in group).rstrip() + "\n")
        out.append("\n")
    whole = sum(1 for d in preview.days if not d.time_ranges)
    out.append(f"{len(preview.days)} days on the calendar ({whole} whole)\n")
    for held_day in preview.days:
        # "Monday", or "Monday (calendar weekdays)" through an included calendar.
        if held_day.reason.split(" (", 1)[0].lower() in _WEEKDAY_NAMES and not held_day.time_ranges:
            continue
        hours = ", ".join(f"{t.start}-{t.end}" for t in held_day.time_ranges)
        suffix = f"  ({hours})" if hours else ""
        when = f"{held_day.day.isoformat()} {held_day.day.strftime('%a')}"
        out.append(f"  {when}  {held_day.reason}{suffix}\n")
    return "".join(out)
