"""Manual runs and the overlap policy (`jobs run --no-overlap`), and skipped ticks kept out of
the default `executions list`, through `main(argv)` against a real server."""

from __future__ import annotations

from cronwire.cli import EXIT_CANCELLED
from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)
from tests.support import wait_for


def _states(cw: Run, *flags: str) -> list[str]:  # noqa: F811
    return sorted(e["state"] for e in cw("executions", "list", "--job", "slow", *flags, "-o", "json").json())


def test_a_manual_run_follows_the_schedules_overlap_policy_when_asked(cw: Run) -> None:  # noqa: F811
    assert cw("jobs", "create", "slow", "--shell", "--", "sleep", "30").code == 0
    assert (
        cw("schedules", "create", "hourly", "--job", "slow", "--every", "1h", "--overlap", "skip").code == 0
    )
    # Nothing of the schedule runs: the run queues.
    first = cw("jobs", "run", "slow", "--no-overlap")
    assert first.code == 0, first.err
    assert first.out.split()[1] == "QUEUED"
    cw("executions", "cancel", first.out.split()[0])

    # A backfill's ticks are runs of the schedule: while one is queued or running, a run that
    # respects the overlap policy (SKIP) is recorded SKIPPED and returned as such.
    assert cw("schedules", "backfill", "hourly", "--start", "-90m", "--end", "now").code == 0
    skipped = cw("jobs", "run", "slow", "--no-overlap")
    assert skipped.code == EXIT_CANCELLED, skipped.err
    name, state = skipped.out.split()[:2]
    assert state == "SKIPPED:"
    assert (
        "of schedule namespaces/default/schedules/hourly (overlap policy SKIP) is still running"
        in skipped.out
    )
    details = cw("executions", "get", name, "-o", "json").json()
    assert (details["state"], details["skip_reason"], details["trigger"]) == ("SKIPPED", "OVERLAP", "RUN_NOW")
    # Without the flag a manual run queues as before.
    plain = cw("jobs", "run", "slow")
    assert plain.out.split()[1] == "QUEUED"

    # The default listing leaves skipped runs out; --state skipped and --all-states show them.
    assert "SKIPPED" not in _states(cw)
    assert _states(cw, "--state", "skipped") == ["SKIPPED"]
    everything = _states(cw, "--all-states")
    assert "SKIPPED" in everything
    assert len(everything) == len(_states(cw)) + 1
    assert "SKIPPED" not in cw("executions", "list").out

    # Another policy leaves a manual run alone.
    assert cw("schedules", "update", "hourly", "--overlap", "allow-all").code == 0
    allowed = cw("jobs", "run", "slow", "--no-overlap")
    assert allowed.out.split()[1] == "QUEUED"
    for execution in cw("executions", "list", "--job", "slow", "-o", "json").json():
        if execution["state"] in ("QUEUED", "RUNNING"):
            cw("executions", "cancel", execution["name"])
    wait_for(lambda: not [s for s in _states(cw) if s in ("QUEUED", "RUNNING")], 30, "the runs to stop")
