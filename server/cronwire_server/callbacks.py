"""Completion callbacks: a signed JSON POST to the job's webhook when an execution ends.

The payload is documented in README ("Completion callbacks"). With a secret, the
`X-Cronwire-Signature` header is `sha256=` and the hex HMAC-SHA256 of the raw
body under that secret, so receivers can check it came from this server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cronwire_server.core.model import Execution, ExecutionState, Job
from cronwire_server.executors.http_runner import HttpRunner
from cronwire_server.executors.runtime import RunRequest

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
FIRST_BACKOFF = timedelta(seconds=1)
TIMEOUT = timedelta(seconds=10)
RESPONSE_BYTES = 4096
SIGNATURE_HEADER = "X-Cronwire-Signature"


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def payload(job: Job, execution: Execution) -> dict[str, Any]:
    return {
        "job": job.name,
        "execution": execution.name,
        "schedule": execution.schedule_name or None,
        "state": execution.state.name,
        "attempt": execution.attempt,
        "scheduled_time": _time(execution.scheduled_time),
        "start_time": _time(execution.start_time),
        "end_time": _time(execution.end_time),
        "exit_code": execution.exit_code,
        "http_status": execution.http_status,
        "error": execution.error,
    }


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    http_status: int | None = None
    error: str = ""

    @property
    def reason(self) -> str:
        """Why the call was not a delivery, for people: `HTTP 500: ...`, or the error."""
        code = self.http_status
        status = f"HTTP {code}" if code is not None and str(code) not in self.error else ""
        return ": ".join(part for part in (status, self.error) if part) or "no answer"


async def deliver(job: Job, execution: Execution, http: HttpRunner) -> Attempt:
    """POST the payload once, through the http runner (its address policy, timeouts and
    pinned addresses apply); a 2xx answer is a delivery."""
    assert job.callback is not None
    body = json.dumps(payload(job, execution), separators=(",", ":"))
    headers = {"Content-Type": "application/json"}
    if job.callback.secret:
        headers[SIGNATURE_HEADER] = signature(job.callback.secret, body.encode())
    request = RunRequest(
        execution_name=execution.name,
        job_name=job.name,
        parameters={"url": job.callback.url, "method": "POST", "headers": headers, "body": body},
        arguments={},
        scheduled_time=execution.scheduled_time,
        attempt=execution.attempt,
        timeout=TIMEOUT,
        capture_bytes=RESPONSE_BYTES,
    )
    outcome = await http.run(request, asyncio.Event())
    delivered = outcome.state is ExecutionState.SUCCEEDED
    # The worker logs the attempt, with this reason and what happens next.
    return Attempt(delivered, outcome.http_status, "" if delivered else outcome.error)


def next_attempt_time(attempts_made: int, now: datetime) -> datetime | None:
    """When to try again after `attempts_made` failed attempts; None: give up."""
    if attempts_made >= MAX_ATTEMPTS:
        return None
    delay: timedelta = FIRST_BACKOFF * (2 ** (attempts_made - 1))
    return now + delay
