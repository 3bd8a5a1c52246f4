"""The executor kinds a job may use: one `ExecutorKind` record each, in `KINDS`.

A record carries all there is to a kind: its name and description, the JSON
schema of its parameters and an example (ListJobTypes sends them; the schemas
themselves are in `kinds`), the checks beyond the schema that depend on what the
server allows (`validate`: the http URL's address, the python entry point) and the
factory of its runner. CreateJob and UpdateJob validate parameters with it, the
worker runs with the runner it makes (`runners`), key grants name its kinds. A new
kind is one more record here and nowhere else.

Runner classes are imported when a factory is called, so that what only needs the
schemas (validation, ListJobTypes, key grants) loads no HTTP client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from cronwire_server.core.errors import FieldViolation, InvalidArgument
from cronwire_server.core.parameter_paths import field_path, schema_violations
from cronwire_server.executors import kinds
from cronwire_server.executors.address_policy import HttpPolicy
from cronwire_server.executors.entry_policy import EntryPolicy
from cronwire_server.executors.runtime import Runner

if TYPE_CHECKING:
    from cronwire_server.executors.jobuser import JobUser

# The kind whose runs remote workers take (WorkerService); the local pool never starts them.
REMOTE = "remote"

__all__ = [
    "KINDS",
    "REMOTE",
    "EntryPolicy",
    "ExecutorKind",
    "ExecutorPolicy",
    "all_kinds",
    "field_path",
    "get_kind",
    "runs_remotely",
    "starts_processes",
    "validate_parameters",
]


@dataclass(frozen=True)
class ExecutorPolicy:
    """What this server lets jobs do: validation and the runners read the same.

    `http`: the addresses http jobs (and callbacks) may call; `entry`: the modules python jobs
    may call; `user`: who shell and python jobs run as (None: the server's own user).
    """

    http: HttpPolicy = field(default_factory=HttpPolicy)
    entry: EntryPolicy = field(default_factory=EntryPolicy)
    user: JobUser | None = None


def _no_checks(parameters: Mapping[str, Any], policy: ExecutorPolicy) -> list[FieldViolation]:
    return []


@dataclass(frozen=True)
class ExecutorKind:
    """An executor kind: its name (`Job.executor`), what it runs, its parameters' schema, an
    example, its checks beyond the schema and its runner, and whether its runs start processes
    (only those are announced to the pool's fence, `executors.fence`).

    `validate` returns what the parameters may not do under the server's policy, each naming
    its parameter; it gets parameters the schema may have refused, so it reads only what it
    can. `runner` makes the kind's runner for a server's policy; runners keep no state between
    runs, so one serves every execution.
    """

    name: str
    description: str
    parameters_schema: dict[str, Any]
    example: dict[str, Any]
    runner: Callable[[ExecutorPolicy], Runner]
    validate: Callable[[Mapping[str, Any], ExecutorPolicy], list[FieldViolation]] = _no_checks
    starts_processes: bool = True  # the safe guess: announced runs only cost a pipe line


def _shell_runner(policy: ExecutorPolicy) -> Runner:
    from cronwire_server.executors.shell import ShellRunner

    return ShellRunner(user=policy.user)


def _python_runner(policy: ExecutorPolicy) -> Runner:
    from cronwire_server.executors.python_runner import PythonRunner

    return PythonRunner(user=policy.user, entry=policy.entry)


def _python_violations(parameters: Mapping[str, Any], policy: ExecutorPolicy) -> list[FieldViolation]:
    return policy.entry.violations(parameters)


def _http_runner(policy: ExecutorPolicy) -> Runner:
    from cronwire_server.executors.http_runner import HttpRunner

    return HttpRunner(policy.http)


def _http_violations(parameters: Mapping[str, Any], policy: ExecutorPolicy) -> list[FieldViolation]:
    """The URL's scheme and a literal address, as far as that is possible without DNS; the
    runner checks the resolved addresses again when it sends."""
    from cronwire_server.executors.http_runner import check_url

    url = parameters.get("url")
    if isinstance(url, str) and (refusal := check_url(url, policy.http)) is not None:
        return [FieldViolation("parameters.url", refusal)]
    return []


def _noop_runner(policy: ExecutorPolicy) -> Runner:
    from cronwire_server.executors.noop import NoopRunner

    return NoopRunner()


def _remote_runner(policy: ExecutorPolicy) -> Runner:
    from cronwire_server.executors.remote import RemoteRunner

    return RemoteRunner()


_BUILTIN = (
    ExecutorKind(
        name="shell",
        description="Runs a program with its arguments (or a shell command line), capturing its output.",
        parameters_schema=kinds.SHELL_SCHEMA,
        example=kinds.SHELL_EXAMPLE,
        runner=_shell_runner,
    ),
    ExecutorKind(
        name="python",
        description="Calls a Python function `module:function` in a subprocess.",
        parameters_schema=kinds.PYTHON_SCHEMA,
        example=kinds.PYTHON_EXAMPLE,
        runner=_python_runner,
        validate=_python_violations,
    ),
    ExecutorKind(
        name="http",
        description="Calls a webhook and checks the response status.",
        parameters_schema=kinds.HTTP_SCHEMA,
        example=kinds.HTTP_EXAMPLE,
        runner=_http_runner,
        validate=_http_violations,
        starts_processes=False,
    ),
    ExecutorKind(
        name="noop",
        description="Does nothing but record its arguments; for trying schedules out.",
        parameters_schema=kinds.NOOP_SCHEMA,
        example=kinds.NOOP_EXAMPLE,
        runner=_noop_runner,
        starts_processes=False,
    ),
    ExecutorKind(
        name="remote",
        description="Runs on a remote worker of the job's queue (WorkerService): your code, in your process.",
        parameters_schema=kinds.REMOTE_SCHEMA,
        example=kinds.REMOTE_EXAMPLE,
        runner=_remote_runner,
        starts_processes=False,
    ),
)


def runs_remotely(name: str) -> bool:
    """Whether runs of executor kind `name` are taken by remote workers, never by a local pool."""
    return name == REMOTE


def _compile(kinds: Iterable[ExecutorKind]) -> dict[str, Draft202012Validator]:
    validators: dict[str, Draft202012Validator] = {}
    for kind in kinds:
        # A broken schema fails at import, not at the first CreateJob.
        Draft202012Validator.check_schema(kind.parameters_schema)
        validators[kind.name] = Draft202012Validator(kind.parameters_schema)
    return validators


KINDS: Mapping[str, ExecutorKind] = MappingProxyType({kind.name: kind for kind in _BUILTIN})
_VALIDATORS = _compile(KINDS.values())


def all_kinds() -> list[ExecutorKind]:
    """Every kind, by name."""
    return sorted(KINDS.values(), key=lambda kind: kind.name)


def starts_processes(name: str) -> bool:
    """Whether runs of executor kind `name` may start processes (True for a kind not known here)."""
    kind = KINDS.get(name)
    return kind is None or kind.starts_processes


def get_kind(name: str) -> ExecutorKind:
    """The kind called `name`; InvalidArgument on field `executor` if there is none."""
    kind = KINDS.get(name)
    if kind is None:
        known = ", ".join(sorted(KINDS))
        if not name:
            raise InvalidArgument.field("executor", f"required: one of {known}")
        raise InvalidArgument.field("executor", f"unknown executor kind {name!r}; known kinds: {known}")
    return kind


def validate_parameters(
    kind_name: str, parameters: dict[str, Any], policy: ExecutorPolicy | None = None
) -> None:
    """Raise InvalidArgument unless `parameters` match the kind's schema and, given the
    server's `policy`, pass the kind's own checks under it (None: the schema only).

    An unknown kind is a violation of `executor`; each schema violation is one
    of `parameters.<path>` (`parameters.argv[0]`), with jsonschema's message.
    """
    kind = get_kind(kind_name)
    errors = sorted(_VALIDATORS[kind.name].iter_errors(parameters), key=lambda e: list(map(str, e.path)))
    violations = [violation for error in errors for violation in schema_violations(error)]
    if policy is not None:
        # Also on parameters the schema refused: each check reads only what it can.
        violations += kind.validate(parameters, policy)
    if violations:
        raise InvalidArgument(violations)
