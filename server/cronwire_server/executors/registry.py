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

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator, ValidationError

from cronwire_server.errors import FieldViolation, InvalidArgument
from cronwire_server.executors import kinds
from cronwire_server.executors.address_policy import HttpPolicy
from cronwire_server.executors.runtime import Runner

if TYPE_CHECKING:
    from cronwire_server.executors.jobuser import JobUser

__all__ = [
    "KINDS",
    "EntryPolicy",
    "ExecutorKind",
    "ExecutorPolicy",
    "all_kinds",
    "field_path",
    "get_kind",
    "validate_parameters",
]


def _violations(error: ValidationError) -> list[FieldViolation]:
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    instance = error.instance
    # Name the property itself rather than the object that lacks or has it.
    if error.validator == "required" and isinstance(instance, Mapping):
        for name in schema.get("required", ()):
            if name not in instance and error.message == f"{name!r} is a required property":
                return [FieldViolation(field_path([*path, name]), "required")]
    if (
        error.validator == "additionalProperties"
        and schema.get("additionalProperties") is False
        and isinstance(instance, Mapping)
    ):
        allowed = schema.get("properties", {})
        extra = [name for name in instance if name not in allowed]
        known = ", ".join(allowed)
        return [FieldViolation(field_path([*path, n]), f"unknown parameter; known: {known}") for n in extra]
    message = schema.get("errorMessage")
    return [FieldViolation(field_path(path), message if isinstance(message, str) else error.message)]


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(path: Iterable[str | int]) -> str:
    """`parameters.argv[0]`, `parameters.env["X-KEY"]`: the request path of a parameter."""
    text = "parameters"
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part)}]"
    return text


# Modules (and their submodules) a python job's `callable` may not name unless the server lists
# them in --python-path-allow: they run programs, run code given as text or files, load native
# code or change files and the interpreter. A deny list cannot know every installed package
# that can do so; --python-path-allow, which admits only the packages listed, is the real fence.
REFUSED_MODULES = frozenset(
    {
        "__main__",
        "asyncio",
        "bdb",
        "builtins",
        "code",
        "codeop",
        "concurrent",
        "cProfile",
        "cronwire",
        "cronwire_server",
        "ctypes",
        "dill",
        "distutils",
        "doctest",
        "ensurepip",
        "fcntl",
        "fileinput",
        "importlib",
        "imp",
        "io",
        "IPython",
        "jsonpickle",
        "logging.config",
        "marshal",
        "mmap",
        "multiprocessing",
        "nt",
        "os",
        "pathlib",
        "pdb",
        "pexpect",
        "pickle",
        "pip",
        "pkg_resources",
        "pkgutil",
        "platform",
        "posix",
        "profile",
        "pty",
        "runpy",
        "setuptools",
        "sh",
        "shelve",
        "shutil",
        "site",
        "socket",
        "subprocess",
        "sys",
        "tarfile",
        "tempfile",
        "termios",
        "timeit",
        "trace",
        "tty",
        "unittest",
        "venv",
        "webbrowser",
        "yaml",
        "zipfile",
        "zipimport",
    }
)


_IMPLEMENTED_BY = {"os": ("posix", "nt")}
_PYTHON = re.compile(r"[\w.+-]*(?:python|pypy)[0-9.]*")
# Interpreter variables that only change how output looks or bytecode is kept.
_HARMLESS_PYTHON_VARIABLES = frozenset(
    {"PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE"}
)


def _loads_code(name: str) -> bool:
    upper = name.upper()
    if upper.startswith("PYTHON"):
        return upper not in _HARMLESS_PYTHON_VARIABLES
    return upper.startswith("LD_") or upper == "BROWSER"


def _within(module: str, packages: Iterable[str]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


@dataclass(frozen=True)
class EntryPolicy:
    """Which modules a python job's `callable` (`module:function`) may name.

    With `allow` empty (the default) every module but the REFUSED_MODULES and private top-level
    ones (`_posixsubprocess`); with `allow`, only those packages and their submodules. The
    function's path never has a part starting with `_` (`tempfile:_os.system`). The run checks
    the same again, and also that no module reached through the path (`tasks:os.system`) is
    refused and that the function itself is not one of a refused module's.
    """

    allow: tuple[str, ...] = ()

    def permits_module(self, module: str) -> bool:
        if self.allow:
            return _within(module, self.allow)
        return not module.startswith("_") and not _within(module, REFUSED_MODULES)

    def refusal(self, spec: str) -> str | None:
        """Why `spec` may not be called; None if it may (a malformed spec is the schema's to report)."""
        module, _, path = spec.partition(":")
        if not module:
            return None
        if not self.permits_module(module):
            if self.allow:
                return f"module {module!r} is not under the packages python jobs may call: " + ", ".join(
                    self.allow
                )
            return (
                f"module {module!r} may not be called by python jobs (it can run programs or "
                "arbitrary code); the server's --python-path-allow lists the packages they may call"
            )
        if any(part.startswith("_") for part in path.split(".")):
            return f"{path!r}: a python job's function path may not have private (`_`) parts"
        return None

    def violations(self, parameters: Mapping[str, Any]) -> list[FieldViolation]:
        """What a python job's parameters may not do here, each naming its parameter: the
        `callable`'s module, an interpreter that is no Python, and environment variables that
        make the interpreter load other code (`PYTHONPATH`, `PYTHONSTARTUP`, `LD_PRELOAD`...)."""
        found: list[FieldViolation] = []
        spec = parameters.get("callable")
        if isinstance(spec, str) and (refusal := self.refusal(spec)) is not None:
            found.append(FieldViolation("parameters.callable", refusal))
        python = parameters.get("python")
        if isinstance(python, str) and not _PYTHON.fullmatch(python.rsplit("/", 1)[-1]):
            found.append(
                FieldViolation(
                    "parameters.python", "must be a Python interpreter (python, python3.12, pypy3...)"
                )
            )
        env = parameters.get("env")
        for name in env if isinstance(env, Mapping) else ():
            if _loads_code(str(name)):
                found.append(
                    FieldViolation(
                        field_path(["env", name]),
                        "may not be set for python jobs: it makes the interpreter load other code",
                    )
                )
        return found

    def to_json(self) -> dict[str, Any]:
        """What the child checks the modules it reaches with."""
        # os's functions belong to posix (or nt): allowing os allows them.
        implementations = [alias for package in self.allow for alias in _IMPLEMENTED_BY.get(package, ())]
        return {"allow": [*self.allow, *implementations], "refuse": sorted(REFUSED_MODULES)}


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
    example, its checks beyond the schema and its runner.

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
    ),
    ExecutorKind(
        name="noop",
        description="Does nothing but record its arguments; for trying schedules out.",
        parameters_schema=kinds.NOOP_SCHEMA,
        example=kinds.NOOP_EXAMPLE,
        runner=_noop_runner,
    ),
)


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
    violations = [violation for error in errors for violation in _violations(error)]
    if policy is not None:
        # Also on parameters the schema refused: each check reads only what it can.
        violations += kind.validate(parameters, policy)
    if violations:
        raise InvalidArgument(violations)
