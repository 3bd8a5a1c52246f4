"""`cronwire executions cancel` cancels the run, waits for its end and prints the final state."""

from __future__ import annotations

from pathlib import Path

from cronwire.cli import EXIT_WAIT_TIMEOUT
from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)
from tests.support import wait_for


def _attempts(cw: Run, job: str) -> dict[int, dict[str, object]]:  # noqa: F811
    return {e["attempt"]: e for e in cw("executions", "list", "--job", job, "-o", "json").json()}


def test_cancel_of_an_ended_attempt_stops_the_running_retry_and_prints_the_end(
    cw: Run,  # noqa: F811
    tmp_path: Path,
) -> None:
    marker = tmp_path / "tried"
    script = f'if [ -e "{marker}" ]; then exec sleep 60; fi; touch "{marker}"; exit 1'
    created = cw(
        "jobs", "create", "second-sleeps", "--shell-command", script,
        "--max-attempts", "3", "--retry-backoff", "100ms",
    )  # fmt: skip
    assert created.code == 0, created.err
    first = cw("jobs", "run", "second-sleeps", "-o", "json").json()["name"]
    running = wait_for(
        lambda: (a := _attempts(cw, "second-sleeps")).get(2, {}).get("state") == "RUNNING" and a,
        15,
        "attempt 2 to run",
    )
    retry = running[2]["name"]

    cancelled = cw("executions", "cancel", first.split("/")[-1], "--reason", "not today")
    assert cancelled.code == 0, cancelled.err
    assert f"cancelling attempt 2 of this run: {retry}" in cancelled.err
    # The final state, not "RUNNING" while the worker stops it.
    assert "CANCELLED" in cancelled.out, cancelled.out
    assert "RUNNING" not in cancelled.out, cancelled.out
    assert retry.split("/")[-1] in cancelled.out
    as_json = cw("executions", "get", retry, "-o", "json").json()
    assert as_json["state"] == "CANCELLED"
    assert {n: e["state"] for n, e in _attempts(cw, "second-sleeps").items()} == {1: "FAILED", 2: "CANCELLED"}


def test_cancel_wait_is_bounded(cw: Run) -> None:  # noqa: F811
    # A run that ignores the stop for a while: the command gives up waiting and says so.
    created = cw("jobs", "create", "stubborn", "--shell-command", "trap '' TERM; sleep 20 & wait; sleep 20")
    assert created.code == 0, created.err
    name = cw("jobs", "run", "stubborn", "-o", "json").json()["name"]
    wait_for(
        lambda: cw("executions", "get", name, "-o", "json").json()["state"] == "RUNNING", 15, "it to run"
    )
    result = cw("executions", "cancel", name, "--wait-seconds", "0.5")
    assert result.code == EXIT_WAIT_TIMEOUT, (result.out, result.err)
    assert "has not stopped after 0.5s" in result.err
