"""`cronwire apply`: make a namespace's jobs and schedules match a file.

The file (YAML or JSON) is a mapping:

    namespace: default            # optional; else the CLI's --namespace
    jobs:
      - name: backup              # an id, or a full name in that namespace
        executor: shell
        parameters: {argv: [pg_dump, app]}
        timeout: 10m
        retry_policy: {max_attempts: 3, initial_backoff: 30s}
        arguments_schema:         # optional: a JSON Schema for the arguments of its runs
          type: object
          properties: {target: {enum: [full, incremental], default: full}}
        schedules:                # optional: schedules of this job
          - name: nightly
            trigger: {cron: "0 3 * * *"}
            time_zone: Europe/Berlin
    schedules:                    # schedules may also be listed on their own, with `job`
      - name: hourly
        job: backup
        trigger: {every: 1h}
    calendars:                    # optional: calendars, applied before the schedules
      - name: business-days       # that name them
        time_zone: Europe/Berlin
        weekdays: mon-fri
        exclude_calendars: [bavaria]
      - name: bavaria
        time_zone: Europe/Berlin
        public_holidays: [DE-BY]

Missing resources are created; existing ones get the fields the file names updated (with
the etag just read, so a concurrent change fails instead of being overwritten); `null`
clears a field. With `prune`, jobs, schedules and calendars of the namespace the file does not
name are deleted. Before anything changes, the server checks every create and update of the file
(validate_only); `--dry-run` stops there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cronwire._convert import resource_name, split_name
from cronwire._documents import (
    CALENDAR_FIELDS,
    CALENDAR_OUTPUT_ONLY,
    JOB_FIELDS,
    JOB_OUTPUT_ONLY,
    SCHEDULE_FIELDS,
    SCHEDULE_OUTPUT_ONLY,
    DocumentError,
    read_list,
    read_object,
    read_spec,
    read_str,
)
from cronwire._errors import CronwireError, InvalidArgument, NotFound
from cronwire._output import YAML_MISSING, OutputError, yaml_module
from cronwire._types import (
    AllOfTrigger,
    AnyOfTrigger,
    BusinessDayTrigger,
    Calendar,
    CompletionCallback,
    DateRange,
    DependencyCondition,
    Job,
    JobDependent,
    MisfirePolicy,
    OverlapPolicy,
    Schedule,
    Trigger,
)
from cronwire.client import Client

DEFAULT_TIME_ZONE = "UTC"
DEFAULT_CATCHUP_WINDOW = timedelta(hours=1)

PAST = {
    "create": "created",
    "update": "updated",
    "unchanged": "unchanged",
    "delete": "deleted",
    "pause": "paused",
    "resume": "resumed",
}


@dataclass
class Item:
    """One job or schedule of the file: its full name, the fields given, the raw document."""

    name: str
    fields: dict[str, Any]
    document: dict[str, Any]
    path: str
    job: str = ""


@dataclass
class ApplyFile:
    namespace: str
    jobs: list[Item] = field(default_factory=list)
    schedules: list[Item] = field(default_factory=list)
    calendars: list[Item] = field(default_factory=list)


@dataclass(frozen=True)
class Change:
    """What apply did (or, on a dry run, would do) to one resource."""

    kind: str
    name: str
    action: str
    fields: tuple[str, ...] = ()

    def text(self, dry_run: bool) -> str:
        verb = f"would {self.action}" if dry_run and self.action != "unchanged" else PAST[self.action]
        changed = f": {', '.join(self.fields)}" if self.fields else ""
        return f"{self.kind} {self.name} {verb}{changed}"


# Reading the file


def parse_text(text: str, source: str) -> Any:
    """The document in `text`: JSON for `.json` sources, YAML otherwise (JSON is YAML too)."""
    if source.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise DocumentError("", f"{source} is not valid JSON: {error}") from None
    try:
        yaml = yaml_module()
    except OutputError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise DocumentError("", f"{source}: {YAML_MISSING}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise DocumentError("", f"{source} is not valid YAML: {error}") from None


def _full_name(kind: str, value: str, namespace: str, path: str) -> str:
    name = resource_name(kind, value, namespace)
    owner, resource_id = split_name(name)
    if not resource_id or name.split("/")[2] != f"{kind}s":
        raise DocumentError(path, f"{value!r} is not a {kind} id or name")
    if owner != namespace:
        raise DocumentError(path, f"{value!r} is not in namespace {namespace!r}, the namespace being applied")
    return name


def read_file(document: Any, default_namespace: str) -> ApplyFile:
    """Check the whole file before anything is sent: every problem names its place."""
    if document is None:
        document = {}
    body = read_object(document, "")
    unknown = set(body) - {"namespace", "jobs", "schedules", "calendars"}
    if unknown:
        raise DocumentError(
            sorted(unknown)[0], "unknown top-level key; known: namespace, jobs, schedules, calendars"
        )
    namespace = read_str(body["namespace"], "namespace") if body.get("namespace") else default_namespace
    result = ApplyFile(namespace)
    for index, raw in enumerate(read_list(body.get("calendars") or [], "calendars")):
        path = f"calendars[{index}]"
        document_copy = read_object(raw, path)
        ids, fields = read_spec(document_copy, path, CALENDAR_FIELDS, CALENDAR_OUTPUT_ONLY, ("name",))
        if "name" not in ids:
            raise DocumentError(f"{path}.name", "is required")
        for key in ("include_calendars", "exclude_calendars"):
            if fields.get(key):
                fields[key] = _calendar_names(fields[key], namespace, f"{path}.{key}")
        name = _full_name("calendar", ids["name"], namespace, f"{path}.name")
        result.calendars.append(Item(name, fields, document_copy, path))
    nested: list[tuple[Any, str, str]] = []
    for index, raw in enumerate(read_list(body.get("jobs") or [], "jobs")):
        path = f"jobs[{index}]"
        document_copy = read_object(raw, path)
        inner = document_copy.pop("schedules", None)
        ids, fields = read_spec(document_copy, path, JOB_FIELDS, JOB_OUTPUT_ONLY, ("name",))
        if "name" not in ids:
            raise DocumentError(f"{path}.name", "is required")
        if "executor" not in fields:
            raise DocumentError(f"{path}.executor", "is required")
        name = _full_name("job", ids["name"], namespace, f"{path}.name")
        result.jobs.append(Item(name, fields, document_copy, path))
        for child_index, child in enumerate(read_list(inner or [], f"{path}.schedules")):
            nested.append((child, f"{path}.schedules[{child_index}]", name))
    listed = [
        (raw, f"schedules[{i}]", "")
        for i, raw in enumerate(read_list(body.get("schedules") or [], "schedules"))
    ]
    for raw, path, job in [*nested, *listed]:
        document_copy = read_object(raw, path)
        if job and "job" in document_copy:
            raise DocumentError(f"{path}.job", "is implied by the job the schedule is listed under")
        ids, fields = read_spec(document_copy, path, SCHEDULE_FIELDS, SCHEDULE_OUTPUT_ONLY, ("name", "job"))
        for key in ("name", "job") if not job else ("name",):
            if key not in ids:
                raise DocumentError(f"{path}.{key}", "is required")
        if "trigger" not in fields:
            raise DocumentError(f"{path}.trigger", "is required")
        name = _full_name("schedule", ids["name"], namespace, f"{path}.name")
        job_name = job or _full_name("job", ids["job"], namespace, f"{path}.job")
        fields["trigger"] = _with_calendar_names(fields["trigger"], namespace, f"{path}.trigger")
        for key in ("exclude_calendars", "only_on_calendars"):
            if fields.get(key):
                fields[key] = _calendar_names(fields[key], namespace, f"{path}.{key}")
        result.schedules.append(Item(name, fields, document_copy, path, job=job_name))
    for kind, items in (
        ("job", result.jobs),
        ("schedule", result.schedules),
        ("calendar", result.calendars),
    ):
        seen: dict[str, str] = {}
        for item in items:
            if item.name in seen:
                raise DocumentError(item.path, f"{kind} {item.name} is also given at {seen[item.name]}")
            seen[item.name] = item.path
    return result


def _calendar_names(values: list[str], namespace: str, path: str) -> list[str]:
    return [_full_name("calendar", v, namespace, f"{path}[{i}]") for i, v in enumerate(values)]


def _with_calendar_names(trigger: Trigger, namespace: str, path: str) -> Trigger:
    """`trigger` with the calendars of its business days as full names, as the server shows them."""
    if isinstance(trigger, BusinessDayTrigger):
        full = _full_name("calendar", trigger.calendar, namespace, f"{path}.business_day.calendar")
        return dataclasses.replace(trigger, calendar=full)
    if isinstance(trigger, AnyOfTrigger | AllOfTrigger):
        kind = "any_of" if isinstance(trigger, AnyOfTrigger) else "all_of"
        children = [
            _with_calendar_names(t, namespace, f"{path}.{kind}[{i}]") for i, t in enumerate(trigger.triggers)
        ]
        return AnyOfTrigger(children) if isinstance(trigger, AnyOfTrigger) else AllOfTrigger(children)
    return trigger


def _trigger_calendars(trigger: Trigger | None) -> list[str]:
    if isinstance(trigger, BusinessDayTrigger):
        return [trigger.calendar]
    if isinstance(trigger, AnyOfTrigger | AllOfTrigger):
        return [name for t in trigger.triggers for name in _trigger_calendars(t)]
    return []


def _named_calendars(item: Item) -> list[str]:
    """The calendars (full names) a calendar or schedule of the file names, in order."""
    fields = item.fields
    keys = ("include_calendars", "exclude_calendars", "only_on_calendars")
    named = [name for key in keys for name in fields.get(key) or []]
    return list(dict.fromkeys(named + _trigger_calendars(fields.get("trigger"))))


def _calendar_order(items: list[Item]) -> list[Item]:
    """The file's calendars, each after the calendars of the file it names (cycles are left in
    file order, for the server to refuse)."""
    by_name = {item.name: item for item in items}
    ordered: list[Item] = []
    visiting: set[str] = set()

    def visit(item: Item) -> None:
        if item in ordered or item.name in visiting:
            return
        visiting.add(item.name)
        for name in _named_calendars(item):
            if name in by_name:
                visit(by_name[name])
        ordered.append(item)

    for item in items:
        visit(item)
    return ordered


# Comparing


def _dependents_key(
    dependents: list[JobDependent] | None, namespace: str
) -> list[tuple[str, DependencyCondition]]:
    return [
        (resource_name("job", d.job, namespace), d.condition or DependencyCondition.ON_SUCCESS)
        for d in dependents or []
    ]


def _job_field_differs(key: str, wanted: Any, current: Job, item: Item, namespace: str) -> bool:
    have = getattr(current, key)
    if key == "retry_policy":
        if wanted is None or have is None:
            return (wanted is None) != (have is None)
        given = item.document.get("retry_policy") or {}
        return any(getattr(wanted, k) != getattr(have, k) for k in given)
    if key == "dependents":
        return _dependents_key(wanted, namespace) != _dependents_key(have, namespace)
    if key == "callback":
        if wanted is None or have is None:
            return (wanted is None) != (have is None)
        assert isinstance(wanted, CompletionCallback)
        assert isinstance(have, CompletionCallback)
        # The secret is never read back: only a secret given where none is stored is a change.
        new_secret = bool(wanted.secret) and not have.secret_set
        return wanted.url != have.url or list(wanted.states) != list(have.states) or new_secret
    if key in ("timeout", "arguments_schema"):
        # An empty schema allows any arguments, as no schema does (and is read back as none).
        return (wanted or None) != (have or None)
    defaults: dict[str, Any] = {"description": "", "max_concurrency": 0, "parameters": {}, "labels": {}}
    if key in defaults:
        return bool((wanted if wanted is not None else defaults[key]) != have)
    return bool(wanted != have)


_SCHEDULE_DEFAULTS: dict[str, Any] = {
    "description": "",
    "time_zone": DEFAULT_TIME_ZONE,
    "misfire_policy": MisfirePolicy.RUN_ONCE,
    "overlap_policy": OverlapPolicy.SKIP,
    "catchup_window": DEFAULT_CATCHUP_WINDOW,
    "arguments": {},
}


def _schedule_field_differs(key: str, wanted: Any, current: Schedule) -> bool:
    if key == "start_time" and wanted is None:
        return False  # the server starts an unset start at creation: nothing to compare
    if key == "jitter":
        return (wanted or None) != (current.jitter or None)
    if key in ("exclude_calendars", "only_on_calendars"):
        return list(wanted or []) != list(getattr(current, key))
    have = getattr(current, key)
    if key in _SCHEDULE_DEFAULTS:
        wanted = wanted if wanted not in (None, "") else _SCHEDULE_DEFAULTS[key]
        have = have if have not in (None, "") else _SCHEDULE_DEFAULTS[key]
    return bool(wanted != have)


_CALENDAR_DEFAULTS: dict[str, Any] = {"description": "", "time_zone": DEFAULT_TIME_ZONE}


def _calendar_field_differs(key: str, wanted: Any, current: Calendar) -> bool:
    have = getattr(current, key)
    if key in _CALENDAR_DEFAULTS:
        return bool((wanted or _CALENDAR_DEFAULTS[key]) != (have or _CALENDAR_DEFAULTS[key]))
    if key == "dates":
        # A range of one day is that day alone, as the server reads it back.
        def alone(ranges: list[DateRange]) -> list[DateRange]:
            return [DateRange(d.start, None if d.end == d.start else d.end) for d in ranges]

        return alone(wanted or []) != alone(have)
    return list(wanted or []) != list(have)


# Applying


def _job_create_arguments(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "executor": fields["executor"],
        "parameters": fields.get("parameters") or {},
        "description": fields.get("description") or "",
        "timeout": fields.get("timeout") or None,
        "retry_policy": fields.get("retry_policy"),
        "max_concurrency": fields.get("max_concurrency") or 0,
        "dependents": fields.get("dependents") or [],
        "callback": fields.get("callback"),
        "labels": fields.get("labels") or {},
        "execution_retention": fields.get("execution_retention"),
        "arguments_schema": fields.get("arguments_schema") or None,
    }


def _schedule_create_arguments(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "trigger": fields["trigger"],
        "description": fields.get("description") or "",
        "time_zone": fields.get("time_zone") or "",
        "start_time": fields.get("start_time"),
        "end_time": fields.get("end_time"),
        "jitter": fields.get("jitter"),
        "misfire_policy": fields.get("misfire_policy"),
        "catchup_window": fields.get("catchup_window"),
        "overlap_policy": fields.get("overlap_policy"),
        "arguments": fields.get("arguments") or {},
        "paused": bool(fields.get("paused", False)),
        "exclude_calendars": fields.get("exclude_calendars") or [],
        "only_on_calendars": fields.get("only_on_calendars") or [],
        "deadlines": fields.get("deadlines"),
    }


def _calendar_arguments(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of create_calendar and update_calendar; null and left out alike: empty."""
    return {key: fields.get(key) or ("" if key in _CALENDAR_DEFAULTS else []) for key in fields}


@dataclass
class Step:
    """One change of the plan: `run(validate_only)` makes it (or has the server check it)."""

    change: Change
    run: Callable[[bool], Any]
    item: Item | None = None
    # Schedules of a job this file creates: the server cannot find that job before it is.
    job_created_here: bool = False
    checked: bool = True
    # Calendars (full names) this file creates that the resource names: the server cannot find
    # them before they are, so a refusal naming only those is no problem of the file.
    calendars_created_here: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Problem:
    """What the server (or the comparison) refused, at its place in the file."""

    path: str
    message: str

    def text(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ApplyRefused(Exception):
    """The server refused part of the file when checking it: nothing was changed."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.text() for p in problems))
        self.problems = problems


class ApplyFailed(Exception):
    """A change failed after others were made: `done` were made, `failed` was not."""

    def __init__(self, done: list[Change], failed: Change, problem: Problem, left: list[Change]) -> None:
        super().__init__(problem.text())
        self.done = done
        self.failed = failed
        self.problem = problem
        self.left = left


_FIELD_PREFIX = re.compile(r"^(?:job|schedule|calendar)\.([A-Za-z0-9_.\[\]'\"-]+): ")
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _place(item: Item, field_path: str) -> str:
    """Where a server field (`job.parameters.argv`) is in the file (`jobs[1].parameters.argv`).

    The path is followed in the item's document as far as it goes: a value written in a short
    form there (`trigger: {cron: "..."}` for `trigger.cron.expression`) is named itself.
    """
    for prefix in ("job.", "schedule.", "calendar."):
        if field_path.startswith(prefix):
            field_path = field_path[len(prefix) :]
    value: Any = item.document
    place = item.path
    for match in _PART.finditer(field_path):
        key, index = match.group(1), match.group(2)
        if key is not None and isinstance(value, dict):
            place += f".{key}"
            value = value.get(key)
        elif index is not None and isinstance(value, list):
            place += f"[{index}]"
            value = value[int(index)] if int(index) < len(value) else None
        elif value is None or isinstance(value, dict | list):
            # Not in the document (a default, or a field left out): named as the server does.
            place += f".{key}" if key is not None else f"[{index}]"
            value = None
        else:
            break
    return place


def _problems(error: CronwireError, item: Item | None, change: Change) -> list[Problem]:
    if item is None:
        return [Problem("", f"{change.kind} {change.name}: {error.message}")]
    if error.field_violations:
        return [Problem(_place(item, v.field), v.description) for v in error.field_violations]
    match = _FIELD_PREFIX.match(error.message)
    if match:
        return [Problem(_place(item, match.group(1)), error.message[match.end() :])]
    return [Problem(item.path, error.message)]


_MISSING_CALENDAR = re.compile(r"^calendar '([^']+)' does not exist$")


def _only_missing(error: CronwireError, created_here: frozenset[str]) -> bool:
    """Whether `error` only says that calendars this file creates do not exist yet."""
    if not created_here or not error.field_violations:
        return False
    ids = {name.rsplit("/", 1)[-1] for name in created_here}
    for violation in error.field_violations:
        missing = _MISSING_CALENDAR.match(violation.description)
        if missing is None or missing.group(1) not in ids:
            return False
    return True


class Applier:
    """Applies a checked file through a client, reporting every change as it is made.

    The whole file is planned (each resource read) and every create and update checked by the
    server (AIP-163 validate_only: fields, permissions, references) before anything changes; a
    refusal anywhere raises ApplyRefused with nothing changed. A change that then fails (a
    concurrent write, a namespace limit) raises ApplyFailed naming what was already made.
    """

    def __init__(self, client: Client, *, dry_run: bool, report: Callable[[Change], None]) -> None:
        self._client = client
        self._dry_run = dry_run
        self._report = report
        self.changes: list[Change] = []

    def _record(self, change: Change) -> None:
        self.changes.append(change)
        self._report(change)

    def apply(self, plan: ApplyFile, *, prune: bool) -> list[Change]:
        steps, problems = self.plan(plan, prune=prune)
        problems += self._check(steps)
        if problems:
            raise ApplyRefused(problems)
        for index, step in enumerate(steps):
            if not self._dry_run and step.change.action != "unchanged":
                try:
                    step.run(False)
                except CronwireError as error:
                    (problem,) = _problems(error, step.item, step.change)[:1]
                    left = [s.change for s in steps[index + 1 :] if s.change.action != "unchanged"]
                    done = [c for c in self.changes if c.action != "unchanged"]
                    raise ApplyFailed(done, step.change, problem, left) from error
            self._record(step.change)
        return self.changes

    def _check(self, steps: list[Step]) -> list[Problem]:
        """Every create and update of the plan checked by the server, nothing stored."""
        problems: list[Problem] = []
        for step in steps:
            if step.change.action not in ("create", "update") or not step.checked:
                continue
            try:
                step.run(True)
            except InvalidArgument as error:
                if not _only_missing(error, step.calendars_created_here):
                    problems += _problems(error, step.item, step.change)
            except NotFound as error:
                if step.job_created_here:
                    continue  # the schedule's fields passed; its job is created by this file first
                if step.item is not None and step.change == Change("schedule", step.item.name, "create"):
                    problems.append(Problem(_place(step.item, "job"), error.message))
                else:
                    problems += _problems(error, step.item, step.change)
            except CronwireError as error:
                problems += _problems(error, step.item, step.change)
        return problems

    def plan(self, plan: ApplyFile, *, prune: bool) -> tuple[list[Step], list[Problem]]:
        """The steps that make the namespace match the file, and what cannot be planned."""
        steps: list[Step] = []
        problems: list[Problem] = []
        # Calendars first: the schedules (and calendars) that name them find them made.
        for item in _calendar_order(plan.calendars):
            steps.append(self._plan_calendar(item, plan.namespace))
        for item in plan.jobs:
            steps += self._plan_job(item, plan.namespace)
        created = {s.change.name for s in steps if s.change.action == "create"}
        for step in steps:
            if step.item is not None and step.change.kind == "calendar":
                step.calendars_created_here = frozenset(_named_calendars(step.item)) & created
        for item in plan.schedules:
            try:
                scheduled = self._plan_schedule(item, plan.namespace, item.job in created)
            except DocumentError as error:
                problems.append(Problem(error.path, error.problem))
                continue
            for step in scheduled:
                step.calendars_created_here = frozenset(_named_calendars(item)) & created
            steps += scheduled
        if prune:
            steps += self._plan_prune(plan)
        return steps, problems

    def _plan_calendar(self, item: Item, namespace: str) -> Step:
        client = self._client
        try:
            current = client.get_calendar(item.name)
        except NotFound:
            arguments = _calendar_arguments(item.fields)
            calendar_id = split_name(item.name)[1]

            def create(validate_only: bool) -> Any:
                return client.create_calendar(
                    calendar_id, namespace=namespace, validate_only=validate_only, **arguments
                )

            return Step(Change("calendar", item.name, "create"), create, item)
        changed = [k for k, v in item.fields.items() if _calendar_field_differs(k, v, current)]
        if not changed:
            return Step(Change("calendar", item.name, "unchanged"), lambda _: None, item)
        updates = _calendar_arguments({k: item.fields[k] for k in changed})

        def update(validate_only: bool) -> Any:
            return client.update_calendar(current, etag=current.etag, validate_only=validate_only, **updates)

        return Step(Change("calendar", item.name, "update", tuple(changed)), update, item)

    def _plan_job(self, item: Item, namespace: str) -> list[Step]:
        client = self._client
        try:
            current = client.get_job(item.name)
        except NotFound:
            arguments = _job_create_arguments(item.fields)
            job_id = split_name(item.name)[1]

            def create(validate_only: bool) -> Any:
                return client.create_job(
                    job_id, namespace=namespace, validate_only=validate_only, **arguments
                )

            return [Step(Change("job", item.name, "create"), create, item)]
        changed = [k for k, v in item.fields.items() if _job_field_differs(k, v, current, item, namespace)]
        if not changed:
            return [Step(Change("job", item.name, "unchanged"), lambda _: None, item)]
        updates = {key: self._job_update_value(key, item.fields[key]) for key in changed}

        def update(validate_only: bool) -> Any:
            return client.update_job(current, etag=current.etag, validate_only=validate_only, **updates)

        return [Step(Change("job", item.name, "update", tuple(changed)), update, item)]

    @staticmethod
    def _job_update_value(key: str, value: Any) -> Any:
        if value is None and key in ("parameters", "labels"):
            return {}
        if value is None and key == "dependents":
            return []
        if value is None and key in ("description", "executor"):
            return ""
        if value is None and key == "max_concurrency":
            return 0
        return value

    def _plan_schedule(self, item: Item, namespace: str, job_created_here: bool) -> list[Step]:
        client = self._client
        fields = dict(item.fields)
        paused = fields.pop("paused", None)
        try:
            current = client.get_schedule(item.name)
        except NotFound:
            arguments = _schedule_create_arguments({**fields, "paused": bool(paused)})
            schedule_id = split_name(item.name)[1]

            def create(validate_only: bool) -> Any:
                return client.create_schedule(
                    schedule_id, job=item.job, namespace=namespace, validate_only=validate_only, **arguments
                )

            change = Change("schedule", item.name, "create")
            return [Step(change, create, item, job_created_here=job_created_here)]
        if current.job != item.job:
            raise DocumentError(
                f"{item.path}.job",
                f"schedule {item.name} runs {current.job}; a schedule's job cannot change "
                "(delete the schedule or give it another name)",
            )
        steps = []
        changed = [k for k, v in fields.items() if _schedule_field_differs(k, v, current)]
        if changed:
            # null clears a list of calendars.
            updates = {
                k: [] if fields[k] is None and k.endswith("_calendars") else fields[k] for k in changed
            }

            def update(validate_only: bool) -> Any:
                return client.update_schedule(
                    current, etag=current.etag, validate_only=validate_only, **updates
                )

            steps.append(Step(Change("schedule", item.name, "update", tuple(changed)), update, item))
        if paused is not None and paused != current.paused:

            def pause(validate_only: bool) -> Any:
                if paused:
                    return client.pause_schedule(item.name, reason="cronwire apply")
                return client.resume_schedule(item.name)

            action = "pause" if paused else "resume"
            steps.append(Step(Change("schedule", item.name, action), pause, item, checked=False))
        elif not changed:
            steps.append(Step(Change("schedule", item.name, "unchanged"), lambda _: None, item))
        return steps

    def _plan_prune(self, plan: ApplyFile) -> list[Step]:
        client = self._client
        steps = []
        wanted_schedules = {item.name for item in plan.schedules}
        wanted_jobs = {item.name for item in plan.jobs}

        def deleting(resource: Job | Schedule | Calendar) -> Callable[[bool], None]:
            def run(validate_only: bool) -> None:
                with contextlib.suppress(NotFound):  # gone meanwhile: the goal is reached
                    if isinstance(resource, Schedule):
                        client.delete_schedule(resource, etag=resource.etag)
                    elif isinstance(resource, Calendar):
                        client.delete_calendar(resource, etag=resource.etag)
                    else:
                        client.delete_job(resource, etag=resource.etag)

            return run

        for schedule in list(client.iter_schedules(namespace=plan.namespace)):
            if schedule.name not in wanted_schedules:
                change = Change("schedule", schedule.name, "delete")
                steps.append(Step(change, deleting(schedule), checked=False))
        for job in list(client.iter_jobs(namespace=plan.namespace)):
            if job.name not in wanted_jobs:
                steps.append(Step(Change("job", job.name, "delete"), deleting(job), checked=False))
        # Calendars last (the schedules that named them are gone or changed by then), each before
        # the calendars it names.
        wanted_calendars = {item.name for item in plan.calendars}
        doomed = [
            c for c in client.iter_calendars(namespace=plan.namespace) if c.name not in wanted_calendars
        ]
        items = [
            Item(
                c.name,
                {"include_calendars": c.include_calendars, "exclude_calendars": c.exclude_calendars},
                {},
                "",
            )
            for c in doomed
        ]
        by_name = {c.name: c for c in doomed}
        for item in reversed(_calendar_order(items)):
            calendar = by_name[item.name]
            steps.append(Step(Change("calendar", calendar.name, "delete"), deleting(calendar), checked=False))
        return steps


def summary(changes: list[Change], namespace: str, dry_run: bool) -> str:
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    order = ["create", "update", "pause", "resume", "delete", "unchanged"]
    parts = [f"{counts[a]} {PAST[a]}" for a in order if a in counts] or ["nothing to do"]
    if dry_run:
        return (
            f"dry run, nothing changed in namespace {namespace}: {', '.join(parts)} (checked by the server)"
        )
    return f"applied in namespace {namespace}: {', '.join(parts)}"
