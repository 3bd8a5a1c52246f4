"""The CLI's argument vocabulary: value types for argparse and the flag groups commands share."""

from __future__ import annotations

import argparse
import enum
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import date, timedelta
from typing import Any, TypeVar

from cronwire._calendar_forms import (
    parse_date_range,
    parse_holidays,
    parse_hours,
    parse_weekdays,
    parse_yearly,
)
from cronwire._channel import DEFAULT_NAMESPACE, DEFAULT_TARGET
from cronwire._output import FORMATS
from cronwire._types import (
    DstPolicy,
    EventType,
    ExecutionState,
    MisfirePolicy,
    OverlapPolicy,
)
from cronwire._values import (
    DURATION_HELP,
    LOCAL_TIME_HELP,
    enum_text,
    looks_relative,
    parse_duration,
    parse_enum,
    parse_local_time,
    parse_time,
)

E = TypeVar("E", bound=ExecutionState | MisfirePolicy | OverlapPolicy | EventType | DstPolicy)


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
# A time that may be a wall time, read later in the schedule's zone (`--at 2030-01-01T09:00 --tz ...`).
local_time_arg = _typed(parse_local_time, "time")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date YYYY-MM-DD, e.g. 2027-05-15") from None


date_arg = _typed(_date, "date")


def time_flags(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings, in the whole command tree, whose value is a time."""
    flags: set[str] = set()
    for action in parser._actions:
        if action.type in (time_arg, local_time_arg):
            flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                flags |= time_flags(child)
    return flags


def join_relative_times(words: list[str], flags: set[str]) -> list[str]:
    """`--start -6h` as `--start=-6h`: argparse takes a word starting with `-` for an option, so
    a relative time given as its own word after a time flag is joined to the flag."""
    joined: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word in flags and index + 1 < len(words) and looks_relative(words[index + 1]):
            joined.append(f"{word}={words[index + 1]}")
            index += 2
            continue
        joined.append(word)
        index += 1
    return joined


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


def _schema(text: str) -> dict[str, Any]:
    """A JSON Schema given inline as JSON, or as `@FILE` (JSON, or YAML unless it ends in .json)."""
    if not text.startswith("@"):
        return _json_object(text)
    from cronwire._apply import parse_text  # apply's reader: YAML when PyYAML is there

    path = text[1:]
    try:
        with open(path, encoding="utf-8") as handle:
            content = handle.read()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    document = parse_text(content, path)
    if not isinstance(document, dict):
        raise ValueError(f"{path} must hold a mapping (a JSON object)")
    return document


schema_arg = _typed(_schema, "JSON Schema")


def enum_arg(cls: type[E]) -> Callable[[str], E]:
    converter: Callable[[str], E] = _typed(lambda text: parse_enum(cls, text), cls.__name__)
    converter.enum_choices = [enum_text(m) for m in cls]  # type: ignore[attr-defined]  # for completion
    return converter


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return value


count_arg = _typed(_non_negative, "number")


END_STATES = (
    ExecutionState.SUCCEEDED,
    ExecutionState.FAILED,
    ExecutionState.TIMED_OUT,
    ExecutionState.CANCELLED,
)


def _end_states(text: str) -> list[ExecutionState]:
    states = [parse_enum(ExecutionState, word) for word in text.split(",") if word.strip()]
    for state in states:
        if state not in END_STATES:
            raise ValueError(f"{enum_text(state)} is not an end state; one of {_choices(END_STATES)}")
    return states


end_states_arg = _typed(_end_states, "states")


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


_positive = _typed(_at_least_one, "number")


def add_globals(parser: argparse.ArgumentParser, env: Mapping[str, str], suppress: bool) -> None:
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
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(env.get("CRONWIRE_TLS", "").lower() in ("1", "true", "yes")),
        help="connect with TLS, trusting the system's CAs (CRONWIRE_TLS=1)",
    )
    # --ca, --cert and --key are the older spellings, kept working.
    group.add_argument(
        "--tls-ca",
        "--ca",
        dest="ca",
        metavar="FILE",
        default=default(env.get("CRONWIRE_TLS_CA", "")),
        help="CA certificates (PEM) to trust instead of the system's; implies --tls (CRONWIRE_TLS_CA)",
    )
    group.add_argument(
        "--tls-cert",
        "--cert",
        dest="cert",
        metavar="FILE",
        default=default(env.get("CRONWIRE_TLS_CERT", "")),
        help="client certificate chain (PEM) for mutual TLS; implies --tls (CRONWIRE_TLS_CERT)",
    )
    group.add_argument(
        "--tls-key",
        "--key",
        dest="key",
        metavar="FILE",
        default=default(env.get("CRONWIRE_TLS_KEY", "")),
        help="the private key (PEM) of --tls-cert (CRONWIRE_TLS_KEY)",
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=default(env.get("CRONWIRE_TLS_SERVER_NAME", "")),
        help="the name the server's certificate must carry, when it is not the --server host "
        "(CRONWIRE_TLS_SERVER_NAME)",
    )
    group.add_argument(
        "-n",
        "--namespace",
        default=default(env.get("CRONWIRE_NAMESPACE") or DEFAULT_NAMESPACE),
        help=f"namespace of short names (CRONWIRE_NAMESPACE, default {DEFAULT_NAMESPACE})",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=default("table"),
        help="output format: table (times as ages), wide (a table with exact times), json or yaml "
        "(default table)",
    )
    group.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        default=default(30.0),
        help="deadline of each call; 0 for none (default 30)",
    )


def job_flags(parser: argparse.ArgumentParser, create: bool) -> None:
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
    attempts = how.add_mutually_exclusive_group()
    attempts.add_argument(
        "--max-attempts",
        type=_positive,
        metavar="N",
        help="run a failing job at most N times in all, the first attempt included (1: no retries)",
    )
    attempts.add_argument(
        "--retries",
        type=count_arg,
        metavar="N",
        help="N retries after the first attempt (--max-attempts N+1; 0: never retry)",
    )
    how.add_argument(
        "--retry-backoff", type=duration_arg, metavar="DURATION", help="delay before the first retry"
    )
    how.add_argument(
        "--max-concurrency",
        type=count_arg,
        metavar="N",
        help="most runs at once (0: no limit; 1: its runs never overlap)",
    )
    how.add_argument(
        "--label",
        action="append",
        type=key_value_arg,
        metavar="KEY=VALUE",
        help="a label" + ("" if create else " (merged; KEY= removes it)"),
    )
    kept = parser.add_argument_group("its history, in place of the server's retention")
    kept.add_argument(
        "--keep", type=count_arg, metavar="N", help="keep the newest N finished runs (0: any number)"
    )
    kept.add_argument(
        "--keep-for",
        type=duration_arg,
        metavar="DURATION",
        help="delete finished runs that ended longer ago (0: keep them for ever)",
    )
    if not create:
        kept.add_argument(
            "--server-retention", action="store_true", help="keep its runs by the server's retention again"
        )
    for flag in ("success", "failure", "completion"):
        how.add_argument(
            f"--on-{flag}", action="append", metavar="JOB", help=f"trigger JOB when a run ends in {flag}"
        )
    hook = parser.add_argument_group("completion callback (a signed JSON POST when a run ends)")
    hook.add_argument("--callback", metavar="URL", help="the http(s) URL POSTed to when a run ends")
    hook.add_argument(
        "--callback-on",
        action="append",
        type=end_states_arg,
        metavar="STATES",
        help=f"comma-separated end states that call it (default: every one): {_choices(END_STATES)}",
    )
    hook.add_argument(
        "--callback-secret-ref",
        metavar="VAR",
        help="the environment variable holding the HMAC secret of the X-Cronwire-Signature header "
        "(read by this command, so the secret stays off the command line)",
    )
    if not create:
        hook.add_argument("--no-callback", action="store_true", help="remove the completion callback")
    template = parser.add_argument_group("its runs' arguments (a job as a template)")
    schema = template.add_mutually_exclusive_group()
    schema.add_argument(
        "--arguments-schema",
        type=schema_arg,
        metavar="JSON|@FILE",
        help="a JSON Schema (draft 2020-12) the arguments of its runs must match; the default of "
        "each top-level property is filled in when a run lacks it. @FILE reads it from a JSON or "
        "YAML file",
    )
    if not create:
        schema.add_argument(
            "--no-arguments-schema", action="store_true", help="remove the schema: any arguments again"
        )
    if create:
        parser.add_argument("--request-id", help="a retried create with the same id returns the first job")
    else:
        how.add_argument("--no-dependents", action="store_true", help="remove every dependent job")
        parser.add_argument("--etag", help="update only if the job still has this etag")


def trigger_flags(parser: argparse.ArgumentParser, *, window: bool = True) -> None:
    """The flags of a trigger; `window` False (a check-in, which has no start or end): --start and
    --end are hidden, and the command refuses them by name rather than ignoring them."""
    when = parser.add_argument_group("when it fires (repeat to combine)")
    when.add_argument("--cron", action="append", metavar="EXPR", help="5 or 6 cron fields, e.g. '0 3 * * *'")
    when.add_argument(
        "--every", action="append", type=duration_arg, metavar="DURATION", help="a fixed interval"
    )
    when.add_argument(
        "--at", action="append", type=local_time_arg, metavar="TIME", help=f"once; {LOCAL_TIME_HELP}"
    )
    when.add_argument(
        "--rrule",
        action="append",
        metavar="RULE",
        help="an RFC 5545 recurrence, lines separated by newlines or by a literal \\n, e.g. "
        "'DTSTART:20270104T090000\\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE' (wall-clock times in --tz)",
    )
    when.add_argument(
        "--business-day",
        action="append",
        type=int,
        metavar="N",
        help="the N-th business day of every month (-1: the last, -2: the one before), per --calendar",
    )
    when.add_argument(
        "--calendar", metavar="CALENDAR", help="the calendar of business days of --business-day"
    )
    when.add_argument(
        "--time-of-day", metavar="HH:MM", help="the wall-clock time of --business-day (default 00:00)"
    )
    when.add_argument(
        "--from-day",
        type=int,
        metavar="D",
        help="count --business-day from day D of the month, into the next month if need be: "
        "--business-day 1 --from-day 15 is the 15th or the next business day (-1: or the one before)",
    )
    when.add_argument(
        "--from-date",
        type=date_arg,
        metavar="YYYY-MM-DD",
        help="fire once instead of every month, counting --business-day from this date: "
        "--business-day 1 --from-date 2027-05-15 is that day or the next business day after it",
    )
    when.add_argument("--all", action="store_true", help="fire only when every trigger agrees (default: any)")
    when.add_argument(
        "--tz",
        metavar="ZONE",
        help="IANA time zone of the cron fields and of --at"
        + ("/--start/--end" if window else "")
        + " times written without an offset, e.g. Europe/Berlin (default UTC)",
    )
    when.add_argument(
        "--dst",
        type=enum_arg(DstPolicy),
        metavar="POLICY",
        help="what a --cron time a daylight-saving change skips does: debian (runs at the jump, "
        "default) or skip (does not run)",
    )
    when.add_argument(
        "--start", type=local_time_arg, metavar="TIME", help="no tick before" if window else argparse.SUPPRESS
    )
    when.add_argument(
        "--end", type=local_time_arg, metavar="TIME", help="no tick after" if window else argparse.SUPPRESS
    )


def _choices(members: Iterable[enum.Enum]) -> str:
    return ", ".join(enum_text(m) for m in members)


def parse_finish_by(value: str) -> str | timedelta:
    """`09:30` (a wall time) or a duration (`2h`)."""
    hours, sep, minutes = value.partition(":")
    if sep:
        if (
            hours.isdigit()
            and minutes.isdigit()
            and len(minutes) == 2
            and int(hours) < 24
            and int(minutes) < 60
        ):
            return f"{int(hours):02d}:{minutes}"
        raise ValueError(f"{value!r} is not a time HH:MM")
    return parse_duration(value)


finish_by_arg = _typed(parse_finish_by, "finish-by")


def schedule_flags(parser: argparse.ArgumentParser, create: bool) -> None:
    trigger_flags(parser)
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
    days = parser.add_argument_group("calendars (repeat to name more)")
    days.add_argument(
        "--exclude-calendar",
        action="append",
        metavar="CALENDAR",
        help="skip the ticks on this calendar (recorded SKIPPED, reason calendar)"
        + ("" if create else "; replaces the stored ones"),
    )
    days.add_argument(
        "--only-on-calendar",
        action="append",
        metavar="CALENDAR",
        help="run only the ticks on this calendar, e.g. business days"
        + ("" if create else "; replaces the stored ones"),
    )
    if not create:
        days.add_argument("--no-calendars", action="store_true", help="clear both lists of calendars")
    deadlines = parser.add_argument_group("deadlines (alerts, never stops)")
    deadlines.add_argument(
        "--start-within", type=duration_arg, metavar="DURATION", help="LATE if a tick has not started by then"
    )
    deadlines.add_argument(
        "--finish-by",
        type=finish_by_arg,
        metavar="HH:MM|DURATION",
        help="MISSED if a tick has not ended by this wall time (in --tz) or this long after it",
    )
    deadlines.add_argument(
        "--max-duration", type=duration_arg, metavar="DURATION", help="TOO_LONG if a run takes longer"
    )
    if not create:
        deadlines.add_argument("--no-deadlines", action="store_true", help="clear every deadline")
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


date_range_arg = _typed(parse_date_range, "date")
yearly_arg = _typed(parse_yearly, "yearly date")
weekdays_arg = _typed(parse_weekdays, "weekdays")
holidays_arg = _typed(parse_holidays, "holidays")
hours_arg = _typed(parse_hours, "hours")


def calendar_flags(parser: argparse.ArgumentParser, create: bool) -> None:
    replaced = "" if create else " (replaces the stored ones)"
    days = parser.add_argument_group("the days it holds (repeat each to add more)" + replaced)
    days.add_argument(
        "--date",
        action="append",
        type=date_range_arg,
        metavar="DATE[..DATE]",
        help="a date or range of dates",
    )
    days.add_argument(
        "--yearly", action="append", type=yearly_arg, metavar="MM-DD", help="a date of every year"
    )
    days.add_argument(
        "--weekdays",
        action="append",
        type=weekdays_arg,
        metavar="DAYS",
        help="days of the week, e.g. mon-fri",
    )
    days.add_argument(
        "--holidays",
        action="append",
        type=holidays_arg,
        metavar="CC[-SUB]",
        help="a country's public holidays (DE, US, GB), or a subdivision's (DE-BY, US-NY)",
    )
    days.add_argument(
        "--hours",
        action="append",
        type=hours_arg,
        metavar="HH:MM-HH:MM",
        help="only these wall-clock times of its days (default: whole days)",
    )
    days.add_argument("--include", action="append", metavar="CALENDAR", help="add another calendar's times")
    days.add_argument(
        "--exclude", action="append", metavar="CALENDAR", help="take another calendar's times away"
    )
    parser.add_argument("--tz", metavar="ZONE", help="IANA time zone its days are read in (default UTC)")
    parser.add_argument("--description", help="free text")
    if create:
        parser.add_argument(
            "--request-id", help="a retried create with the same id returns the first calendar"
        )
    else:
        parser.add_argument("--etag", help="update only if the calendar still has this etag")


def wait_flags(parser: argparse.ArgumentParser) -> None:
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


def event_flags(parser: argparse.ArgumentParser) -> None:
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
