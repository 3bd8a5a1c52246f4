"""A service that sets up its nightly job with the cronwire SDK, then runs it once and waits.

    python examples/create_job.py --server 127.0.0.1:50051

Safe to run again: an existing job or schedule is updated in place instead of failing.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import cronwire
from cronwire import CronTrigger, OverlapPolicy, RetryPolicy

ARGV = ["sh", "-c", "echo backing up; date -u"]
DESCRIPTION = "nightly backup of the app database"
TIMEOUT = timedelta(minutes=10)
RETRIES = RetryPolicy(max_attempts=3, initial_backoff=timedelta(seconds=30))


def ensure_job(client: cronwire.Client) -> cronwire.Job:
    """Create the job, or bring an existing one up to date."""
    try:
        return client.create_job(
            "backup",
            executor="shell",
            parameters={"argv": ARGV},
            description=DESCRIPTION,
            timeout=TIMEOUT,
            retry_policy=RETRIES,
        )
    except cronwire.AlreadyExists:
        current = client.get_job("backup")
        return client.update_job(  # guarded by the etag just read: a concurrent change fails
            current,
            executor="shell",
            parameters={"argv": ARGV},
            description=DESCRIPTION,
            timeout=TIMEOUT,
            retry_policy=RETRIES,
        )


def ensure_schedule(client: cronwire.Client, job: cronwire.Job) -> cronwire.Schedule:
    """03:00 Berlin time every night, never two runs at once."""
    trigger = CronTrigger("0 3 * * *")
    try:
        return client.create_schedule(
            "nightly",
            job=job,
            trigger=trigger,
            time_zone="Europe/Berlin",
            overlap_policy=OverlapPolicy.SKIP,
        )
    except cronwire.AlreadyExists:
        return client.update_schedule("nightly", trigger=trigger, time_zone="Europe/Berlin")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args()

    with cronwire.Client(args.server, namespace=args.namespace, timeout=10) as client:
        job = ensure_job(client)
        schedule = ensure_schedule(client, job)
        print(f"{job.name}: next run {schedule.next_fire_time:%Y-%m-%d %H:%M} UTC")

        # Run it now as well and wait for the outcome (retries included).
        try:
            execution = client.run(job, wait_timeout=timedelta(minutes=15))
        except cronwire.DeadlineExceeded as error:
            print(f"gave up waiting: {error}")
            return 2
        print(execution.output, end="")
        # SDK enums print as their names: "SUCCEEDED", "FAILED", ...
        print(f"{execution.name}: {execution.state} after {execution.attempt} attempt(s)")
        return 0 if execution.succeeded else 1


if __name__ == "__main__":
    raise SystemExit(main())
