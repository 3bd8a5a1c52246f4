"""The runner of each executor kind: what a worker calls to run an execution."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cronwire_server.executors.http_runner import HttpRunner
from cronwire_server.executors.noop import NoopRunner
from cronwire_server.executors.python_runner import PythonRunner
from cronwire_server.executors.runtime import Runner
from cronwire_server.executors.shell import ShellRunner

__all__ = ["runner_for"]

# Runners keep no state between runs, so one of each serves every execution.
# `http` refuses non-public addresses until the server passes an HttpPolicy.
_RUNNERS: Mapping[str, Runner] = MappingProxyType(
    {"shell": ShellRunner(), "python": PythonRunner(), "http": HttpRunner(), "noop": NoopRunner()}
)


def runner_for(kind: str) -> Runner:
    """The runner of executor kind `kind` (`Job.executor`).

    LookupError for a kind without a runner in this server: the worker reports
    the execution FAILED with its message.
    """
    try:
        return _RUNNERS[kind]
    except KeyError:
        raise LookupError(f"no runner for executor kind {kind!r}") from None
