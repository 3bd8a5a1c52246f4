"""Job rules: validation and the operations the JobService exposes."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from urllib.parse import urlsplit

from cronwire_server.auth.principal import current_actor
from cronwire_server.config import Settings
from cronwire_server.core.arguments import check_schema
from cronwire_server.core.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from cronwire_server.core.fanout import fan_outs
from cronwire_server.core.model import ExecutionStats, Job, Listing, Page, RetryPolicy
from cronwire_server.core.names import job_name
from cronwire_server.core.optimistic import read_modify_write
from cronwire_server.core.schedules import shown
from cronwire_server.executors import registry
from cronwire_server.executors.address_policy import literal_address
from cronwire_server.executors.http_runner import check_url
from cronwire_server.executors.registry import ExecutorKind, ExecutorPolicy
from cronwire_server.secrets import Secrets, has_references
from cronwire_server.storage import Store

# Job chains are followed this far when looking for a cycle.
MAX_CHAIN_LOOKUPS = 1000
LABEL_KEY = re.compile(r"^[a-z]([a-z0-9_.-]{0,62})$")
MAX_DESCRIPTION = 2048
MAX_ATTEMPTS = 100
# How long CreateJob/UpdateJob wait for the callback's host name to resolve.
CALLBACK_RESOLVE_TIMEOUT = timedelta(seconds=2)
# The default of the server's --max-fan-out.
DEFAULT_MAX_FAN_OUT = Settings.max_fan_out
# Jobs per page when the fan-out check lists a namespace.
FAN_OUT_PAGE = 1000


def _retry_violations(policy: RetryPolicy) -> list[FieldViolation]:
    found = []
    if not 1 <= policy.max_attempts <= MAX_ATTEMPTS:
        found.append(("max_attempts", f"must be between 0 and {MAX_ATTEMPTS}"))
    if policy.initial_backoff <= timedelta(0):
        found.append(("initial_backoff", "must be positive"))
    # Written so that NaN fails too (every comparison with NaN is false).
    if not 1 <= policy.backoff_multiplier < math.inf:
        found.append(("backoff_multiplier", "must be a finite number of at least 1"))
    if policy.max_backoff < policy.initial_backoff:
        found.append(("max_backoff", "must not be shorter than initial_backoff"))
    if not 0 <= policy.jitter <= 1:
        found.append(("jitter", "must be between 0 and 1"))
    return [FieldViolation(f"retry_policy.{field}", text) for field, text in found]


def validate_job(job: Job, policy: ExecutorPolicy | None = None) -> None:
    """Raise InvalidArgument naming every bad field (paths relative to the Job message).

    The parameters are checked by their executor kind's record under `policy` (an http job's
    URL, a python job's entry point); callback URLs against its HTTP policy as far as that is
    possible without DNS; the http runner checks the resolved addresses again when it sends.
    """
    policy = policy or ExecutorPolicy()
    violations: list[FieldViolation] = []
    try:
        registry.validate_parameters(job.executor, job.parameters, policy)
    except InvalidArgument as error:
        violations.extend(error.violations)
    if len(job.description) > MAX_DESCRIPTION:
        violations.append(FieldViolation("description", f"must be at most {MAX_DESCRIPTION} characters"))
    if job.timeout is not None and job.timeout < timedelta(0):
        violations.append(FieldViolation("timeout", "must not be negative"))
    if job.retry_policy is not None:
        violations.extend(_retry_violations(job.retry_policy))
    if job.max_concurrency < 0:
        violations.append(FieldViolation("max_concurrency", "must not be negative"))
    if job.execution_retention is not None:
        if job.execution_retention.count < 0:
            violations.append(FieldViolation("execution_retention.max_count", "must not be negative"))
        if job.execution_retention.max_age is not None and job.execution_retention.max_age < timedelta(0):
            violations.append(FieldViolation("execution_retention.max_age", "must not be negative"))
    for index, dependent in enumerate(job.dependents):
        if dependent.job_id == job.id:
            violations.append(FieldViolation(f"dependents[{index}].job", "a job cannot depend on itself"))
    if job.callback is not None:
        url = urlsplit(job.callback.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            violations.append(FieldViolation("callback.url", "must be an absolute http or https URL"))
        elif (refusal := check_url(job.callback.url, policy.http)) is not None:
            violations.append(FieldViolation("callback.url", refusal))
    try:
        check_schema(job.arguments_schema)
    except InvalidArgument as error:
        violations.extend(error.violations)
    for key in job.labels:
        if not LABEL_KEY.match(key):
            violations.append(
                FieldViolation(f"labels[{key!r}]", "keys are 1-63 lowercase letters, digits, _ . -")
            )
    if violations:
        raise InvalidArgument(violations)


class JobManager:
    """The job operations, over a Store."""

    def __init__(
        self,
        store: Store,
        policy: ExecutorPolicy | None = None,
        *,
        max_per_namespace: int = 0,
        secrets: Secrets | None = None,
        max_fan_out: int = DEFAULT_MAX_FAN_OUT,
    ) -> None:
        self._store = store
        self._policy = policy
        self._max_per_namespace = max_per_namespace
        # Executions one run of a job may lead to through dependents (0: no limit).
        self._max_fan_out = max_fan_out
        # Without it, references are checked when the job runs only.
        self._secrets = secrets

    async def create(self, job: Job, *, request_id: str = "") -> Job:
        validate_job(job, self._policy)
        await self._verify(job)
        return await self._store.create_job(
            job, request_id=request_id, limit=self._max_per_namespace, actor=current_actor()
        )

    async def check_create(self, job: Job) -> Job:
        """The job `create` would store, checked as `create` checks it; nothing is stored
        (AIP-163 validate_only). ALREADY_EXISTS when the id is taken."""
        validate_job(job, self._policy)
        await self._verify(job)
        try:
            await self._store.get_job(job.namespace, job.id)
        except NotFound:
            now = await self._store.now()
            return dataclasses.replace(job, create_time=now, update_time=now)
        raise AlreadyExists("job", job_name(job.namespace, job.id))

    async def get(self, namespace: str, job_id: str) -> Job:
        """The job with its statistics (one statement: they are counters kept with it; a second
        reads its schedules that name calendars, when one of them may run first)."""
        job = await self._store.get_job(namespace, job_id, with_stats=True)
        return (await self._with_next_runs(namespace, [job]))[0]

    async def _with_next_runs(self, namespace: str, listed: list[Job]) -> list[Job]:
        """`listed` with `stats.next_run_time` the next tick that really runs: the store leaves
        out the schedules that name calendars (their stored tick may be one a calendar excludes);
        those whose stored tick comes first are read (one statement for all the jobs) and their
        exclusions stepped over (`shown`), which only ever puts a tick later."""
        never = datetime.max.replace(tzinfo=UTC)

        def plain(stats: ExecutionStats) -> datetime:
            return stats.next_run_time or never

        waiting = {
            job.id: job.stats
            for job in listed
            if job.stats is not None
            and job.stats.calendar_next_run_time is not None
            and job.stats.calendar_next_run_time < plain(job.stats)
        }
        if not waiting:
            return listed
        bound = max(plain(stats) for stats in waiting.values())
        found = await self._store.schedules_with_calendars(
            namespace, sorted(waiting), None if bound == never else bound
        )
        earliest = {job_id: plain(stats) for job_id, stats in waiting.items()}
        for schedule in found:
            stored = schedule.next_fire_time
            if stored is None or stored >= earliest[schedule.job_id]:
                continue  # no earlier than a tick that runs anyway: nothing to compute
            runs = shown(schedule).next_fire_time
            if runs is not None and runs < earliest[schedule.job_id]:
                earliest[schedule.job_id] = runs
        return [
            dataclasses.replace(
                job,
                stats=dataclasses.replace(
                    job.stats, next_run_time=None if earliest[job.id] == never else earliest[job.id]
                ),
            )
            if job.stats is not None and job.id in waiting
            else job
            for job in listed
        ]

    async def _refuse_cycles(self, job: Job) -> None:
        """INVALID_ARGUMENT if following dependents from `job` leads back to it.

        Dependents that do not exist (yet) end a path: a cycle closed later is refused then.
        """
        stack = [(d.job_id, [job.id, d.job_id], index) for index, d in enumerate(job.dependents)]
        seen: set[str] = set()
        while stack and len(seen) < MAX_CHAIN_LOOKUPS:
            current, path, index = stack.pop()
            if current == job.id:
                raise InvalidArgument.field(f"dependents[{index}].job", "makes a cycle: " + " -> ".join(path))
            if current in seen:
                continue
            seen.add(current)
            try:
                child = await self._store.get_job(job.namespace, current)
            except NotFound:
                continue
            stack += [(d.job_id, [*path, d.job_id], index) for d in child.dependents]

    async def _refuse_fan_out(self, job: Job) -> None:
        """INVALID_ARGUMENT naming `dependents` when, with `job` as given, one run of it or of a job
        that reaches it through dependents would lead to more than --max-fan-out executions.

        A job without dependents leads to its own run only, the least it can: nothing grows, nothing
        is read. Otherwise the namespace's jobs are listed once (their number is bounded by
        --max-jobs-per-namespace) and the counts computed in one memoised pass.
        """
        limit = self._max_fan_out
        if not limit or not job.dependents:
            return
        graph: dict[str, list[str]] = {}
        page = Page(size=FAN_OUT_PAGE)
        while True:
            listing = await self._store.list_jobs(job.namespace, page)
            for other in listing.items:
                if other.dependents:
                    graph[other.id] = [d.job_id for d in other.dependents]
            if listing.next_after is None:
                break
            page = Page(size=FAN_OUT_PAGE, after=listing.next_after)
        graph[job.id] = [d.job_id for d in job.dependents]
        # The jobs whose runs can reach this one: a change here changes their counts too.
        parents: dict[str, list[str]] = {}
        for parent, children in graph.items():
            for child in children:
                parents.setdefault(child, []).append(parent)
        ancestors: list[str] = []
        seen, pending = {job.id}, [job.id]
        while pending:
            for parent in parents.get(pending.pop(), ()):
                if parent not in seen:
                    seen.add(parent)
                    ancestors.append(parent)
                    pending.append(parent)
        counts = fan_outs(graph, [job.id, *sorted(ancestors)])
        if counts[job.id] > limit:
            raise InvalidArgument.field(
                "dependents",
                f"one run of job {job.id!r} would lead to {counts[job.id]} executions through its "
                f"dependents (every path counted), more than {limit} (the server's --max-fan-out)",
            )
        for ancestor in sorted(ancestors):
            if counts[ancestor] > limit:
                raise InvalidArgument.field(
                    "dependents",
                    f"with this change one run of job {ancestor!r}, which reaches {job.id!r} through "
                    f"dependents, would lead to {counts[ancestor]} executions (every path counted), more "
                    f"than {limit} (the server's --max-fan-out)",
                )

    async def list_page(self, namespace: str, page: Page, *, executor: str = "") -> Listing[Job]:
        listing = await self._store.list_jobs(namespace, page, executor=executor, with_stats=True)
        return dataclasses.replace(listing, items=await self._with_next_runs(namespace, listing.items))

    async def update(
        self,
        namespace: str,
        job_id: str,
        change: Callable[[Job], Job],
        *,
        expected_etag: str = "",
        validate_only: bool = False,
    ) -> Job:
        """With `validate_only`, everything is checked and the updated job returned unstored."""
        actor = current_actor()

        def checked(current: Job) -> Job:
            updated = change(current)
            validate_job(updated, self._policy)
            return updated

        return await read_modify_write(
            lambda: self._store.get_job(namespace, job_id),
            _unstored
            if validate_only
            else (lambda j, etag: self._store.update_job(j, expected_etag=etag, actor=actor)),
            checked,
            kind="job",
            name=job_name(namespace, job_id),
            expected_etag=expected_etag,
            verify=self._verify,
        )

    async def _verify(self, job: Job) -> None:
        await self._refuse_cycles(job)
        await self._refuse_fan_out(job)
        await self._refuse_foreign_secrets(job)
        await self._refuse_resolved_callback(job)

    async def _refuse_resolved_callback(self, job: Job) -> None:
        """INVALID_ARGUMENT when the callback's host name resolves to an address the HTTP policy
        refuses (a literal address is checked by `validate_job`). A name that does not resolve
        within CALLBACK_RESOLVE_TIMEOUT is accepted: the address is checked again at each send."""
        if job.callback is None:
            return
        host = urlsplit(job.callback.url).hostname
        if not host or literal_address(host) is not None:
            return
        http = (self._policy or ExecutorPolicy()).http
        if http.allow_private:
            return
        try:
            async with asyncio.timeout(CALLBACK_RESOLVE_TIMEOUT.total_seconds()):
                found = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError, UnicodeError):
            return
        for *_, sockaddr in found:
            try:
                address = ip_address(str(sockaddr[0]).split("%", 1)[0])
            except ValueError:
                continue
            if (refusal := http.refusal(address)) is not None:
                raise InvalidArgument.field("callback.url", f"{host} resolves to {address}: {refusal}")

    async def _refuse_foreign_secrets(self, job: Job) -> None:
        """INVALID_ARGUMENT naming each reference to a secret the job's namespace may not use."""
        if self._secrets is None or not has_references(job.parameters):
            return
        # Off the event loop: it may read the secrets file.
        refused = await asyncio.to_thread(self._secrets.refusals, job.parameters, job.namespace)
        if refused:
            raise InvalidArgument(
                [FieldViolation(registry.field_path([field, key]), why) for field, key, why in refused]
            )

    async def delete(self, namespace: str, job_id: str, *, expected_etag: str = "") -> None:
        await self._store.delete_job(namespace, job_id, expected_etag=expected_etag, actor=current_actor())

    @staticmethod
    def types() -> list[ExecutorKind]:
        return registry.all_kinds()


async def _unstored(job: Job, etag: str) -> Job:
    """The write of a validate_only update: the job as it would be stored, nothing written."""
    return job
