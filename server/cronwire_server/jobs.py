"""Job rules: validation and the operations the JobService exposes."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import urlsplit

from cronwire_server.errors import FieldViolation, InvalidArgument
from cronwire_server.executors import registry
from cronwire_server.executors.registry import ExecutorKind
from cronwire_server.model import Job, Listing, Page, RetryPolicy
from cronwire_server.optimistic import read_modify_write
from cronwire_server.storage import Store

LABEL_KEY = re.compile(r"^[a-z]([a-z0-9_.-]{0,62})$")
MAX_DESCRIPTION = 2048
MAX_ATTEMPTS = 100


def job_name(namespace: str, job_id: str) -> str:
    return f"namespaces/{namespace}/jobs/{job_id}"


def _retry_violations(policy: RetryPolicy) -> list[FieldViolation]:
    found = []
    if not 1 <= policy.max_attempts <= MAX_ATTEMPTS:
        found.append(("max_attempts", f"must be between 0 and {MAX_ATTEMPTS}"))
    if policy.initial_backoff <= timedelta(0):
        found.append(("initial_backoff", "must be positive"))
    if policy.backoff_multiplier < 1:
        found.append(("backoff_multiplier", "must be at least 1"))
    if policy.max_backoff < policy.initial_backoff:
        found.append(("max_backoff", "must not be shorter than initial_backoff"))
    if not 0 <= policy.jitter <= 1:
        found.append(("jitter", "must be between 0 and 1"))
    return [FieldViolation(f"retry_policy.{field}", text) for field, text in found]


def validate_job(job: Job) -> None:
    """Raise InvalidArgument naming every bad field (paths relative to the Job message)."""
    violations: list[FieldViolation] = []
    try:
        registry.validate_parameters(job.executor, job.parameters)
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
    for index, dependent in enumerate(job.dependents):
        if dependent.job_id == job.id:
            violations.append(FieldViolation(f"dependents[{index}].job", "a job cannot depend on itself"))
    if job.callback is not None:
        url = urlsplit(job.callback.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            violations.append(FieldViolation("callback.url", "must be an absolute http or https URL"))
    for key in job.labels:
        if not LABEL_KEY.match(key):
            violations.append(
                FieldViolation(f"labels[{key!r}]", "keys are 1-63 lowercase letters, digits, _ . -")
            )
    if violations:
        raise InvalidArgument(violations)


class JobManager:
    """The job operations, over a Store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create(self, job: Job, *, request_id: str = "") -> Job:
        validate_job(job)
        return await self._store.create_job(job, request_id=request_id)

    async def get(self, namespace: str, job_id: str) -> Job:
        return await self._store.get_job(namespace, job_id)

    async def list_page(self, namespace: str, page: Page, *, executor: str = "") -> Listing[Job]:
        return await self._store.list_jobs(namespace, page, executor=executor)

    async def update(
        self, namespace: str, job_id: str, change: Callable[[Job], Job], *, expected_etag: str = ""
    ) -> Job:
        def checked(current: Job) -> Job:
            updated = change(current)
            validate_job(updated)
            return updated

        return await read_modify_write(
            lambda: self._store.get_job(namespace, job_id),
            lambda job, etag: self._store.update_job(job, expected_etag=etag),
            checked,
            kind="job",
            name=job_name(namespace, job_id),
            expected_etag=expected_etag,
        )

    async def delete(self, namespace: str, job_id: str, *, expected_etag: str = "") -> None:
        await self._store.delete_job(namespace, job_id, expected_etag=expected_etag)

    @staticmethod
    def types() -> list[ExecutorKind]:
        return registry.all_kinds()
