"""Attempts reported as they happen: `jobs run --wait` in the CLI, `on_attempt` in the SDK."""

from __future__ import annotations

import re
from datetime import timedelta

import cronwire
from cronwire import ExecutionState
from cronwire.cli import EXIT_FAILED
from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)


def test_run_wait_reports_each_attempt(cw: Run) -> None:  # noqa: F811
    created = cw(
        "jobs", "create", "ko", "--shell-command", "echo try; exit 3",
        "--max-attempts", "2", "--retry-backoff", "100ms",
    )  # fmt: skip
    assert created.code == 0, created.err
    run = cw("jobs", "run", "ko", "--wait")
    assert run.code == EXIT_FAILED
    assert run.out == "try\ntry\n"  # each attempt's output, as it comes
    first, last = run.err.splitlines()
    assert re.fullmatch(r"cronwire: attempt 1 failed \(exit 3\); retrying (now|in \d+s) \(attempt 2\)", first)
    assert re.fullmatch(
        r"execution namespaces/default/executions/\w+ FAILED in [\d.]+s \(exit code 3\) after 2 attempts",
        last,
    )


def test_sdk_run_calls_on_attempt_for_each_attempt(client: cronwire.Client) -> None:
    job = client.create_job(
        "ko",
        executor="shell",
        parameters={"argv": ["sh", "-c", "echo try; exit 3"]},
        retry_policy=cronwire.RetryPolicy(max_attempts=2, initial_backoff=timedelta(milliseconds=100)),
    )
    seen: list[tuple[cronwire.Execution, cronwire.Execution | None]] = []
    ended = client.run(job, on_attempt=lambda attempt, retry: seen.append((attempt, retry)))
    assert [(a.attempt, a.state, a.output) for a, _ in seen] == [
        (1, ExecutionState.FAILED, "try\n"),
        (2, ExecutionState.FAILED, "try\n"),
    ]
    first_retry = seen[0][1]
    assert first_retry is not None
    assert first_retry.name == seen[1][0].name
    assert seen[1][1] is None
    assert ended.name == seen[1][0].name
