"""The CLI's commands: each turns parsed arguments into one or two Client calls and prints."""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any, TypeVar

from cronwire._apply import (
    PAST,
    Applier,
    ApplyFailed,
    ApplyRefused,
    Change,
    parse_text,
    read_file,
    summary,
)
from cronwire._channel import TLSConfig
from cronwire._cli_args import UsageError
from cronwire._documents import to_document
from cronwire._errors import CronwireError, DeadlineExceeded, Unimplemented
from cronwire._output import dump, json_line
from cronwire._types import (
    AllOfTrigger,
    AnyOfTrigger,
    BusinessDayTrigger,
    CompletionCallback,
    CronTrigger,
    DateTrigger,
    Deadlines,
    DependencyCondition,
    DstPolicy,
    Execution,
    ExecutionRetention,
    ExecutionState,
    IntervalTrigger,
    JobDependent,
    RetryPolicy,
    RRuleTrigger,
    Trigger,
)
from cronwire._values import format_duration, format_time, in_zone
from cronwire._views import (
    calendar_details,
    calendar_year_view,
    calendars_table,
    cluster_status_view,
    event_line,
    events_table,
    execution_details,
    executions_table,
    incident_text,
    job_describe,
    job_details,
    job_types_table,
    jobs_table,
    namespaces_table,
    preview_table,
    schedule_describe,
    schedule_details,
    schedules_table,
)
from cronwire.aio import AsyncClient
from cronwire.client import Client

T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_TIMED_OUT = 4
EXIT_CANCELLED = 5
EXIT_UNAUTHENTICATED = 6
EXIT_PERMISSION_DENIED = 7
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
  6    the server wants a valid API key (--token, CRONWIRE_TOKEN)
  7    the API key's role or namespaces do not allow the call
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
    "job.retry_policy": "--max-attempts/--retries",
    "job.max_concurrency": "--max-concurrency",
    "job.labels": "--label",
    "job.execution_retention.max_count": "--keep",
    "job.execution_retention.max_age": "--keep-for",
    "job.dependents": "--on-success/--on-failure/--on-completion",
    "job.callback": "--callback",
    "job.callback.url": "--callback",
    "job.callback.states": "--callback-on",
    "job.arguments_schema": "--arguments-schema",
    "schedule.job": "--job",
    "schedule.trigger.cron": "--cron",
    "schedule.trigger.cron.dst_policy": "--dst",
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
        """`table` (also for `-o wide`: a table with exact times), `json` or `yaml`."""
        return "table" if self.args.output == "wide" else str(self.args.output)

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


def _tls(args: argparse.Namespace) -> bool | TLSConfig:
    tls: bool | TLSConfig = False
    if args.tls or args.ca or args.cert or args.key or args.tls_server_name:
        if bool(args.cert) != bool(args.key):
            raise UsageError("--tls-cert and --tls-key go together (mutual TLS)")
        tls = TLSConfig(
            root_certificates=_read_file(args.ca, "CA file") if args.ca else None,
            client_certificate=_read_file(args.cert, "certificate") if args.cert else None,
            client_private_key=_read_file(args.key, "key") if args.key else None,
            server_name=args.tls_server_name or None,
        )
    return tls


def make_client(args: argparse.Namespace) -> Client:
    return Client(
        args.server,
        namespace=args.namespace,
        tls=_tls(args),
        token=args.token or None,
        timeout=args.deadline if args.deadline > 0 else None,
    )


def make_async_client(args: argparse.Namespace) -> AsyncClient:
    """The asyncio client with the same settings; create it inside a running loop."""
    return AsyncClient(
        args.server,
        namespace=args.namespace,
        tls=_tls(args),
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


def _max_attempts(args: argparse.Namespace) -> int | None:
    """The attempts in all that --max-attempts or --retries (retries after the first) ask for."""
    if args.max_attempts is not None:
        return int(args.max_attempts)
    return None if args.retries is None else int(args.retries) + 1


def _retry_policy(args: argparse.Namespace) -> RetryPolicy | None:
    attempts = _max_attempts(args)
    if args.retry_backoff is not None and attempts is None:
        raise UsageError("--retry-backoff goes with --max-attempts or --retries")
    if attempts is None or attempts <= 1:
        return None
    return RetryPolicy(max_attempts=attempts, initial_backoff=args.retry_backoff)


def _wall_times(args: argparse.Namespace) -> list[datetime]:
    """The times of the trigger flags that were written without an offset."""
    given = [*(args.at or []), args.start, args.end, getattr(args, "after", None)]
    return [t for t in given if t is not None and t.tzinfo is None]


def _zone_of_times(ctx: Context, stored: str | None) -> str:
    """The zone wall times of --at/--start/--end are read in: --tz, else the stored schedule's."""
    if ctx.args.tz is not None or not _wall_times(ctx.args):
        return str(ctx.args.tz or "")
    return ctx.client.get_schedule(stored).time_zone if stored else ""


def _zoned(args: argparse.Namespace, zone: str) -> None:
    """Read the wall times of the trigger flags in `zone` (in place)."""
    try:
        args.at = [in_zone(t, zone) for t in args.at or []]
        for attribute in ("start", "end", "after"):
            value = getattr(args, attribute, None)
            if value is not None:
                setattr(args, attribute, in_zone(value, zone))
    except ValueError as error:
        raise UsageError(f"argument --tz: {error}") from None


def _refuse_past_dates(args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    for at in args.at or []:
        if at <= now:
            raise UsageError(
                f"--at {format_time(at)} is in the past (now {format_time(now.replace(microsecond=0))}): "
                "a one-shot time must be in the future"
            )


def _triggers(args: argparse.Namespace) -> Trigger | None:
    if args.dst is not None and not args.cron:
        raise UsageError("--dst goes with --cron")
    dst = args.dst or DstPolicy.DEBIAN
    triggers: list[Trigger] = [CronTrigger(e, dst) for e in args.cron or []]
    triggers += [IntervalTrigger(every) for every in args.every or []]
    triggers += [DateTrigger(in_zone(at)) for at in args.at or []]
    triggers += [RRuleTrigger(rule.replace("\\n", "\n")) for rule in args.rrule or []]
    if (args.calendar or args.time_of_day or args.from_day or args.from_date) and not args.business_day:
        raise UsageError("--calendar, --time-of-day, --from-day and --from-date go with --business-day")
    if args.business_day and not args.calendar:
        raise UsageError("--business-day needs --calendar (the calendar of business days)")
    if args.from_day and args.from_date:
        raise UsageError("--from-day counts every month, --from-date once: give one of them")
    triggers += [
        BusinessDayTrigger(args.calendar, n, args.time_of_day or "00:00", args.from_day or 0, args.from_date)
        for n in args.business_day or []
    ]
    if not triggers:
        return None
    if len(triggers) == 1:
        return triggers[0]
    return AllOfTrigger(triggers) if args.all else AnyOfTrigger(triggers)


# Commands: jobs


def _retention(args: argparse.Namespace, base: ExecutionRetention | None) -> ExecutionRetention | None:
    """The job's own retention from --keep and --keep-for over `base`; None when neither is given."""
    if args.keep is None and args.keep_for is None:
        return None
    kept = base or ExecutionRetention()
    return ExecutionRetention(
        max_count=kept.max_count if args.keep is None else args.keep,
        max_age=kept.max_age if args.keep_for is None else (args.keep_for or None),
    )


def _callback_secret(args: argparse.Namespace) -> str:
    """The signing secret named by --callback-secret-ref (an environment variable); "" without it."""
    if not args.callback_secret_ref:
        return ""
    secret = os.environ.get(args.callback_secret_ref, "")
    if not secret:
        raise UsageError(
            f"--callback-secret-ref: the environment variable {args.callback_secret_ref} is not set"
        )
    return secret


def _callback_states(args: argparse.Namespace) -> list[ExecutionState] | None:
    if args.callback_on is None:
        return None
    return list(dict.fromkeys(state for group in args.callback_on for state in group))


def _new_callback(args: argparse.Namespace) -> CompletionCallback | None:
    """The callback of `jobs create`: --callback with --callback-on and --callback-secret-ref."""
    if not args.callback:
        if args.callback_on is not None or args.callback_secret_ref:
            raise UsageError("--callback-on and --callback-secret-ref go with --callback URL")
        return None
    return CompletionCallback(
        url=args.callback, states=_callback_states(args) or [], secret=_callback_secret(args)
    )


def _changed_callback(
    args: argparse.Namespace, current: Callable[[], CompletionCallback | None]
) -> CompletionCallback | None:
    """The callback of `jobs update`: the flags given over the stored callback (its secret is
    kept by the server unless --callback-secret-ref gives a new one)."""
    if args.no_callback:
        if args.callback or args.callback_on is not None or args.callback_secret_ref:
            raise UsageError("--no-callback goes with no other --callback flag")
        return None
    states = _callback_states(args)
    url = args.callback
    if not url or states is None:
        stored = current()
        if stored is None and not url:
            raise UsageError("the job has no callback: give --callback URL")
        url = url or (stored.url if stored else "")
        if states is None:
            states = list(stored.states) if stored else []
    return CompletionCallback(url=url, states=states, secret=_callback_secret(args))


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
        execution_retention=_retention(args, None),
        callback=_new_callback(args),
        arguments_schema=args.arguments_schema,
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
    if _max_attempts(args) is not None or args.retry_backoff is not None:
        fields["retry_policy"] = _retry_policy(args)
    if args.max_concurrency is not None:
        fields["max_concurrency"] = args.max_concurrency
    if args.on_success or args.on_failure or args.on_completion or args.no_dependents:
        fields["dependents"] = _dependents(args)
    if args.server_retention:
        if args.keep is not None or args.keep_for is not None:
            raise UsageError("--server-retention goes with neither --keep nor --keep-for")
        fields["execution_retention"] = None
    elif args.keep is not None or args.keep_for is not None:
        # Merged into the job's own rules: read them first, and update only that version.
        current = client.get_job(args.name)
        etag = etag or current.etag
        fields["execution_retention"] = _retention(args, current.execution_retention)
    if args.no_callback or args.callback or args.callback_on is not None or args.callback_secret_ref:

        def stored_callback() -> CompletionCallback | None:
            nonlocal etag
            current = client.get_job(args.name)
            etag = etag or current.etag
            return current.callback

        fields["callback"] = _changed_callback(args, stored_callback)
    if args.no_arguments_schema:
        fields["arguments_schema"] = None
    elif args.arguments_schema is not None:
        fields["arguments_schema"] = args.arguments_schema
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


def _page_size(limit: int) -> int:
    """The page size of a listing cut at `limit`: one more, to learn whether there are more."""
    return min(limit + 1, 1000) if limit else 0


def _cut(ctx: Context, items: Iterable[T], limit: int, what: str) -> list[T]:
    """At most `limit` of `items` (0: all); when more were left out, say so on stderr."""
    result: list[T] = []
    for item in items:
        if limit and len(result) >= limit:
            noun = what[:-1] if len(result) == 1 else what
            ctx.note(f"{len(result)} {noun} shown; more with --limit N or --all")
            break
        result.append(item)
    return result


def _limit(args: argparse.Namespace) -> int:
    return 0 if getattr(args, "all", False) else int(args.limit)


def _each_namespace(ctx: Context, listing: Callable[[str | None], Iterable[T]]) -> Iterator[T]:
    """`listing` of the CLI's namespace; with -A/--all-namespaces, of every namespace the key may
    see (ListNamespaces), one namespace after the other, as the iteration goes."""
    if not getattr(ctx.args, "all_namespaces", False):
        yield from listing(None)
        return
    for namespace in ctx.client.iter_namespaces():
        yield from listing(namespace.id)


def _shown_namespace(ctx: Context) -> str:
    # With -A names are shown in full: ids alone would not say which namespace.
    return "" if getattr(ctx.args, "all_namespaces", False) else ctx.namespace


def cmd_namespaces_list(ctx: Context) -> int:
    namespaces = list(ctx.client.iter_namespaces())
    ctx.show(namespaces, lambda: namespaces_table(namespaces))
    return EXIT_OK


def cmd_jobs_list(ctx: Context) -> int:
    args = ctx.args
    limit = _limit(args)
    found = _each_namespace(
        ctx,
        lambda namespace: ctx.client.iter_jobs(
            executor=args.executor or "", page_size=_page_size(limit), namespace=namespace
        ),
    )
    jobs = _cut(ctx, found, limit, "jobs")
    ctx.show(jobs, lambda: jobs_table(jobs, _shown_namespace(ctx)))
    return EXIT_OK


RUNS = (
    ExecutionState.QUEUED,
    ExecutionState.RUNNING,
    ExecutionState.SUCCEEDED,
    ExecutionState.FAILED,
    ExecutionState.TIMED_OUT,
    ExecutionState.CANCELLED,
    ExecutionState.LOST,
)
ACTIVE = (ExecutionState.QUEUED, ExecutionState.RUNNING)
RECENT_RUNS = 10
SKIPPED_COUNTED = 1000  # skipped ticks counted by `schedules describe`, at most


def cmd_jobs_describe(ctx: Context) -> int:
    client = ctx.client
    job = client.get_job(ctx.args.name)
    schedules = list(client.iter_schedules(job=job.name))
    active = list(client.iter_executions(job=job.name, states=ACTIVE))
    # The newest runs that ran (skipped ticks are counted on their schedule instead).
    recent = client.list_executions(job=job.name, states=RUNS, page_size=RECENT_RUNS).items
    document = {"job": job, "schedules": schedules, "active": active, "recent": recent}
    ctx.show(document, lambda: job_describe(job, schedules, active, recent, ctx.namespace))
    return EXIT_OK


def cmd_jobs_delete(ctx: Context) -> int:
    ctx.client.delete_job(ctx.args.name, etag=ctx.args.etag or "")
    if ctx.fmt == "table":
        ctx.print(f"job {ctx.args.name} deleted\n")
    else:
        ctx.print(dump({"deleted": ctx.client._requests.job_name(ctx.args.name)}, ctx.fmt))
    return EXIT_OK


def _finished(ctx: Context, execution: Execution, output_shown: bool = False) -> int:
    """Print a finished execution; its exit code (see the module's doc)."""
    if ctx.fmt != "table":
        ctx.print(dump(to_document(execution), ctx.fmt))
    else:
        if execution.output and not output_shown:
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


def _attempt_line(ended: Execution, retry: Execution) -> str:
    """`attempt 1 failed (exit 1); retrying in 30s`: an attempt that ended and will be retried."""
    state = ended.state.name.lower().replace("_", " ") if ended.state is not None else "ended"
    outcome = f" (exit {ended.exit_code})" if ended.exit_code is not None else ""
    if ended.error and ended.exit_code is None:
        outcome = f" ({ended.error})"
    due = retry.next_attempt_time or retry.scheduled_time
    left = (due - datetime.now(UTC)).total_seconds() if due is not None else 0.0
    when = f"in {format_duration(timedelta(seconds=math.ceil(left)))}" if left > 0.05 else "now"
    return f"attempt {ended.attempt} {state}{outcome}; retrying {when} (attempt {retry.attempt})"


class _Following:
    """The attempt `jobs run --wait` follows now, for the message when it is interrupted."""

    def __init__(self, execution: Execution) -> None:
        self.name = execution.name


async def _attempt_live(ctx: Context, client: AsyncClient, name: str) -> Execution:
    """Print an attempt's output as it is produced (StreamExecutionLogs); return the attempt once
    it has ended. Its state is also polled, so the end is seen without waiting on the stream."""
    printed = 0  # bytes of the output printed so far

    async def stream() -> None:
        nonlocal printed
        async with aclosing(client.logs(name, follow=True)) as chunks:
            async for chunk in chunks:
                data = chunk.data.encode()[max(printed - chunk.offset, 0) :]
                if data:
                    ctx.print(data.decode(errors="ignore"))
                    printed = chunk.offset + len(chunk.data.encode())

    task = asyncio.create_task(stream())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=ctx.args.poll_interval.total_seconds() or 0.5)
            if task in done:
                task.result()  # the stream's error, if it failed
            current = await client.get_execution(name)
            if task in done or current.ended:
                break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    rest = current.output.encode()[printed:]  # what the stream had not delivered yet
    if rest and not current.output_truncated:
        ctx.print(rest.decode(errors="ignore"))
    return current


async def _follow_live(ctx: Context, following: _Following) -> Execution:
    """Print each attempt's output as it is produced and report attempts as they end; return the
    last attempt once it has ended."""
    async with make_async_client(ctx.args) as client:
        while True:
            ended = await _attempt_live(ctx, client, following.name)
            retry = await client._find_retry(ended)
            if retry is None:
                return ended
            ctx.note(f"cronwire: {_attempt_line(ended, retry)}")
            following.name = retry.name


def _follow(ctx: Context, execution: Execution) -> int:
    """`jobs run --wait` in a table: the output live, attempts as they end, the outcome."""
    args = ctx.args
    following = _Following(execution)
    timeout = args.wait_timeout.total_seconds() if args.wait_timeout is not None else None
    try:
        ended = asyncio.run(asyncio.wait_for(_follow_live(ctx, following), timeout))
    except Unimplemented:
        # A server without log streaming: poll, and print the output at the end.
        return _wait(ctx, ctx.client.get_execution(following.name))
    except TimeoutError:
        state = ctx.client.get_execution(following.name).state
        ctx.note(
            f"cronwire: execution {following.name} is still {state.name if state else 'QUEUED'} "
            f"after {format_duration(args.wait_timeout)}; it keeps running"
        )
        return EXIT_WAIT_TIMEOUT
    except KeyboardInterrupt:
        ctx.note(_interrupted(ctx, following.name))
        return EXIT_INTERRUPTED
    return _finished(ctx, ended, output_shown=True)


def _interrupted(ctx: Context, name: str) -> str:
    """What an interrupted wait leaves behind: the execution, and whether it runs on."""
    try:
        current = ctx.client.get_execution(name)
    except CronwireError:
        return f"cronwire: interrupted; execution {name} may still be running"
    if current.ended:
        return f"cronwire: interrupted; execution {name} ended {current.state}"
    return (
        f"cronwire: interrupted; execution {name} keeps running ({current.state}); "
        f"stop it with: cronwire executions cancel {current.id}"
    )


def _argument_path(path: Iterable[str | int]) -> str:
    """`arguments.hosts[1]`, `arguments["x-y"]`: an argument named as the server names it."""
    text = "arguments"
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.isidentifier() and part.isascii():
            text += f".{part}"
        else:
            text += f"[{json.dumps(part)}]"
    return text


def argument_problems(schema: dict[str, Any] | None, arguments: dict[str, Any]) -> list[str]:
    """`arguments.region: 'mars' is not one of ['eu', 'us']`: each argument of a run that the
    job's schema refuses, checked as the server checks them (the `default` of each top-level
    property the arguments lack filled in first). Empty when they match, or when this client
    cannot judge the schema (the server then decides)."""
    if not schema:
        return []
    from jsonschema import Draft202012Validator, SchemaError  # only `jobs run` needs it
    from referencing.exceptions import Unresolvable

    filled = dict(arguments)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name, declared in properties.items():
            if name not in filled and isinstance(declared, dict) and "default" in declared:
                filled[name] = copy.deepcopy(declared["default"])
    try:
        Draft202012Validator.check_schema(schema)
        errors = sorted(
            Draft202012Validator(schema).iter_errors(filled), key=lambda e: list(map(str, e.absolute_path))
        )
    except (SchemaError, Unresolvable):
        return []
    problems: list[str] = []
    for error in errors:
        path = list(error.absolute_path)
        declared = error.schema if isinstance(error.schema, dict) else {}
        instance = error.instance
        if error.validator == "required" and isinstance(instance, dict):
            missing = [
                n
                for n in declared.get("required", ())
                if n not in instance and error.message == f"{n!r} is a required property"
            ]
            if missing:
                problems.append(f"{_argument_path([*path, missing[0]])}: required")
                continue
        if (
            error.validator == "additionalProperties"
            and declared.get("additionalProperties") is False
            and isinstance(instance, dict)
        ):
            allowed = declared.get("properties", {})
            known = ", ".join(sorted(allowed))
            problems += [
                f"{_argument_path([*path, n])}: unknown argument; known: {known}"
                for n in instance
                if n not in allowed
            ]
            continue
        message = declared.get("errorMessage")
        problems.append(f"{_argument_path(path)}: {message if isinstance(message, str) else error.message}")
    return problems


def cmd_jobs_run(ctx: Context) -> int:
    args = ctx.args
    arguments = _merge_pairs(args.arg)
    # Checked here against the job's schema first, so that a mistyped argument is named before
    # anything is asked of the server to run (which checks them again).
    problems = argument_problems(ctx.client.get_job(args.name).arguments_schema, arguments)
    if problems:
        for problem in problems:
            ctx.note(f"cronwire: error: {problem}")
        return EXIT_ERROR
    execution = ctx.client.run_job(
        args.name,
        arguments=arguments,
        request_id=args.request_id or "",
        respect_overlap=args.no_overlap,
    )
    if execution.state is ExecutionState.SKIPPED:
        if ctx.fmt == "table":
            ctx.print(f"{execution.name} SKIPPED: {execution.error}\n")
        else:
            ctx.print(dump(to_document(execution), ctx.fmt))
        return STATE_EXIT[ExecutionState.SKIPPED]
    if args.wait:
        if ctx.fmt == "table":
            return _follow(ctx, execution)
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


def _deadlines(args: argparse.Namespace, current: Deadlines | None) -> Deadlines | None:
    """The deadlines the flags give, over `current` (an update changes only those given)."""
    given = {
        key: getattr(args, key)
        for key in ("start_within", "finish_by", "max_duration")
        if getattr(args, key) is not None
    }
    if not given:
        return current
    return dataclasses.replace(current or Deadlines(), **given)


def cmd_schedules_create(ctx: Context) -> int:
    args = ctx.args
    _zoned(args, args.tz or "")
    _refuse_past_dates(args)
    trigger = _triggers(args)
    if trigger is None:
        raise UsageError(
            "say when it fires: --cron EXPR, --every DURATION, --at TIME, --rrule RULE or --business-day N"
        )
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
        exclude_calendars=args.exclude_calendar or (),
        only_on_calendars=args.only_on_calendar or (),
        deadlines=_deadlines(args, None),
        request_id=args.request_id or "",
    )
    ctx.show(schedule, lambda: schedule_details(schedule))
    return EXIT_OK


def cmd_schedules_update(ctx: Context) -> int:
    args = ctx.args
    client = ctx.client
    etag = args.etag or ""
    fields: dict[str, Any] = {}
    _zoned(args, _zone_of_times(ctx, args.name))
    _refuse_past_dates(args)
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
    if args.no_calendars:
        fields["exclude_calendars"] = fields["only_on_calendars"] = []
    for attribute in ("exclude_calendar", "only_on_calendar"):
        if getattr(args, attribute):
            fields[f"{attribute}s"] = getattr(args, attribute)
    if args.no_deadlines:
        fields["deadlines"] = None
    elif any(getattr(args, flag) is not None for flag in ("start_within", "finish_by", "max_duration")):
        current = client.get_schedule(args.name)
        etag = etag or current.etag
        fields["deadlines"] = _deadlines(args, current.deadlines)
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
    limit = _limit(args)
    found = _each_namespace(
        ctx,
        lambda namespace: ctx.client.iter_schedules(
            job=args.job, page_size=_page_size(limit), namespace=namespace
        ),
    )
    schedules = _cut(ctx, found, limit, "schedules")
    ctx.show(schedules, lambda: schedules_table(schedules, _shown_namespace(ctx)))
    return EXIT_OK


def cmd_schedules_describe(ctx: Context) -> int:
    client = ctx.client
    schedule = client.get_schedule(ctx.args.name)
    preview = client.preview_schedule(schedule.name, count=5)
    skipped = _limited(
        client.iter_executions(
            schedule=schedule.name, states=(ExecutionState.SKIPPED,), page_size=SKIPPED_COUNTED + 1
        ),
        SKIPPED_COUNTED + 1,
    )
    capped = len(skipped) > SKIPPED_COUNTED
    skipped = skipped[:SKIPPED_COUNTED]
    active = list(client.iter_executions(schedule=schedule.name, states=ACTIVE))
    recent = client.list_executions(schedule=schedule.name, states=RUNS, page_size=RECENT_RUNS).items
    reasons: dict[str, int] = {}
    for execution in skipped:
        reason = execution.skip_reason.name if execution.skip_reason else "UNKNOWN"
        reasons[reason] = reasons.get(reason, 0) + 1
    incidents = client.list_incidents(schedule=schedule.name, page_size=1).items
    incident = incidents[0] if incidents else None
    document = {
        "schedule": schedule,
        "last_incident": incident,
        "next_fire_times": preview.fire_times,
        "skipped_ticks": {"total": len(skipped), "more": capped, "by_reason": reasons},
        "active": active,
        "recent": recent,
    }
    ctx.show(
        document,
        lambda: (
            schedule_describe(schedule, preview, skipped, capped, active, recent, ctx.namespace)
            + f"\nlast incident:\n  {incident_text(incident) if incident else 'none'}\n"
        ),
    )
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
    _zoned(args, _zone_of_times(ctx, args.name))
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


# Commands: calendars


def _calendar_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The calendar fields the flags give (lists flattened), by their client keyword."""
    fields: dict[str, Any] = {}
    for attribute, key in (
        ("date", "dates"),
        ("yearly", "yearly_dates"),
        ("holidays", "public_holidays"),
        ("hours", "time_ranges"),
        ("include", "include_calendars"),
        ("exclude", "exclude_calendars"),
    ):
        if getattr(args, attribute):
            fields[key] = list(getattr(args, attribute))
    if args.weekdays:
        fields["weekdays"] = list(dict.fromkeys(day for days in args.weekdays for day in days))
    if args.tz is not None:
        fields["time_zone"] = args.tz
    if args.description is not None:
        fields["description"] = args.description
    return fields


def cmd_calendars_create(ctx: Context) -> int:
    calendar = ctx.client.create_calendar(
        ctx.args.name, request_id=ctx.args.request_id or "", **_calendar_fields(ctx.args)
    )
    ctx.show(calendar, lambda: calendar_details(calendar))
    return EXIT_OK


def cmd_calendars_update(ctx: Context) -> int:
    fields = _calendar_fields(ctx.args)
    if not fields:
        raise UsageError("nothing to update: give at least one flag to change")
    calendar = ctx.client.update_calendar(ctx.args.name, etag=ctx.args.etag or "", **fields)
    ctx.show(calendar, lambda: calendar_details(calendar))
    return EXIT_OK


def cmd_calendars_get(ctx: Context) -> int:
    calendar = ctx.client.get_calendar(ctx.args.name)
    ctx.show(calendar, lambda: calendar_details(calendar))
    return EXIT_OK


def cmd_calendars_list(ctx: Context) -> int:
    calendars = list(ctx.client.iter_calendars())
    ctx.show(calendars, lambda: calendars_table(calendars, ctx.namespace))
    return EXIT_OK


def cmd_calendars_delete(ctx: Context) -> int:
    ctx.client.delete_calendar(ctx.args.name, etag=ctx.args.etag or "")
    if ctx.fmt == "table":
        ctx.print(f"calendar {ctx.args.name} deleted\n")
    else:
        ctx.print(dump({"deleted": ctx.client._requests.calendar_name(ctx.args.name)}, ctx.fmt))
    return EXIT_OK


def cmd_calendars_preview(ctx: Context) -> int:
    preview = ctx.client.preview_calendar(ctx.args.name, year=ctx.args.year or 0)
    ctx.show(preview, lambda: calendar_year_view(preview))
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
    if not args.wait:
        ctx.show(execution, lambda: execution_details(execution))
        return EXIT_OK
    # The same view as without --wait, once the execution (and its retries) has ended.
    try:
        ended = ctx.client.wait_for_execution(
            execution, poll_interval=args.poll_interval, wait_timeout=args.wait_timeout
        )
    except DeadlineExceeded as error:
        if error.reason != "WAIT_TIMEOUT":
            raise
        ctx.note(f"cronwire: {error.message}")
        return EXIT_WAIT_TIMEOUT
    ctx.show(ended, lambda: execution_details(ended))
    return STATE_EXIT.get(ended.state, EXIT_ERROR) if ended.state is not None else EXIT_ERROR


def cmd_executions_list(ctx: Context) -> int:
    args = ctx.args
    limit = _limit(args)
    states = args.state or ()
    if not states and not args.all_states:
        # Skipped ticks are counted on the schedule; listed, they would bury the runs.
        states = tuple(s for s in ExecutionState if s is not ExecutionState.SKIPPED)
    found = _each_namespace(
        ctx,
        lambda namespace: ctx.client.iter_executions(
            job=args.job,
            schedule=args.schedule,
            states=states,
            start_time=args.since,
            end_time=args.until,
            page_size=_page_size(limit),
            namespace=namespace,
        ),
    )
    executions = _cut(ctx, found, limit, "executions")
    ctx.show(executions, lambda: executions_table(executions, _shown_namespace(ctx)))
    return EXIT_OK


def cmd_executions_cancel(ctx: Context) -> int:
    """Cancel the run, then wait (bounded by --wait-seconds) for the attempt cancelled to end."""
    args = ctx.args
    execution = ctx.client.cancel_execution(args.name, reason=args.reason or "")
    if execution.id != args.name.rsplit("/", 1)[-1]:
        ctx.note(f"cronwire: cancelling attempt {execution.attempt} of this run: {execution.name}")
    wait = args.wait_seconds
    if not execution.ended and wait > 0:
        try:
            execution = ctx.client.wait_for_execution(execution, wait_timeout=wait, follow_retries=False)
        except DeadlineExceeded as error:
            if error.reason != "WAIT_TIMEOUT":
                raise
            execution = ctx.client.get_execution(execution.name)
            ctx.show(execution, lambda: execution_details(execution))
            ctx.note(f"cronwire: {execution.name} has not stopped after {wait:g}s; its worker stops it")
            return EXIT_WAIT_TIMEOUT
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
    for seen, event in enumerate(ctx.client.watch(**_event_filters(ctx.args)), start=1):
        if ctx.fmt == "table":
            ctx.print(event_line(event))
        else:
            ctx.print(json_line(to_document(event)))  # a stream: one JSON document per line
        if ctx.args.limit and seen >= ctx.args.limit:
            break
    return EXIT_OK


def cmd_events_list(ctx: Context) -> int:
    args = ctx.args
    limit = _limit(args)
    found = ctx.client.iter_events(page_size=_page_size(limit), **_event_filters(args))
    events = _cut(ctx, found, limit, "events")
    ctx.show(events, lambda: events_table(events))
    return EXIT_OK


# Commands: apply, completion


def cmd_status(ctx: Context) -> int:
    status = ctx.client.cluster_status(lag_window=ctx.args.lag_window)
    ctx.show(status, lambda: cluster_status_view(status, ctx.namespace))
    return EXIT_OK


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
    except ApplyRefused as refused:
        for problem in refused.problems:
            ctx.note(f"cronwire: error: {problem.text()}")
        count = len(refused.problems)
        ctx.note(
            f"nothing changed in namespace {plan.namespace}: the server refused "
            f"{count} {'place' if count == 1 else 'places'} of the file"
        )
        return EXIT_ERROR
    except ApplyFailed as failed:
        change = failed.failed
        ctx.note(
            f"cronwire: error: {change.kind} {change.name} could not be {PAST[change.action]}: "
            f"{failed.problem.text()}"
        )
        for made_change in failed.done:
            ctx.note(f"  made before the failure: {made_change.text(False)}")
        for left in failed.left:
            ctx.note(f"  not attempted: {left.text(True)}")
        made = (
            summary(failed.done, plan.namespace, False).split(": ", 1)[1] if failed.done else "nothing made"
        )
        ctx.note(
            f"apply stopped in namespace {plan.namespace}: {made}; 1 failed, "
            f"{len(failed.left)} not attempted (apply the file again once the cause is fixed)"
        )
        return EXIT_ERROR
    finally:
        if ctx.fmt != "table":
            done = [to_document(c) | {"dry_run": args.dry_run} for c in applier.changes]
            ctx.print(dump(done, ctx.fmt))
    if ctx.fmt == "table":
        ctx.print(summary(changes, plan.namespace, args.dry_run) + "\n")
    return EXIT_OK
