"""The `cronwire` command line: every command is one or two calls of the SDK's Client.

Exit codes: 0 success; 1 an error (one line on stderr, naming the bad field when there is
one); 2 bad usage; for `jobs run --wait` (and `executions get --wait`): 3 the execution
FAILED or was LOST, 4 it TIMED_OUT, 5 it was CANCELLED or SKIPPED, 124 `--wait-timeout`
passed before it ended; 130 interrupted.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cronwire._alert_commands import add_alert_commands, add_check_in_commands
from cronwire._cli_args import (
    UsageError,
    add_globals,
    calendar_flags,
    count_arg,
    duration_arg,
    enum_arg,
    event_flags,
    job_flags,
    join_relative_times,
    key_json_arg,
    local_time_arg,
    schedule_flags,
    time_arg,
    time_flags,
    trigger_flags,
    wait_flags,
)
from cronwire._commands import (
    EXIT_CANCELLED,
    EXIT_CODES_HELP,
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PERMISSION_DENIED,
    EXIT_TIMED_OUT,
    EXIT_UNAUTHENTICATED,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    FLAG_OF_FIELD,
    Context,
    cmd_apply,
    cmd_calendars_create,
    cmd_calendars_delete,
    cmd_calendars_get,
    cmd_calendars_list,
    cmd_calendars_preview,
    cmd_calendars_update,
    cmd_events_list,
    cmd_events_watch,
    cmd_executions_cancel,
    cmd_executions_get,
    cmd_executions_list,
    cmd_executions_logs,
    cmd_jobs_create,
    cmd_jobs_delete,
    cmd_jobs_describe,
    cmd_jobs_get,
    cmd_jobs_list,
    cmd_jobs_run,
    cmd_jobs_types,
    cmd_jobs_update,
    cmd_namespaces_list,
    cmd_schedules_backfill,
    cmd_schedules_create,
    cmd_schedules_delete,
    cmd_schedules_describe,
    cmd_schedules_get,
    cmd_schedules_list,
    cmd_schedules_pause,
    cmd_schedules_preview,
    cmd_schedules_resume,
    cmd_schedules_update,
    cmd_status,
)
from cronwire._completion import SHELLS, completion_script
from cronwire._documents import DocumentError
from cronwire._errors import CronwireError, InvalidArgument, PermissionDenied, Unauthenticated, Unavailable
from cronwire._key_commands import add_key_commands
from cronwire._output import OutputError, exact_times
from cronwire._types import ExecutionState, Job, OverlapPolicy, Schedule
from cronwire._values import enum_text
from cronwire._version import __version__
from cronwire._worker_commands import add_worker_commands


class _Builder:
    """Adds leaf commands that take the shared connection and output flags."""

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


def _all_namespaces_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help=f"the {what} of every namespace the key may see, one namespace after the other (names in full)",
    )


def _limit_flags(parser: argparse.ArgumentParser, default: int, what: str) -> None:
    limits = parser.add_mutually_exclusive_group()
    limits.add_argument(
        "--limit",
        type=count_arg,
        default=default,
        metavar="N",
        help=f"at most N {what} (default {default or 'all'}; 0: all); a cut list says so on stderr",
    )
    limits.add_argument("--all", action="store_true", help=f"every {what[:-1]} (as --limit 0)")


def cmd_completion(ctx: Context) -> int:
    args = ctx.args
    if args.names:
        # Run by the completion scripts: the ids of the namespace's jobs or schedules, or
        # nothing (quietly, within about a second) when no server answers.
        args.deadline = min(args.deadline or 1.0, 1.0)
        try:
            client = ctx.client
            found: Iterable[Job | Schedule] = (
                client.iter_jobs() if args.names == "jobs" else client.iter_schedules()
            )
            ctx.print("".join(f"{item.id}\n" for item in itertools.islice(found, 1000)))
        except CronwireError:
            pass
        return EXIT_OK
    if args.shell is None:
        raise UsageError(f"name the shell: {', '.join(SHELLS)}")
    ctx.print(completion_script(build_parser(), args.shell))
    return EXIT_OK


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
    add_globals(parser, env, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    add_globals(common, env, suppress=True)
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
        epilog="examples:\n"
        "  cronwire jobs create backup --shell --timeout 10m --max-attempts 4 -- pg_dump app\n"
        "  cronwire jobs create tick --executor noop --param sleep_seconds=1",
    )
    p.add_argument("name", help="the job's id (or full name)")
    job_flags(p, create=True)
    p = build.leaf(
        jobs,
        "update",
        cmd_jobs_update,
        "change the fields given of a job",
        description="Change the fields given of a job; the others stay. --shell -- PROGRAM [ARGS...] "
        "replaces what it runs; --param and --label are merged into the stored ones.",
    )
    p.add_argument("name", help="the job (id or name)")
    job_flags(p, create=False)
    p = build.leaf(jobs, "get", cmd_jobs_get, "show a job")
    p.add_argument("name", help="the job (id or name)")
    p = build.leaf(
        jobs,
        "describe",
        cmd_jobs_describe,
        "a job with its statistics, schedules, running executions and last runs",
    )
    p.add_argument("name", help="the job (id or name)")
    p = build.leaf(
        jobs,
        "list",
        cmd_jobs_list,
        "list the jobs of the namespace",
        description="List the jobs of the namespace with their last run, next run and success rate "
        "(of the runs that succeeded or failed). Times are ages (3m ago, in 2h); -o wide shows them exact.",
    )
    p.add_argument("--executor", help="only jobs of this executor kind")
    _limit_flags(p, 0, "jobs")
    _all_namespaces_flag(p, "jobs")
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
        "--arg",
        action="append",
        type=key_json_arg,
        metavar="KEY=JSON",
        help="an argument for this run (checked against the job's arguments_schema before the call)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the end; exit code from the outcome")
    wait_flags(p)
    p.add_argument("--request-id", help="a retried run with the same id returns the first execution")
    p.add_argument(
        "--no-overlap",
        action="store_true",
        help="follow the overlap policy of the job's schedules: while a run of a schedule with "
        "--overlap skip is queued or running, this run is recorded SKIPPED (exit 5) instead",
    )
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
    schedule_flags(p, create=True)
    p = build.leaf(schedules, "update", cmd_schedules_update, "change the fields given of a schedule")
    p.add_argument("name", help="the schedule (id or name)")
    schedule_flags(p, create=False)
    p = build.leaf(schedules, "get", cmd_schedules_get, "show a schedule")
    p.add_argument("name", help="the schedule (id or name)")
    p = build.leaf(
        schedules,
        "describe",
        cmd_schedules_describe,
        "a schedule with its statistics, next 5 fire times, skipped ticks and last runs",
    )
    p.add_argument("name", help="the schedule (id or name)")
    p = build.leaf(schedules, "list", cmd_schedules_list, "list the schedules of the namespace")
    p.add_argument("--job", help="only the schedules of this job")
    _limit_flags(p, 0, "schedules")
    _all_namespaces_flag(p, "schedules")
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
    trigger_flags(p)
    p.add_argument("--count", type=count_arg, default=0, metavar="N", help="how many (default 10)")
    p.add_argument(
        "--after",
        type=local_time_arg,
        metavar="TIME",
        help="from this time (default now; no offset: in --tz)",
    )
    p = build.leaf(schedules, "backfill", cmd_schedules_backfill, "run the ticks of a past time range")
    p.add_argument("name", help="the schedule (id or name)")
    p.add_argument("--start", type=time_arg, required=True, metavar="TIME", help="range start (inclusive)")
    p.add_argument("--end", type=time_arg, required=True, metavar="TIME", help="range end (exclusive)")
    p.add_argument("--overlap", type=enum_arg(OverlapPolicy), metavar="POLICY", help="default allow-all")
    p.add_argument("--max-concurrency", type=count_arg, metavar="N", help="runs at once (default 1)")
    p.add_argument("--dry-run", action="store_true", help="only list the ticks")
    p.add_argument("--request-id", help="a retried backfill with the same id runs nothing again")

    calendars = top.add_parser("calendars", help="days and times schedules skip or keep to").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = build.leaf(
        calendars,
        "create",
        cmd_calendars_create,
        "create a calendar",
        epilog="examples:\n"
        "  cronwire calendars create weekdays --weekdays mon-fri --tz Europe/Berlin\n"
        "  cronwire calendars create bavaria --holidays DE-BY --tz Europe/Berlin\n"
        "  cronwire calendars create business-days --include weekdays --exclude bavaria --tz Europe/Berlin\n"
        "  cronwire schedules create report --job report --cron '0 9 * * *' --tz Europe/Berlin "
        "--only-on-calendar business-days",
    )
    p.add_argument("name", help="the calendar's id (or full name)")
    calendar_flags(p, create=True)
    p = build.leaf(calendars, "update", cmd_calendars_update, "change the fields given of a calendar")
    p.add_argument("name", help="the calendar (id or name)")
    calendar_flags(p, create=False)
    p = build.leaf(calendars, "get", cmd_calendars_get, "show a calendar")
    p.add_argument("name", help="the calendar (id or name)")
    build.leaf(calendars, "list", cmd_calendars_list, "list the calendars of the namespace")
    p = build.leaf(calendars, "delete", cmd_calendars_delete, "delete a calendar no schedule uses")
    p.add_argument("name", help="the calendar (id or name)")
    p.add_argument("--etag", help="delete only if the calendar still has this etag")
    p = build.leaf(calendars, "preview", cmd_calendars_preview, "a year view of a calendar's days")
    p.add_argument("name", help="the calendar (id or name)")
    p.add_argument("--year", type=count_arg, metavar="YEAR", help="the year to show (default this year)")

    executions = top.add_parser("executions", help="the runs of jobs").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = build.leaf(executions, "get", cmd_executions_get, "show an execution with its output")
    p.add_argument("name", help="the execution (id or name)")
    p.add_argument("--wait", action="store_true", help="wait for its end; exit code as for jobs run --wait")
    wait_flags(p)
    p = build.leaf(executions, "list", cmd_executions_list, "list executions, newest first")
    p.add_argument("--job", help="only runs of this job")
    p.add_argument("--schedule", help="only runs fired by this schedule")
    p.add_argument(
        "--state",
        action="append",
        type=enum_arg(ExecutionState),
        metavar="STATE",
        help="only these states (repeat): "
        + ", ".join(enum_text(s) for s in ExecutionState)
        + "; without it, every state but skipped",
    )
    p.add_argument(
        "--all-states",
        action="store_true",
        help="skipped ticks too (left out by default so that they do not bury the runs)",
    )
    p.add_argument("--since", type=time_arg, metavar="TIME", help="scheduled at or after")
    p.add_argument("--until", type=time_arg, metavar="TIME", help="scheduled before")
    _limit_flags(p, 50, "executions")
    _all_namespaces_flag(p, "executions")
    p = build.leaf(executions, "cancel", cmd_executions_cancel, "cancel a run: its queued or running attempt")
    p.add_argument("name", help="the execution (id or name) of any attempt of the run")
    p.add_argument("--reason", help="why, for people")
    p.add_argument(
        "--wait-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="wait up to S seconds for the run to stop, then print its final state (0: no wait)",
    )
    p = build.leaf(executions, "logs", cmd_executions_logs, "print an execution's output")
    p.add_argument("name", help="the execution (id or name)")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until it ends; exit with its outcome"
    )

    events = top.add_parser("events", help="the history of changes").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = build.leaf(
        events,
        "watch",
        cmd_events_watch,
        "print events as they happen (-o json: one per line)",
        description="Print events as they are committed, reconnecting and resuming by itself when "
        "the connection breaks. --after SEQUENCE first replays the retained events after it.",
    )
    event_flags(p)
    p.add_argument(
        "--limit", type=count_arg, default=0, metavar="N", help="stop after N events (default: never)"
    )
    p = build.leaf(events, "list", cmd_events_list, "list retained events")
    event_flags(p)
    _limit_flags(p, 100, "events")

    namespaces = top.add_parser("namespaces", help="the namespaces the key may see").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    build.leaf(
        namespaces,
        "list",
        cmd_namespaces_list,
        "list the namespaces that hold jobs or schedules, with their counts",
    )

    add_key_commands(top, build.leaf)
    add_alert_commands(top, build.leaf)
    add_check_in_commands(top, build.leaf)
    add_worker_commands(top, build.leaf)
    p = build.leaf(
        top,
        "status",
        cmd_status,
        "the cluster: replicas, queue depth, running executions, scheduling lag",
    )
    p.add_argument(
        "--lag-window",
        type=duration_arg,
        metavar="DURATION",
        help="the lag percentiles cover executions started this long ago until now (default 5m)",
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
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only say what would change, every create and update checked by the server",
    )

    p = build.leaf(
        top,
        "completion",
        cmd_completion,
        "print a shell completion script",
        description="Print a completion script for SHELL, generated from the command tree: commands, "
        "flags, choices (-o: table, wide, json, yaml), file names for FILE flags, and job and schedule "
        "names from the server CRONWIRE_SERVER (and CRONWIRE_NAMESPACE, ...) points at.",
        epilog="bash:  source <(cronwire completion bash)      (e.g. in ~/.bashrc)\n"
        'zsh:   cronwire completion zsh > "${fpath[1]}/_cronwire"   (then compinit)\n'
        "fish:  cronwire completion fish > ~/.config/fish/completions/cronwire.fish",
    )
    p.add_argument("shell", nargs="?", choices=SHELLS, help="bash, zsh, fish or tcsh")
    p.add_argument("--names", choices=["jobs", "schedules"], help=argparse.SUPPRESS)
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
    elif isinstance(error, Unauthenticated):
        text = f"{error.message} (give one with --token or CRONWIRE_TOKEN)"
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
    words = join_relative_times(words, time_flags(parser))
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
        with exact_times(args.output == "wide"):
            result: int = args.func(ctx)
        return result
    except UsageError as error:
        try:
            args.parser.error(str(error))
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    except CronwireError as error:
        ctx.note(error_line(error, str(getattr(args, "server", ""))))
        if isinstance(error, Unauthenticated):
            return EXIT_UNAUTHENTICATED
        return EXIT_PERMISSION_DENIED if isinstance(error, PermissionDenied) else EXIT_ERROR
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


__all__ = [
    "EXIT_CANCELLED",
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PERMISSION_DENIED",
    "EXIT_TIMED_OUT",
    "EXIT_UNAUTHENTICATED",
    "EXIT_USAGE",
    "EXIT_WAIT_TIMEOUT",
    "build_parser",
    "main",
]
