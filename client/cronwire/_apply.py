"""`cronwire apply`: make a namespace's jobs and schedules match a file.

The file (YAML or JSON) is a mapping:

    namespace: default            # optional; else the CLI's --namespace
    jobs:
      - name: backup              # an id, or a full name in that namespace
        executor: shell
        parameters: {argv: [pg_dump, app]}
        timeout: 10m
        retry_policy: {max_attempts: 3, initial_backoff: 30s}
        schedules:                # optional: schedules of this job
          - name: nightly
            trigger: {cron: "0 3 * * *"}
            time_zone: Europe/Berlin
    schedules:                    # schedules may also be listed on their own, with `job`
      - name: hourly
        job: backup
        trigger: {every: 1h}

Missing resources are created; existing ones get the fields the file names updated (with
the etag just read, so a concurrent change fails instead of being overwritten); `null`
clears a field. With `prune`, jobs and schedules of the namespace the file does not name are
deleted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cronwire._convert import resource_name, split_name
from cronwire._documents import (
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
from cronwire._errors import NotFound
from cronwire._output import YAML_MISSING, OutputError, yaml_module
from cronwire._types import (
    CompletionCallback,
    DependencyCondition,
    Job,
    JobDependent,
    MisfirePolicy,
    OverlapPolicy,
    Schedule,
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
    unknown = set(body) - {"namespace", "jobs", "schedules"}
    if unknown:
        raise DocumentError(sorted(unknown)[0], "unknown top-level key; known: namespace, jobs, schedules")
    namespace = read_str(body["namespace"], "namespace") if body.get("namespace") else default_namespace
    result = ApplyFile(namespace)
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
        result.schedules.append(Item(name, fields, document_copy, path, job=job_name))
    for kind, items in (("job", result.jobs), ("schedule", result.schedules)):
        seen: dict[str, str] = {}
        for item in items:
            if item.name in seen:
                raise DocumentError(item.path, f"{kind} {item.name} is also given at {seen[item.name]}")
            seen[item.name] = item.path
    return result


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
    if key == "timeout":
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
    have = getattr(current, key)
    if key in _SCHEDULE_DEFAULTS:
        wanted = wanted if wanted not in (None, "") else _SCHEDULE_DEFAULTS[key]
        have = have if have not in (None, "") else _SCHEDULE_DEFAULTS[key]
    return bool(wanted != have)


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
    }


class Applier:
    """Applies a checked file through a client, reporting every change as it is made."""

    def __init__(self, client: Client, *, dry_run: bool, report: Callable[[Change], None]) -> None:
        self._client = client
        self._dry_run = dry_run
        self._report = report
        self.changes: list[Change] = []

    def _record(self, change: Change) -> None:
        self.changes.append(change)
        self._report(change)

    def apply(self, plan: ApplyFile, *, prune: bool) -> list[Change]:
        for item in plan.jobs:
            self._apply_job(item, plan.namespace)
        for item in plan.schedules:
            self._apply_schedule(item, plan.namespace)
        if prune:
            self._prune(plan)
        return self.changes

    def _apply_job(self, item: Item, namespace: str) -> None:
        client = self._client
        try:
            current = client.get_job(item.name)
        except NotFound:
            if not self._dry_run:
                arguments = _job_create_arguments(item.fields)
                client.create_job(split_name(item.name)[1], namespace=namespace, **arguments)
            self._record(Change("job", item.name, "create"))
            return
        changed = [k for k, v in item.fields.items() if _job_field_differs(k, v, current, item, namespace)]
        if not changed:
            self._record(Change("job", item.name, "unchanged"))
            return
        if not self._dry_run:
            updates = {key: self._job_update_value(key, item.fields[key]) for key in changed}
            client.update_job(current, etag=current.etag, **updates)
        self._record(Change("job", item.name, "update", tuple(changed)))

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

    def _apply_schedule(self, item: Item, namespace: str) -> None:
        client = self._client
        fields = dict(item.fields)
        paused = fields.pop("paused", None)
        try:
            current = client.get_schedule(item.name)
        except NotFound:
            if not self._dry_run:
                client.create_schedule(
                    split_name(item.name)[1],
                    job=item.job,
                    namespace=namespace,
                    **_schedule_create_arguments({**fields, "paused": bool(paused)}),
                )
            self._record(Change("schedule", item.name, "create"))
            return
        if current.job != item.job:
            raise DocumentError(
                f"{item.path}.job",
                f"schedule {item.name} runs {current.job}; a schedule's job cannot change "
                "(delete the schedule or give it another name)",
            )
        changed = [k for k, v in fields.items() if _schedule_field_differs(k, v, current)]
        if changed:
            if not self._dry_run:
                updates = {k: fields[k] for k in changed}
                current = client.update_schedule(current, etag=current.etag, **updates)
            self._record(Change("schedule", item.name, "update", tuple(changed)))
        if paused is not None and paused != current.paused:
            if not self._dry_run:
                if paused:
                    client.pause_schedule(item.name, reason="cronwire apply")
                else:
                    client.resume_schedule(item.name)
            self._record(Change("schedule", item.name, "pause" if paused else "resume"))
        elif not changed:
            self._record(Change("schedule", item.name, "unchanged"))

    def _prune(self, plan: ApplyFile) -> None:
        client = self._client
        wanted_schedules = {item.name for item in plan.schedules}
        wanted_jobs = {item.name for item in plan.jobs}
        for schedule in list(client.iter_schedules(namespace=plan.namespace)):
            if schedule.name not in wanted_schedules:
                if not self._dry_run:
                    with contextlib.suppress(NotFound):  # gone meanwhile: the goal is reached
                        client.delete_schedule(schedule, etag=schedule.etag)
                self._record(Change("schedule", schedule.name, "delete"))
        for job in list(client.iter_jobs(namespace=plan.namespace)):
            if job.name not in wanted_jobs:
                if not self._dry_run:
                    with contextlib.suppress(NotFound):
                        client.delete_job(job, etag=job.etag)
                self._record(Change("job", job.name, "delete"))


def summary(changes: list[Change], namespace: str, dry_run: bool) -> str:
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    order = ["create", "update", "pause", "resume", "delete", "unchanged"]
    parts = [f"{counts[a]} {PAST[a]}" for a in order if a in counts] or ["nothing to do"]
    prefix = "dry run, nothing changed" if dry_run else "applied"
    return f"{prefix} in namespace {namespace}: {', '.join(parts)}"
