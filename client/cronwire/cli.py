"""The `cronwire` command line: every command is one or two calls of the SDK's Client.

Exit codes: 0 success; 1 an error (one line on stderr, naming the bad field when there is
one); 2 bad usage; for `jobs run --wait` (and `executions get --wait`): 3 the execution
FAILED or was LOST, 4 it TIMED_OUT, 5 it was CANCELLED or SKIPPED, 124 `--wait-timeout`
passed before it ended; 130 interrupted.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO, Any, TypeVar

from cronwire._apply import Applier, Change, parse_text, read_file, summary
from cronwire._channel import DEFAULT_NAMESPACE, DEFAULT_TARGET, TLSConfig
from cronwire._completion import completion_script
from cronwire._documents import DocumentError, to_document
from cronwire._errors import CronwireError, DeadlineExceeded, InvalidArgument, Unavailable, Unimplemented
from cronwire._output import FORMATS, OutputError, dump, json_line
from cronwire._types import (
    AllOfTrigger,
    AnyOfTrigger,
    CronTrigger,
    DateTrigger,
    DependencyCondition,
    EventType,
    Execution,
    ExecutionState,
    IntervalTrigger,
    JobDependent,
    MisfirePolicy,
    OverlapPolicy,
    RetryPolicy,
    Trigger,
)
from cronwire._values import (
    DURATION_HELP,
    TIME_HELP,
    enum_text,
    parse_duration,
    parse_enum,
    parse_time,
)
from cronwire._version import __version__
from cronwire._views import (
    event_line,
    events_table,
    execution_details,
    executions_table,
    job_details,
    job_types_table,
    jobs_table,
    preview_table,
    schedule_details,
    schedules_table,
)
from cronwire.client import Client

E = TypeVar("E", bound=ExecutionState | MisfirePolicy | OverlapPolicy | EventType)
T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_TIMED_OUT = 4
EXIT_CANCELLED = 5
EXIT_WAIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

STATE_EXIT = {
    ExecutionState.SUCCEEDED: EXIT_OK,
    ExecutionState.FAILED: EXIT_FAILED,
    ExecutionState.LOST: EXIT_FAILED,
    ExecutionState.TIMED_OUT: EXIT_TIMED_OUT,
    ExecutionState.CANCELLED: EXIT_CANCELLED,
    ExecutionState.SKIPPED: EXIT_CANCELLED,
}

EXIT_CODES_HELP = """exit codes:
  0    success
  1    error (one line on stderr)
  2    bad usage
  3    jobs run --wait: the execution FAILED or was LOST
  4    jobs run --wait: the execution TIMED_OUT
  5    jobs run --wait: the execution was CANCELLED or SKIPPED
  124  jobs run --wait: --wait-timeout passed first
"""

# Request fields and the flags that set them, so an error can name the flag as well.
FLAG_OF_FIELD = {
    "job_id": "NAME",
    "schedule_id": "NAME",
    "name": "NAME",
    "job.executor": "--executor",
    "job.parameters": "--param",
    "job.timeout": "--timeout",
    "job.retry_policy": "--retries",
    "job.max_concurrency": "--max-concurrency",
    "job.labels": "--label",
    "job.dependents": "--on-success/--on-failure/--on-completion",
    "schedule.job": "--job",
    "schedule.trigger.cron": "--cron",
    "schedule.trigger.interval": "--every",
    "schedule.trigger.date": "--at",
    "schedule.trigger": "--cron/--every/--at",
    "schedule.time_zone": "--tz",
    "schedule.start_time": "--start",
    "schedule.end_time": "--end",
    "schedule.jitter": "--jitter",
    "schedule.catchup_window": "--catchup-window",
    "schedule.arguments": "--arg",
    "arguments": "--arg",
    "count": "--count",
    "page_size": "--limit",
}


class UsageError(Exception):
    """A command line that is well-formed for argparse but says something impossible."""


# Argument types: argparse reports their ValueError text as "argument --flag: ...".


def _typed(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = name
    return convert


duration_arg = _typed(parse_duration, "duration")
time_arg = _typed(parse_time, "time")


def _key_json(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # not JSON: the text itself
    return key, value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, value


key_json_arg = _typed(_key_json, "KEY=JSON")
key_value_arg = _typed(_key_value, "KEY=VALUE")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


json_object_arg = _typed(_json_object, "JSON object")


def enum_arg(cls: type[E]) -> Callable[[str], E]:
    converter: Callable[[str], E] = _typed(lambda text: parse_enum(cls, text), cls.__name__)
    return converter


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


count_arg = _typed(_non_negative, "number")


# Context: the parsed arguments, the client (made on first use) and the output streams.


@dataclass
class Context:
    args: argparse.Namespace
    out: IO[str]
    err: IO[str]
    _client: Client | None = field(default=None, init=False)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = make_client(self.args)
        return self._client

    @property
    def namespace(self) -> str:
        return str(self.args.namespace)

    @property
    def fmt(self) -> str:
        return str(self.args.output)

    def print(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def note(self, text: str) -> None:
        self.err.write(text.rstrip("\n") + "\n")
        self.err.flush()

    def show(self, value: Any, human: Callable[[], str]) -> None:
        """A resource or a list: the human view, or the document as JSON/YAML."""
        if self.fmt == "table":
            self.print(human())
        else:
            self.print(dump(to_document(value), self.fmt))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise UsageError(f"cannot read {what} {path}: {error.strerror}") from None


def make_client(args: argparse.Namespace) -> Client:
    tls: bool | TLSConfig = False
    if args.tls or args.ca or args.cert or args.key:
        if bool(args.cert) != bool(args.key):
            raise UsageError("--cert and --key go together (mutual TLS)")
        tls = TLSConfig(
            root_certificates=_read_file(args.ca, "CA file") if args.ca else None,
            client_certificate=_read_file(args.cert, "certificate") if args.cert else None,
            client_private_key=_read_file(args.key, "key") if args.key else None,
            server_name=args.tls_server_name or None,
        )
    return Client(
        args.server,
        namespace=args.namespace,
        tls=tls,
        token=args.token or None,
        timeout=args.deadline if args.deadline > 0 else None,
    )


# Shared builders


def _merge_pairs(pairs: Iterable[tuple[str, Any]] | None) -> dict[str, Any]:
    return dict(pairs or [])


def _dependents(args: argparse.Namespace) -> list[JobDependent]:
    dependents: list[JobDependent] = []
    for attribute, condition in (
        ("on_success", DependencyCondition.ON_SUCCESS),
        ("on_failure", DependencyCondition.ON_FAILURE),
        ("on_completion", DependencyCondition.ON_COMPLETION),
    ):
        names: list[str] = getattr(args, attribute) or []
        dependents.extend(JobDependent(job, condition) for job in names)
    return dependents


def _executor(args: argparse.Namespace, required: bool) -> tuple[str, dict[str, Any]] | None:
    """The executor and base parameters the flags name, or None when they name none."""
    command = list(args.program or [])
    if args.shell_command is not None:
        if command or args.shell:
            raise UsageError("--shell-command takes a command line; give no program after --")
        executor, parameters = "shell", {"shell": True, "command": args.shell_command}
    elif command or args.shell:
        if not command:
            raise UsageError("--shell needs the program to run after --, e.g. --shell -- pg_dump app")
        executor, parameters = "shell", {"argv": command}
    elif args.executor:
        executor, parameters = args.executor, {}
    elif required:
        raise UsageError(
            "say what the job runs: --shell -- PROGRAM [ARGS...], --shell-command 'CMD', or --executor KIND"
        )
    else:
        return None
    if args.executor and args.executor != executor:
        raise UsageError(f"--executor {args.executor} does not go with a shell command")
    if args.params is not None:
        parameters.update(args.params)
    return executor, parameters


def _retry_policy(args: argparse.Namespace) -> RetryPolicy | None:
    if args.retry_backoff is not None and args.retries is None:
        raise UsageError("--retry-backoff goes with --retries")
    if not args.retries:
        return None
    return RetryPolicy(max_attempts=args.retries + 1, initial_backoff=args.retry_backoff)


def _triggers(args: argparse.Namespace) -> Trigger | None:
    triggers: list[Trigger] = [CronTrigger(e) for e in args.cron or []]
    triggers += [IntervalTrigger(every) for every in args.every or []]
    triggers += [DateTrigger(at) for at in args.at or []]
    if not triggers:
        return None
    if len(triggers) == 1:
        return triggers[0]
    return AllOfTrigger(triggers) if args.all else AnyOfTrigger(triggers)


# Commands: jobs


def cmd_jobs_create(ctx: Context) -> int:
    args = ctx.args
    executor = _executor(args, required=True)
    assert executor is not None
    kind, parameters = executor
    parameters.update(_merge_pairs(args.param))
    job = ctx.client.create_job(
        args.name,
        executor=kind,
        parameters=parameters,
        description=args.description or "",
        timeout=args.timeout or None,
        retry_policy=_retry_policy(args),
        max_concurrency=args.max_concurrency or 0,
        dependents=_dependents(args),
        labels=_merge_pairs(args.label),
        request_id=args.request_id or "",
    )
    ctx.show(job, lambda: job_details(job))
    return EXIT_OK


def cmd_jobs_update(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client
    fields: dict[str, Any] = {}
    etag = args.etag or ""
    executor = _executor(args, required=False)
    if executor is not None:
        fields["executor"], fields["parameters"] = executor
    if args.param or args.label:
        # Merged into the stored values: read them first, and update only that version.
        current = client.get_job(args.name)
        etag = etag or current.etag
        if args.param:
            base = fields.get("parameters", current.parameters)
            fields["parameters"] = {**base, **_merge_pairs(args.param)}
        if args.label:
            labels = {**current.labels, **_merge_pairs(args.label)}
            fields["labels"] = {k: v for k, v in labels.items() if v != ""}
    if args.description is not None:
        fields["description"] = args.description
    if args.timeout is not None:
        fields["timeout"] = args.timeout or None
    if args.retries is not None or args.retry_backoff is not None:
        fields["retry_policy"] = _retry_policy(args)
    if args.max_concurrency is not None:
        fields["max_concurrency"] = args.max_concurrency
    if args.on_success or args.on_failure or args.on_completion or args.no_dependents:
        fields["dependents"] = _dependents(args)
    if not fields:
        raise UsageError("nothing to update: give at least one flag to change")
    job = client.update_job(args.name, etag=etag, **fields)
    ctx.show(job, lambda: job_details(job))
    return EXIT_OK


def cmd_jobs_get(ctx: Context) -> int:
    job = ctx.client.get_job(ctx.args.name)
    ctx.show(job, lambda: job_details(job))
    return EXIT_OK


def _limited(items: Iterable[T], limit: int) -> list[T]:
    result: list[T] = []
    for item in items:
        if limit and len(result) >= limit:
            break
        result.append(item)
    return result


def cmd_jobs_list(ctx: Context) -> int:
    args = ctx.args
    page = min(args.limit, 1000) if args.limit else 0
    jobs = _limited(ctx.client.iter_jobs(executor=args.executor or "", page_size=page), args.limit)
    ctx.show(jobs, lambda: jobs_table(jobs, ctx.namespace))
    return EXIT_OK


def cmd_jobs_delete(ctx: Context) -> int:
    ctx.client.delete_job(ctx.args.name, etag=ctx.args.etag or "")
    if ctx.fmt == "table":
        ctx.print(f"job {ctx.args.name} deleted\n")
    else:
        ctx.print(dump({"deleted": ctx.client._requests.job_name(ctx.args.name)}, ctx.fmt))
    return EXIT_OK


def _finished(ctx: Context, execution: Execution) -> int:
    """Print a finished execution; its exit code (see the module's doc)."""
    if ctx.fmt != "table":
        ctx.print(dump(to_document(execution), ctx.fmt))
    else:
        if execution.output:
            ctx.print(execution.output if execution.output.endswith("\n") else execution.output + "\n")
        state = execution.state.name if execution.state is not None else "UNKNOWN"
        parts = [f"execution {execution.name} {state}"]
        if execution.duration is not None:
            parts.append(f"in {execution.duration.total_seconds():.2f}s")
        if execution.exit_code is not None:
            parts.append(f"(exit code {execution.exit_code})")
        if execution.attempt > 1:
            parts.append(f"after {execution.attempt} attempts")
        if execution.error and execution.error != f"exit code {execution.exit_code}":
            parts.append(f"- {execution.error}")
        ctx.note(" ".join(parts))
    if execution.state is None:
        return EXIT_ERROR
    return STATE_EXIT.get(execution.state, EXIT_ERROR)


def _wait(ctx: Context, execution: Execution) -> int:
    args = ctx.args
    try:
        ended = ctx.client.wait_for_execution(
            execution, poll_interval=args.poll_interval, wait_timeout=args.wait_timeout
        )
    except DeadlineExceeded as error:
        if error.reason != "WAIT_TIMEOUT":
            raise
        ctx.note(f"cronwire: {error.message}")
        return EXIT_WAIT_TIMEOUT
    return _finished(ctx, ended)


def cmd_jobs_run(ctx: Context) -> int:
    args = ctx.args
    execution = ctx.client.run_job(
        args.name, arguments=_merge_pairs(args.arg), request_id=args.request_id or ""
    )
    if args.wait:
        return _wait(ctx, execution)
    if ctx.fmt == "table":
        state = execution.state.name if execution.state else "QUEUED"
        ctx.print(f"{execution.name} {state}\n")
    else:
        ctx.print(dump(to_document(execution), ctx.fmt))
    return EXIT_OK


def cmd_jobs_types(ctx: Context) -> int:
    types = ctx.client.list_job_types()
    ctx.show(types, lambda: job_types_table(types))
    return EXIT_OK


# Commands: schedules


def cmd_schedules_create(ctx: Context) -> int:
    args = ctx.args
    trigger = _triggers(args)
    if trigger is None:
        raise UsageError("say when it fires: --cron EXPR, --every DURATION or --at TIME")
    schedule = ctx.client.create_schedule(
        args.name,
        job=args.job,
        trigger=trigger,
        time_zone=args.tz or "",
        description=args.description or "",
        start_time=args.start,
        end_time=args.end,
        jitter=args.jitter,
        misfire_policy=args.misfire,
        catchup_window=args.catchup_window,
        overlap_policy=args.overlap,
        paused=args.paused,
        arguments=_merge_pairs(args.arg),
        request_id=args.request_id or "",
    )
    ctx.show(schedule, lambda: schedule_details(schedule))
    return EXIT_OK


def cmd_schedules_update(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client
    etag = args.etag or ""
    fields: dict[str, Any] = {}
    trigger = _triggers(args)
    if trigger is not None:
        fields["trigger"] = trigger
    if args.arg:
        current = client.get_schedule(args.name)
        etag = etag or current.etag
        fields["arguments"] = {**current.arguments, **_merge_pairs(args.arg)}
    for attribute, key in (
        ("tz", "time_zone"),
        ("description", "description"),
        ("start", "start_time"),
        ("end", "end_time"),
        ("jitter", "jitter"),
        ("misfire", "misfire_policy"),
        ("catchup_window", "catchup_window"),
        ("overlap", "overlap_policy"),
    ):
        value = getattr(args, attribute)
        if value is not None:
            fields[key] = value
    for attribute, key in (("no_start", "start_time"), ("no_end", "end_time")):
        if getattr(args, attribute):
            fields[key] = None
    if not fields:
        raise UsageError("nothing to update: give at least one flag to change")
    schedule = client.update_schedule(args.name, etag=etag, **fields)
    ctx.show(schedule, lambda: schedule_details(schedule))
    return EXIT_OK


def cmd_schedules_get(ctx: Context) -> int:
    schedule = ctx.client.get_schedule(ctx.args.name)
    ctx.show(schedule, lambda: schedule_details(schedule))
    return EXIT_OK


def cmd_schedules_list(ctx: Context) -> int:
    args = ctx.args
    page = min(args.limit, 1000) if args.limit else 0
    schedules = _limited(ctx.client.iter_schedules(job=args.job, page_size=page), args.limit)
    ctx.show(schedules, lambda: schedules_table(schedules, ctx.namespace))
    return EXIT_OK


def cmd_schedules_delete(ctx: Context) -> int:
    ctx.client.delete_schedule(ctx.args.name, etag=ctx.args.etag or "")
    if ctx.fmt == "table":
        ctx.print(f"schedule {ctx.args.name} deleted\n")
    else:
        ctx.print(dump({"deleted": ctx.client._requests.schedule_name(ctx.args.name)}, ctx.fmt))
    return EXIT_OK


def cmd_schedules_pause(ctx: Context) -> int:
    schedule = ctx.client.pause_schedule(ctx.args.name, reason=ctx.args.reason or "")
    ctx.show(schedule, lambda: schedule_details(schedule))
    return EXIT_OK


def cmd_schedules_resume(ctx: Context) -> int:
    schedule = ctx.client.resume_schedule(ctx.args.name)
    ctx.show(schedule, lambda: schedule_details(schedule))
    return EXIT_OK


def cmd_schedules_preview(ctx: Context) -> int:
    args = ctx.args
    trigger = _triggers(args)
    if (args.name is None) == (trigger is None):
        raise UsageError("preview a stored schedule (NAME) or a trigger (--cron/--every/--at), one of them")
    preview = ctx.client.preview_schedule(
        args.name,
        trigger=trigger,
        time_zone=args.tz or "",
        start_time=args.start,
        end_time=args.end,
        count=args.count,
        after_time=args.after,
    )
    ctx.show(preview, lambda: preview_table(preview))
    return EXIT_OK


def cmd_schedules_backfill(ctx: Context) -> int:
    args = ctx.args
    result = ctx.client.backfill_schedule(
        args.name,
        start_time=args.start,
        end_time=args.end,
        overlap_policy=args.overlap,
        max_concurrency=args.max_concurrency or 0,
        dry_run=args.dry_run,
        request_id=args.request_id or "",
    )

    def human() -> str:
        lines = [f"{t.fire_time.isoformat()}  {t.local_time.isoformat()}\n" for t in result.fire_times]
        verb = "would run" if args.dry_run else "queued"
        lines.append(
            f"{len(result.fire_times)} ticks; {verb} {len(result.executions) or len(result.fire_times)}\n"
        )
        return "".join(lines)

    ctx.show(result, human)
    return EXIT_OK


# Commands: executions


def cmd_executions_get(ctx: Context) -> int:
    args = ctx.args
    execution = ctx.client.get_execution(args.name)
    if args.wait:
        return _wait(ctx, execution)
    ctx.show(execution, lambda: execution_details(execution))
    return EXIT_OK


def cmd_executions_list(ctx: Context) -> int:
    args = ctx.args
    page = min(args.limit, 1000) if args.limit else 0
    found = ctx.client.iter_executions(
        job=args.job,
        schedule=args.schedule,
        states=args.state or (),
        start_time=args.since,
        end_time=args.until,
        page_size=page,
    )
    executions = _limited(found, args.limit)
    ctx.show(executions, lambda: executions_table(executions, ctx.namespace))
    return EXIT_OK


def cmd_executions_cancel(ctx: Context) -> int:
    execution = ctx.client.cancel_execution(ctx.args.name, reason=ctx.args.reason or "")
    ctx.show(execution, lambda: execution_details(execution))
    return EXIT_OK


def cmd_executions_logs(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client
    final: ExecutionState | None = None
    try:
        for chunk in client.logs(args.name, follow=args.follow):
            ctx.print(chunk.data)
            final = chunk.final_state or final
    except Unimplemented:
        # A server without log streaming: print the captured output (at the end, with -f).
        if args.follow:
            ctx.note("cronwire: this server cannot stream logs; printing the output when the run ends")
            execution = client.wait_for_execution(args.name, follow_retries=False)
        else:
            execution = client.get_execution(args.name)
        ctx.print(execution.output)
        final = execution.state if execution.ended else None
    if args.follow and final is not None:
        return STATE_EXIT.get(final, EXIT_ERROR)
    return EXIT_OK


# Commands: events


def _event_filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "after_sequence": args.after or 0,
        "job": args.job,
        "schedule": args.schedule,
        "event_types": tuple(args.type or ()),
        "namespace": "-" if args.all_namespaces else None,
    }


def cmd_events_watch(ctx: Context) -> int:
    for event in ctx.client.watch(**_event_filters(ctx.args)):
        if ctx.fmt == "table":
            ctx.print(event_line(event))
        else:
            ctx.print(json_line(to_document(event)))  # a stream: one JSON document per line
    return EXIT_OK


def cmd_events_list(ctx: Context) -> int:
    args = ctx.args
    page = min(args.limit, 1000) if args.limit else 0
    events = _limited(ctx.client.iter_events(page_size=page, **_event_filters(args)), args.limit)
    ctx.show(events, lambda: events_table(events))
    return EXIT_OK


# Commands: apply, completion


def cmd_apply(ctx: Context) -> int:
    args = ctx.args
    if args.filename == "-":
        text, source = sys.stdin.read(), "<stdin>"
    else:
        text, source = _read_file(args.filename, "file").decode("utf-8"), args.filename
    plan = read_file(parse_text(text, source), ctx.namespace)

    def report(change: Change) -> None:
        if ctx.fmt == "table":
            ctx.print(change.text(args.dry_run) + "\n")

    applier = Applier(ctx.client, dry_run=args.dry_run, report=report)
    try:
        changes = applier.apply(plan, prune=args.prune)
    finally:
        if ctx.fmt != "table":
            done = [to_document(c) | {"dry_run": args.dry_run} for c in applier.changes]
            ctx.print(dump(done, ctx.fmt))
    if ctx.fmt == "table":
        ctx.print(summary(changes, plan.namespace, args.dry_run) + "\n")
    return EXIT_OK


def cmd_completion(ctx: Context) -> int:
    ctx.print(completion_script(build_parser(), ctx.args.shell))
    return EXIT_OK


# The parser


def _add_globals(parser: argparse.ArgumentParser, env: Mapping[str, str], suppress: bool) -> None:
    """The connection and output flags; on subcommands they default to "not given"."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=default(env.get("CRONWIRE_SERVER") or DEFAULT_TARGET),
        help=f"the server (CRONWIRE_SERVER, default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--token",
        default=default(env.get("CRONWIRE_TOKEN", "")),
        help="API token, sent as a bearer token (CRONWIRE_TOKEN)",
    )
    group.add_argument("--tls", action="store_true", default=default(False), help="connect with TLS")
    group.add_argument(
        "--ca", metavar="FILE", default=default(""), help="CA certificates (PEM) to trust; implies --tls"
    )
    group.add_argument(
        "--cert", metavar="FILE", default=default(""), help="client certificate (PEM) for mutual TLS"
    )
    group.add_argument(
        "--key", metavar="FILE", default=default(""), help="client private key (PEM) for mutual TLS"
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=default(""),
        help="the name the server's certificate must carry",
    )
    group.add_argument(
        "-n",
        "--namespace",
        default=default(env.get("CRONWIRE_NAMESPACE") or DEFAULT_NAMESPACE),
        help=f"namespace of short names (CRONWIRE_NAMESPACE, default {DEFAULT_NAMESPACE})",
    )
    group.add_argument(
        "-o", "--output", choices=FORMATS, default=default("table"), help="output format (default table)"
    )
    group.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        default=default(30.0),
        help="deadline of each call; 0 for none (default 30)",
    )


class _Builder:
    def __init__(self, common: argparse.ArgumentParser) -> None:
        self.common = common

    def leaf(
        self,
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Callable[[Context], int],
        help_text: str,
        **kwargs: Any,
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(
            name,
            parents=[self.common],
            help=help_text,
            description=kwargs.pop("description", help_text),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,
        )
        parser.set_defaults(func=handler, parser=parser)
        return parser


def _job_flags(parser: argparse.ArgumentParser, create: bool) -> None:
    parser.set_defaults(program=[])
    what = parser.add_argument_group("what the job runs")
    what.add_argument(
        "--shell", action="store_true", help="run the program and arguments given after -- (shell executor)"
    )
    what.add_argument("--shell-command", metavar="CMD", help="run a command line through /bin/sh -c")
    what.add_argument("--executor", metavar="KIND", help="the executor kind (see `cronwire jobs types`)")
    what.add_argument(
        "--param",
        action="append",
        type=key_json_arg,
        metavar="KEY=JSON",
        help="an executor parameter; VALUE is JSON, or text if it is not JSON"
        + ("" if create else " (merged into the stored ones)"),
    )
    what.add_argument(
        "--params", type=json_object_arg, metavar="JSON", help="all parameters as a JSON object"
    )
    how = parser.add_argument_group("how it runs")
    how.add_argument("--description", help="free text")
    how.add_argument(
        "--timeout", type=duration_arg, metavar="DURATION", help=f"per attempt; {DURATION_HELP}; 0: none"
    )
    how.add_argument(
        "--retries", type=count_arg, metavar="N", help="retry a failed run up to N times (0: never)"
    )
    how.add_argument(
        "--retry-backoff", type=duration_arg, metavar="DURATION", help="delay before the first retry"
    )
    how.add_argument("--max-concurrency", type=count_arg, metavar="N", help="most runs at once (0: no limit)")
    how.add_argument(
        "--label",
        action="append",
        type=key_value_arg,
        metavar="KEY=VALUE",
        help="a label" + ("" if create else " (merged; KEY= removes it)"),
    )
    for flag in ("success", "failure", "completion"):
        how.add_argument(
            f"--on-{flag}", action="append", metavar="JOB", help=f"trigger JOB when a run ends in {flag}"
        )
    if create:
        parser.add_argument("--request-id", help="a retried create with the same id returns the first job")
    else:
        how.add_argument("--no-dependents", action="store_true", help="remove every dependent job")
        parser.add_argument("--etag", help="update only if the job still has this etag")


def _trigger_flags(parser: argparse.ArgumentParser) -> None:
    when = parser.add_argument_group("when it fires (repeat to combine)")
    when.add_argument("--cron", action="append", metavar="EXPR", help="5 or 6 cron fields, e.g. '0 3 * * *'")
    when.add_argument(
        "--every", action="append", type=duration_arg, metavar="DURATION", help="a fixed interval"
    )
    when.add_argument("--at", action="append", type=time_arg, metavar="TIME", help=f"once; {TIME_HELP}")
    when.add_argument("--all", action="store_true", help="fire only when every trigger agrees (default: any)")
    when.add_argument(
        "--tz", metavar="ZONE", help="IANA time zone for cron fields, e.g. Europe/Berlin (default UTC)"
    )
    when.add_argument("--start", type=time_arg, metavar="TIME", help="no tick before")
    when.add_argument("--end", type=time_arg, metavar="TIME", help="no tick after")


def _choices(members: Iterable[enum.Enum]) -> str:
    return ", ".join(enum_text(m) for m in members)


def _schedule_flags(parser: argparse.ArgumentParser, create: bool) -> None:
    _trigger_flags(parser)
    how = parser.add_argument_group("how it fires")
    how.add_argument("--description", help="free text")
    how.add_argument("--jitter", type=duration_arg, metavar="DURATION", help="random delay in [0, DURATION)")
    how.add_argument(
        "--misfire", type=enum_arg(MisfirePolicy), metavar="POLICY", help=_choices(list(MisfirePolicy))
    )
    how.add_argument(
        "--catchup-window", type=duration_arg, metavar="DURATION", help="how late a missed tick may run"
    )
    how.add_argument(
        "--overlap", type=enum_arg(OverlapPolicy), metavar="POLICY", help=_choices(list(OverlapPolicy))
    )
    how.add_argument(
        "--arg",
        action="append",
        type=key_json_arg,
        metavar="KEY=JSON",
        help="an argument passed to every run" + ("" if create else " (merged into the stored ones)"),
    )
    if create:
        parser.add_argument("--job", required=True, help="the job it runs (id or name)")
        parser.add_argument("--paused", action="store_true", help="create it paused")
        parser.add_argument(
            "--request-id", help="a retried create with the same id returns the first schedule"
        )
    else:
        how.add_argument("--no-start", action="store_true", help="clear the start time")
        how.add_argument("--no-end", action="store_true", help="clear the end time")
        parser.add_argument("--etag", help="update only if the schedule still has this etag")


def _wait_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--poll-interval",
        type=duration_arg,
        default=timedelta(milliseconds=500),
        metavar="DURATION",
        help="(0.5s)",
    )
    parser.add_argument(
        "--wait-timeout", type=duration_arg, metavar="DURATION", help="give up after (exit 124)"
    )


def _event_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", help="only events of this job")
    parser.add_argument("--schedule", help="only events of this schedule")
    parser.add_argument(
        "--type",
        action="append",
        type=enum_arg(EventType),
        metavar="TYPE",
        help="only these types (repeat), e.g. execution-failed",
    )
    parser.add_argument(
        "--after", type=count_arg, metavar="SEQUENCE", help="replay the events after this sequence"
    )
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace you may read")


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The whole command tree."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="cronwire",
        description="Talk to a cronwire server: jobs, schedules, executions, events.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cronwire {__version__}")
    _add_globals(parser, env, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_globals(common, env, suppress=True)
    build = _Builder(common)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    jobs = top.add_parser("jobs", help="create, change, list and run jobs").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = build.leaf(
        jobs,
        "create",
        cmd_jobs_create,
        "create a job",
        description="Create a job. Say what it runs with --shell -- PROGRAM [ARGS...] (no shell involved), "
        "--shell-command 'CMD' (through /bin/sh), or --executor KIND with --param KEY=JSON.",
        epilog="examples:\n  cronwire jobs create backup --shell --timeout 10m --retries 3 -- pg_dump app\n"
        "  cronwire jobs create tick --executor noop --param sleep_seconds=1",
    )
    p.add_argument("name", help="the job's id (or full name)")
    _job_flags(p, create=True)
    p = build.leaf(
        jobs,
        "update",
        cmd_jobs_update,
        "change the fields given of a job",
        description="Change the fields given of a job; the others stay. --shell -- PROGRAM [ARGS...] "
        "replaces what it runs; --param and --label are merged into the stored ones.",
    )
    p.add_argument("name", help="the job (id or name)")
    _job_flags(p, create=False)
    p = build.leaf(jobs, "get", cmd_jobs_get, "show a job")
    p.add_argument("name", help="the job (id or name)")
    p = build.leaf(jobs, "list", cmd_jobs_list, "list the jobs of the namespace")
    p.add_argument("--executor", help="only jobs of this executor kind")
    p.add_argument("--limit", type=count_arg, default=0, metavar="N", help="at most N jobs")
    p = build.leaf(jobs, "delete", cmd_jobs_delete, "delete a job and its schedules")
    p.add_argument("name", help="the job (id or name)")
    p.add_argument("--etag", help="delete only if the job still has this etag")
    p = build.leaf(
        jobs,
        "run",
        cmd_jobs_run,
        "run a job now",
        epilog=EXIT_CODES_HELP,
        description="Run a job now. With --wait, print its output when it has ended and exit with "
        "its outcome (0 succeeded; 3 failed or lost; 4 timed out; 5 cancelled or skipped; "
        "124 --wait-timeout passed).",
    )
    p.add_argument("name", help="the job (id or name)")
    p.add_argument(
        "--arg", action="append", type=key_json_arg, metavar="KEY=JSON", help="an argument for this run"
    )
    p.add_argument("--wait", action="store_true", help="wait for the end; exit code from the outcome")
    _wait_flags(p)
    p.add_argument("--request-id", help="a retried run with the same id returns the first execution")
    build.leaf(jobs, "types", cmd_jobs_types, "list the executor kinds (-o json: with their schemas)")

    schedules = top.add_parser("schedules", help="when jobs run").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = build.leaf(
        schedules,
        "create",
        cmd_schedules_create,
        "create a schedule for a job",
        epilog="examples:\n"
        "  cronwire schedules create nightly --job backup --cron '0 3 * * *' --tz Europe/Berlin\n"
        "  cronwire schedules create often --job backup --every 5m\n"
        "  cronwire schedules create once --job backup --at 2030-01-01T00:00:00Z",
    )
    p.add_argument("name", help="the schedule's id (or full name)")
    _schedule_flags(p, create=True)
    p = build.leaf(schedules, "update", cmd_schedules_update, "change the fields given of a schedule")
    p.add_argument("name", help="the schedule (id or name)")
    _schedule_flags(p, create=False)
    p = build.leaf(schedules, "get", cmd_schedules_get, "show a schedule")
    p.add_argument("name", help="the schedule (id or name)")
    p = build.leaf(schedules, "list", cmd_schedules_list, "list the schedules of the namespace")
    p.add_argument("--job", help="only the schedules of this job")
    p.add_argument("--limit", type=count_arg, default=0, metavar="N", help="at most N schedules")
    p = build.leaf(schedules, "delete", cmd_schedules_delete, "delete a schedule")
    p.add_argument("name", help="the schedule (id or name)")
    p.add_argument("--etag", help="delete only if the schedule still has this etag")
    p = build.leaf(schedules, "pause", cmd_schedules_pause, "stop a schedule from firing")
    p.add_argument("name", help="the schedule (id or name)")
    p.add_argument("--reason", help="why, for people")
    p = build.leaf(schedules, "resume", cmd_schedules_resume, "let a paused schedule fire again")
    p.add_argument("name", help="the schedule (id or name)")
    p = build.leaf(
        schedules, "preview", cmd_schedules_preview, "the next fire times of a schedule or a trigger"
    )
    p.add_argument("name", nargs="?", help="a stored schedule (or give --cron/--every/--at)")
    _trigger_flags(p)
    p.add_argument("--count", type=count_arg, default=0, metavar="N", help="how many (default 10)")
    p.add_argument("--after", type=time_arg, metavar="TIME", help="from this time (default now)")
    p = build.leaf(schedules, "backfill", cmd_schedules_backfill, "run the ticks of a past time range")
    p.add_argument("name", help="the schedule (id or name)")
    p.add_argument("--start", type=time_arg, required=True, metavar="TIME", help="range start (inclusive)")
    p.add_argument("--end", type=time_arg, required=True, metavar="TIME", help="range end (exclusive)")
    p.add_argument("--overlap", type=enum_arg(OverlapPolicy), metavar="POLICY", help="default allow-all")
    p.add_argument("--max-concurrency", type=count_arg, metavar="N", help="runs at once (default 1)")
    p.add_argument("--dry-run", action="store_true", help="only list the ticks")
    p.add_argument("--request-id", help="a retried backfill with the same id runs nothing again")

    executions = top.add_parser("executions", help="the runs of jobs").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = build.leaf(executions, "get", cmd_executions_get, "show an execution with its output")
    p.add_argument("name", help="the execution (id or name)")
    p.add_argument("--wait", action="store_true", help="wait for its end; exit code as for jobs run --wait")
    _wait_flags(p)
    p = build.leaf(executions, "list", cmd_executions_list, "list executions, newest first")
    p.add_argument("--job", help="only runs of this job")
    p.add_argument("--schedule", help="only runs fired by this schedule")
    p.add_argument(
        "--state",
        action="append",
        type=enum_arg(ExecutionState),
        metavar="STATE",
        help="only these states (repeat): " + ", ".join(enum_text(s) for s in ExecutionState),
    )
    p.add_argument("--since", type=time_arg, metavar="TIME", help="scheduled at or after")
    p.add_argument("--until", type=time_arg, metavar="TIME", help="scheduled before")
    p.add_argument("--limit", type=count_arg, default=50, metavar="N", help="at most N (default 50; 0: all)")
    p = build.leaf(executions, "cancel", cmd_executions_cancel, "cancel a queued or running execution")
    p.add_argument("name", help="the execution (id or name)")
    p.add_argument("--reason", help="why, for people")
    p = build.leaf(executions, "logs", cmd_executions_logs, "print an execution's output")
    p.add_argument("name", help="the execution (id or name)")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until it ends; exit with its outcome"
    )

    events = top.add_parser("events", help="the history of changes").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = build.leaf(events, "watch", cmd_events_watch, "print events as they happen (-o json: one per line)")
    _event_flags(p)
    p = build.leaf(events, "list", cmd_events_list, "list retained events")
    _event_flags(p)
    p.add_argument(
        "--limit", type=count_arg, default=100, metavar="N", help="at most N (default 100; 0: all)"
    )

    p = build.leaf(
        top,
        "apply",
        cmd_apply,
        "make jobs and schedules match a YAML or JSON file",
        description="Create the jobs and schedules of a file that are missing, update those that "
        "differ (checked by etag), and with --prune delete those of the namespace the file does not name.",
    )
    p.add_argument(
        "-f", "--filename", required=True, metavar="FILE", help="the file (YAML or JSON; - for stdin)"
    )
    p.add_argument("--prune", action="store_true", help="delete jobs and schedules the file does not name")
    p.add_argument("--dry-run", action="store_true", help="only say what would change")

    p = build.leaf(
        top,
        "completion",
        cmd_completion,
        "print a shell completion script",
        epilog="bash:  source <(cronwire completion bash)\nzsh:   source <(cronwire completion zsh)",
    )
    p.add_argument("shell", choices=["bash", "zsh"])
    return parser


def _field_hint(field_path: str) -> str:
    for prefix in sorted(FLAG_OF_FIELD, key=len, reverse=True):
        if field_path == prefix or field_path.startswith(prefix + ".") or field_path.startswith(prefix + "["):
            return FLAG_OF_FIELD[prefix]
    return ""


def error_line(error: CronwireError, server: str = "") -> str:
    """One line for a failed call: the bad fields (with the flag that sets them) or the message."""
    if isinstance(error, Unavailable) and not error.reason and server:
        text = f"cannot reach the server at {server} ({error.message})"
    elif isinstance(error, InvalidArgument) and error.field_violations:
        parts = []
        for violation in error.field_violations:
            hint = _field_hint(violation.field)
            where = f"{violation.field} ({hint})" if hint else violation.field
            parts.append(f"{where}: {violation.description}")
        text = "; ".join(parts)
    else:
        text = error.message
    code = error.reason or error.code.name
    reason = f" [{code}]" if code not in text else ""
    return f"cronwire: error: {text}{reason}".replace("\n", " ")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default: the process's arguments); return the exit code."""
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` is the program a shell job runs (argparse would take its first word
    # for a positional argument).
    command: list[str] = []
    if "--" in words:
        split = words.index("--")
        words, command = words[:split], words[split + 1 :]
    try:
        args = parser.parse_args(words)
        if command:
            if not hasattr(args, "program"):
                args.parser.error(f"unexpected arguments after --: {' '.join(command)}")
            args.program = command
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    ctx = Context(args, out, err)
    try:
        result: int = args.func(ctx)
        return result
    except UsageError as error:
        try:
            args.parser.error(str(error))
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except CronwireError as error:
        ctx.note(error_line(error, str(getattr(args, "server", ""))))
        return EXIT_ERROR
    except (DocumentError, OutputError) as error:
        ctx.note(f"cronwire: error: {error}")
        return EXIT_ERROR
    except ValueError as error:
        ctx.note(f"cronwire: error: {error}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        ctx.note("cronwire: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    finally:
        ctx.close()
    return EXIT_USAGE
