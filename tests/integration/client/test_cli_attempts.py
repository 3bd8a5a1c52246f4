"""Attempts as the API counts them (`--max-attempts`, `--retries` as retries after the first), and
`executions get --wait` printing the view `executions get` prints."""

from __future__ import annotations

import re

from cronwire.cli import EXIT_FAILED, EXIT_USAGE
from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)


def _attempts(cw: Run, job: str) -> object:  # noqa: F811
    policy = cw("jobs", "get", job, "-o", "json").json()["retry_policy"]
    return policy["max_attempts"] if policy else None


def test_max_attempts_and_retries(cw: Run) -> None:  # noqa: F811
    assert cw("jobs", "create", "a", "--executor", "noop", "--max-attempts", "3").code == 0
    assert cw("jobs", "create", "r", "--executor", "noop", "--retries", "2").code == 0
    assert cw("jobs", "create", "once", "--executor", "noop", "--max-attempts", "1").code == 0
    assert (_attempts(cw, "a"), _attempts(cw, "r"), _attempts(cw, "once")) == (3, 3, None)

    shown = cw("jobs", "get", "r").out
    assert re.search(r"\nattempts: +3 \(2 retries\), backoff ", shown), shown
    assert re.search(r"\nattempts: +1 \(no retries\)\n", cw("jobs", "get", "once").out)
    listing = cw("jobs", "list", "-o", "wide").out.splitlines()
    assert "ATTEMPTS" in listing[0]
    assert "3 (2 retries)" in listing[1]

    assert cw("jobs", "update", "a", "--max-attempts", "5").code == 0
    assert _attempts(cw, "a") == 5
    assert cw("jobs", "update", "a", "--retries", "0").code == 0
    assert _attempts(cw, "a") is None

    zero = cw("jobs", "create", "z", "--executor", "noop", "--max-attempts", "0")
    assert zero.code == EXIT_USAGE
    assert "argument --max-attempts: must be at least 1, got 0" in zero.err
    both = cw("jobs", "create", "z", "--executor", "noop", "--max-attempts", "2", "--retries", "1")
    assert both.code == EXIT_USAGE
    assert "not allowed with argument" in both.err
    backoff = cw("jobs", "create", "z", "--executor", "noop", "--retry-backoff", "1s")
    assert backoff.code == EXIT_USAGE
    assert "--retry-backoff goes with --max-attempts or --retries" in backoff.err
    assert cw("jobs", "get", "z").code == 1  # nothing stored

    assert (
        cw(
            "jobs", "create", "ko", "--shell", "--max-attempts", "2", "--retry-backoff", "50ms", "--", "false"
        ).code
        == 0
    )
    failed = cw("jobs", "run", "ko", "--wait")
    assert failed.code == EXIT_FAILED
    assert "FAILED" in failed.err
    assert "after 2 attempts" in failed.err


def test_executions_get_wait_prints_the_get_view(cw: Run) -> None:  # noqa: F811
    assert cw("jobs", "create", "hi", "--shell", "--", "sh", "-c", "sleep 0.3; echo hi").code == 0
    name = cw("jobs", "run", "hi", "-o", "json").json()["name"]

    waited = cw("executions", "get", name, "--wait", "-o", "wide")
    assert waited.code == 0, waited.err
    shown = cw("executions", "get", name, "-o", "wide")
    assert waited.out == shown.out
    assert waited.out.startswith(f"name:          {name}\n")
    assert re.search(r"\nstate: +SUCCEEDED\n", waited.out)
    assert waited.out.endswith("output:\nhi\n")
    assert waited.err == ""
    assert (
        cw("executions", "get", name, "--wait", "-o", "json").json()
        == cw("executions", "get", name, "-o", "json").json()
    )
