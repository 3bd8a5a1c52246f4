"""The storage interface the rest of the server programs against."""

from __future__ import annotations

from typing import Protocol

from cronwire_server.model import Job, Listing, Page, Schedule


class Store(Protocol):
    """Durable state. Every method is one transaction; errors are `cronwire_server.errors` types.

    Output-only fields (`create_time`, `update_time`, `etag`) are set here; the
    objects passed in are not modified, the stored versions are returned.
    """

    async def close(self) -> None:
        """Release the connection pool."""

    async def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers."""

    # Jobs

    async def create_job(self, job: Job, *, request_id: str = "") -> Job:
        """Insert a job. AlreadyExists if the id is taken in its namespace.

        A non-empty `request_id` seen before in the namespace returns the job
        that request created (as it is now) instead of inserting.
        """

    async def get_job(self, namespace: str, job_id: str) -> Job:
        """The job, or NotFound."""

    async def list_jobs(self, namespace: str, page: Page, *, executor: str = "") -> Listing[Job]:
        """Jobs in id order after `page.after`, at most `page.size`; only `executor` kind if given."""

    async def update_job(self, job: Job, *, expected_etag: str) -> Job:
        """Replace the job's fields, if its etag is still `expected_etag` (checked in the UPDATE).

        NotFound if it is gone, EtagMismatch if it changed.
        """

    async def delete_job(self, namespace: str, job_id: str, *, expected_etag: str = "") -> None:
        """Delete the job and its schedules. NotFound; EtagMismatch if `expected_etag` is stale."""

    # Schedules

    async def create_schedule(self, schedule: Schedule, *, request_id: str = "") -> Schedule:
        """Insert a schedule. NotFound if its job does not exist, AlreadyExists if the id is taken.

        `request_id` as for create_job.
        """

    async def get_schedule(self, namespace: str, schedule_id: str) -> Schedule:
        """The schedule, or NotFound."""

    async def list_schedules(self, namespace: str, page: Page, *, job_id: str = "") -> Listing[Schedule]:
        """Schedules in id order after `page.after`, at most `page.size`; only `job_id`'s if given."""

    async def update_schedule(self, schedule: Schedule, *, expected_etag: str) -> Schedule:
        """Replace the schedule's fields (paused state and next fire time included) if its etag is
        still `expected_etag`. NotFound; EtagMismatch."""

    async def delete_schedule(self, namespace: str, schedule_id: str, *, expected_etag: str = "") -> None:
        """Delete the schedule. NotFound; EtagMismatch if `expected_etag` is stale."""
