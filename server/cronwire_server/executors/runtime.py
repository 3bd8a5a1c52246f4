"""What a worker hands an executor and what it gets back.

A worker builds a `RunRequest` for one execution, picks the kind's `Runner`
(`runners.runner_for`) and awaits `run`. A runner never raises for a failed
run: every way a run can end is a `RunOutcome`. Only `asyncio.CancelledError`
escapes, when the worker's own task is cancelled, and by then the runner has
stopped whatever it started.

How a run is stopped is the runner's; when is the same for every kind:
`race` waits for the work, its timeout and the cancel event, stops the work and
says which came first, so a timeout reads `timed out after 5s` and a cancel
`cancelled` whatever the kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from cronwire_server.config import Settings
from cronwire_server.core.errors import NotFound, StorageUnavailable
from cronwire_server.core.model import Execution, ExecutionState
from cronwire_server.core.names import job_name
from cronwire_server.logs import run_fields

log = logging.getLogger(__name__)

__all__ = [
    "MAX_RESULT_DEPTH",
    "OutputCallback",
    "ParentRun",
    "ProcessFence",
    "RunOutcome",
    "RunRequest",
    "Runner",
    "Stopped",
    "cancelled_outcome",
    "describe_timeout",
    "parent_headers",
    "parent_run",
    "race",
    "set_parent_env",
    "storable_json",
    "storable_outcome",
    "storable_text",
]

OutputCallback = Callable[[str], None]


class ProcessFence(Protocol):
    """Where a runner registers the process groups it starts, so that they die with the replica
    and before the run's lease could pass to another (`executors.fence.Fence`)."""

    def guard(self, token: str, pgid: int) -> None:
        """The run with lease `token` started process group `pgid`."""

    def unguard(self, token: str, pgid: int) -> None:
        """That group has ended."""


@dataclass(frozen=True)
class ParentRun:
    """The execution whose end started a dependent job's run, as the run is told of it:
    `CRONWIRE_PARENT_*` variables (shell, python), `X-Cronwire-Parent-*` headers (http)."""

    execution_name: str
    job_name: str
    state: ExecutionState
    exit_code: int | None = None

    def fields(self) -> dict[str, str]:
        """EXECUTION, JOB, STATE (`FAILED`, as the API names it) and EXIT_CODE (empty when
        the parent had none, e.g. an http job or a run that never started)."""
        return {
            "EXECUTION": self.execution_name,
            "JOB": self.job_name,
            "STATE": self.state.name,
            "EXIT_CODE": "" if self.exit_code is None else str(self.exit_code),
        }


def set_parent_env(env: dict[str, str], parent: ParentRun | None) -> None:
    """`CRONWIRE_PARENT_EXECUTION`, `_JOB`, `_STATE`, `_EXIT_CODE` into `env` for a run another
    execution started; for other runs none of them (a job's own `env` cannot pose as a parent)."""
    for key in PARENT_FIELDS:
        env.pop(f"CRONWIRE_PARENT_{key}", None)
    if parent is not None:
        env.update({f"CRONWIRE_PARENT_{key}": value for key, value in parent.fields().items()})


def parent_headers(parent: ParentRun) -> dict[str, str]:
    """`X-Cronwire-Parent-Execution`, `-Job`, `-State`, `-Exit-Code` (the last only when the
    parent had an exit code)."""
    return {
        "X-Cronwire-Parent-" + key.title().replace("_", "-"): value
        for key, value in parent.fields().items()
        if value
    }


PARENT_FIELDS = ("EXECUTION", "JOB", "STATE", "EXIT_CODE")


async def parent_run(
    execution: Execution, get_execution: Callable[[str, str], Awaitable[Execution]]
) -> ParentRun | None:
    """The parent of a dependent job's execution, read with `get_execution`; None for other
    executions, and for a parent deleted (or unreadable) meanwhile: the run goes ahead."""
    if not execution.parent_execution_id:
        return None
    try:
        parent = await get_execution(execution.namespace, execution.parent_execution_id)
    except (NotFound, StorageUnavailable):
        return None
    return ParentRun(parent.name, job_name(parent.namespace, parent.job_id), parent.state, parent.exit_code)


@dataclass(frozen=True)
class RunRequest:
    """One execution to run."""

    execution_name: str  # namespaces/{ns}/executions/{id}, for env/logging
    job_name: str
    parameters: dict[str, Any]  # the job's executor parameters, validated against the kind's schema
    arguments: dict[str, Any]  # the execution's arguments (from the schedule or RunJob)
    scheduled_time: datetime
    attempt: int
    timeout: timedelta | None  # None = no timeout
    capture_bytes: int = Settings.max_output_bytes  # bound on captured output
    # Unique per claim of an attempt: CRONWIRE_LEASE_TOKEN, for job code that fences its writes.
    lease_token: str = ""
    fence: ProcessFence | None = field(default=None, compare=False, repr=False)
    # The execution whose end started this one (a job's dependents), else None.
    parent: ParentRun | None = None


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended."""

    state: ExecutionState  # SUCCEEDED, FAILED, TIMED_OUT or CANCELLED
    exit_code: int | None = None
    # stdout and stderr interleaved as produced, decoded UTF-8 with errors="replace".
    output: str = ""
    output_truncated: bool = False
    result: Any = None
    # For people: "exit code 3", "timed out after 5s", "cancelled", "executable not found: foo".
    error: str = ""
    # The response status of an `http` run that got a response; None for other kinds.
    http_status: int | None = None
    # When the run ended, on this process's monotonic clock (`time.monotonic()`), once the worker
    # pool has it: its end time is recorded as the database's clock then, however long the outcome
    # waited to be written (a batch, a database that was away). None: the time it is written.
    ended: float | None = field(default=None, compare=False)


# What job code produces is stored as text and JSON: PostgreSQL holds no NUL character in either
# and no NaN or infinity in JSON, and neither database a lone surrogate. A run's output, error or
# result is its code's to choose, so a value a backend could not store is not refused (that would
# leave the run without an outcome): it is stored the same way on both.


def storable_text(text: str) -> str:
    """`text` with each NUL character, and each lone surrogate (which no UTF-8 holds: JSON's
    `"\\ud800"` decodes to one), as U+FFFD, as an undecodable byte of output already is; `text`
    itself when it has neither."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:
        # UTF-16 joins the surrogates that pair up and replaces the others.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


# Levels of arrays and objects a result may nest: protobuf reads a message at most 100 deep,
# and each JSON level is two (a Value, then its ListValue or Struct), so one nested deeper could
# be neither returned by the API nor read by a client.
MAX_RESULT_DEPTH = 32


class _TooDeep(Exception):
    pass


def storable_json(value: Any) -> Any:
    """A JSON value with its strings (keys too) through `storable_text`, and NaN and the
    infinities, which JSON has not, as null (as JavaScript's JSON.stringify writes them), and so
    an integer beyond a double's range (protobuf's numbers are doubles: no client could be sent
    it); one nested more than MAX_RESULT_DEPTH levels deep is replaced by `{"omitted": why}`."""
    try:
        return _storable(value, 0)
    except _TooDeep:
        return {"omitted": f"a result nested more than {MAX_RESULT_DEPTH} levels deep"}


def _storable(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            return None
        return value
    if isinstance(value, dict | list | tuple) and depth >= MAX_RESULT_DEPTH:
        raise _TooDeep
    if isinstance(value, dict):
        return {
            (storable_text(key) if isinstance(key, str) else key): _storable(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_storable(item, depth + 1) for item in value]
    return value


def storable_outcome(outcome: RunOutcome) -> RunOutcome:
    """`outcome` as every backend stores it and the API returns it (the same object when it
    already is)."""
    output, error = storable_text(outcome.output), storable_text(outcome.error)
    if output is outcome.output and error is outcome.error and outcome.result is None:
        return outcome
    return dataclasses.replace(outcome, output=output, error=error, result=storable_json(outcome.result))


# Tries of an outcome the database refuses even alone (while it takes the others) before it is
# written without what the job produced: those values are the likely cause, and the run must end.
REFUSALS_BEFORE_STRIPPING = 3


def after_refusal(outcome: RunOutcome, refusals: int, error: Exception, execution: Execution) -> RunOutcome:
    """`execution`'s `outcome` as it is to be tried again once the database has refused it alone
    `refusals` times (the last with `error`): at REFUSALS_BEFORE_STRIPPING, without what the job
    produced (its output, result and error text), which a message replaces as its error; the
    state, exit code and HTTP status stay."""
    if refusals != REFUSALS_BEFORE_STRIPPING:
        return outcome
    log.error(
        "the database refused this run's outcome %d times; recording it without its output, result and error",
        refusals,
        extra=run_fields(execution),
    )
    why = (
        f"the run ended {outcome.state.name}, but its output, result and error could not be"
        f" stored ({type(error).__name__}) and were dropped"
    )
    return dataclasses.replace(outcome, output="", output_truncated=False, result=None, error=why)


class Runner(Protocol):
    """Runs one kind of executor.

    `cancel` is set when the execution is cancelled or the server drains: the
    runner stops the work and returns CANCELLED. `on_output` receives output as
    it is produced; it is called on the event loop and must not block.
    """

    async def run(
        self,
        request: RunRequest,
        cancel: asyncio.Event,
        on_output: OutputCallback | None = None,
    ) -> RunOutcome: ...


def describe_timeout(timeout: timedelta) -> str:
    """`timed out after 5s`, `timed out after 0.25s`: the error of a TIMED_OUT outcome."""
    return f"timed out after {timeout.total_seconds():g}s"


# Why a run was stopped before its work finished:
# (CANCELLED, "cancelled") or (TIMED_OUT, "timed out after 5s").
Stopped = tuple[ExecutionState, str]


def cancelled_outcome() -> RunOutcome:
    """The outcome of a run cancelled before it started anything."""
    return RunOutcome(ExecutionState.CANCELLED, error="cancelled")


async def race(
    work: asyncio.Future[Any],
    cancel: asyncio.Event,
    time_limit: timedelta | None,
    *,
    stop: Callable[[], Awaitable[None]],
    abandon: Callable[[], Awaitable[None]],
) -> Stopped | None:
    """Wait for `work`, at most `time_limit` (the run's timeout; None: no limit), until
    `cancel` is set; then `stop`.

    Returns None when the work finished first (work that finished just as it was cancelled
    or timed out counts as finished), else why it was stopped: `cancel` before the timeout.
    `stop` is awaited in every case, finished or not (a finished program may leave processes
    in its group); it ends the work and keeps what it produced. When the caller's own task is
    cancelled meanwhile, `abandon` (no grace, but leave nothing running) is awaited instead
    and the CancelledError propagates. `work` is left to the caller.
    """
    cancelled = asyncio.ensure_future(cancel.wait())
    try:
        seconds = time_limit.total_seconds() if time_limit is not None else None
        await asyncio.wait({work, cancelled}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        stopped: Stopped | None = None
        if work.done():
            pass
        elif cancelled.done():
            stopped = (ExecutionState.CANCELLED, "cancelled")
        elif time_limit is not None:
            stopped = (ExecutionState.TIMED_OUT, describe_timeout(time_limit))
        await stop()
    except BaseException:
        with contextlib.suppress(BaseException):
            await abandon()
        raise
    finally:
        cancelled.cancel()
    return stopped
