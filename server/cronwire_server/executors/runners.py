"""The runners of a server: one per executor kind, made by the kind's record (`registry.KINDS`)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cronwire_server.executors.http_runner import HttpPolicy, HttpRunner
from cronwire_server.executors.jobuser import JobUser
from cronwire_server.executors.registry import KINDS, EntryPolicy, ExecutorPolicy
from cronwire_server.executors.runtime import Runner

__all__ = ["Runners", "runner_for"]


class Runners:
    """One runner per executor kind; `http` (jobs and callbacks) calls only what `policy` allows;
    `shell` and `python` jobs run as `user` (by default the server's own: see `jobuser`).

    Runners keep no state between runs, so one of each serves every execution.
    """

    def __init__(
        self,
        policy: HttpPolicy | None = None,
        *,
        user: JobUser | None = None,
        entry: EntryPolicy | None = None,
    ) -> None:
        self.policy = ExecutorPolicy(http=policy or HttpPolicy(), entry=entry or EntryPolicy(), user=user)
        self._by_kind: Mapping[str, Runner] = MappingProxyType(
            {name: kind.runner(self.policy) for name, kind in KINDS.items()}
        )
        http = self._by_kind["http"]
        assert isinstance(http, HttpRunner)
        # Completion callbacks are delivered by the http jobs' runner, under the same policy.
        self.http = http

    def runner_for(self, kind: str) -> Runner:
        """The runner of executor kind `kind` (`Job.executor`).

        LookupError for a kind without a runner in this server: the worker reports
        the execution FAILED with its message.
        """
        try:
            return self._by_kind[kind]
        except KeyError:
            raise LookupError(f"no runner for executor kind {kind!r}") from None


# Public addresses only.
_DEFAULT = Runners()


def runner_for(kind: str) -> Runner:
    """The runner of `kind` under the default policy (public addresses only)."""
    return _DEFAULT.runner_for(kind)
