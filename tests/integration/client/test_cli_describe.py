"""`jobs describe`, `schedules describe`, the job list's run columns, ages in tables and cut lists,
through the CLI entry point against a real server."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cronwire._output import age
from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)
from tests.support import wait_for


def _state(cw: Run, name: str) -> str:  # noqa: F811
    return str(cw("executions", "get", name, "-o", "json").json()["state"])


def test_ages() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert age(now - timedelta(minutes=3, seconds=59), now) == "3m ago"
    assert age(now + timedelta(hours=2, minutes=5), now) == "in 2h"
    assert age(now - timedelta(days=3), now) == "3d ago"
    assert age(now - timedelta(seconds=12), now) == "12s ago"
    assert age(now, now) == "just now"


def test_jobs_describe(cw: Run, tmp_path: Path) -> None:  # noqa: F811
    ok, hold = tmp_path / "ok", tmp_path / "hold"
    command = f"while [ -e {hold} ]; do sleep 0.05; done; test -e {ok}"
    assert cw("jobs", "create", "backup", "--shell-command", command).code == 0
    assert cw("schedules", "create", "nightly", "--job", "backup", "--cron", "0 3 * * *").code == 0

    assert cw("jobs", "run", "backup", "--wait").code == 3  # FAILED
    ok.touch()
    assert cw("jobs", "run", "backup", "--wait").code == 0
    hold.touch()
    running = cw("jobs", "run", "backup", "-o", "json").json()["name"]
    wait_for(lambda: _state(cw, running) == "RUNNING", 30, "the run to start")

    described = cw("jobs", "describe", "backup")
    assert described.code == 0, described.err
    text = described.out
    assert "name:            namespaces/default/jobs/backup" in text
    assert re.search(r"\n  runs: +3 \(1 succeeded, 1 failed\)\n", text), text
    assert re.search(r"\n  success rate: +50% ", text), text
    assert re.search(r"\n  last run: +RUNNING \d{4}-\d\d-\d\dT[\d:]+Z \((just now|\d+s ago)\)\n", text), text
    assert re.search(r"\n  median duration: +\d", text), text
    schedules = text.split("\nschedules:\n")[1].split("\n\n")[0].splitlines()
    assert schedules[0].split() == ["NAME", "TRIGGER", "TIME", "ZONE", "PAUSED", "NEXT", "FIRE"]
    assert re.match(r"  nightly +cron 0 3 \* \* \* +UTC +no +in \d+(h|m|s)$", schedules[1]), schedules
    active = text.split("\nrunning or queued:\n")[1].split("\n\n")[0]
    assert running.split("/")[-1] in active
    assert "RUNNING" in active
    recent = text.split("\nlast 3 runs:\n")[1].splitlines()
    assert [line.split()[2] for line in recent[1:]] == ["RUNNING", "SUCCEEDED", "FAILED"]

    document = cw("jobs", "describe", "backup", "-o", "json").json()
    assert set(document) == {"job", "schedules", "active", "recent"}
    assert document["job"]["stats"]["total"] == 3
    assert [s["name"] for s in document["schedules"]] == ["namespaces/default/schedules/nightly"]
    assert [e["name"] for e in document["active"]] == [running]
    assert len(document["recent"]) == 3

    hold.unlink()
    wait_for(lambda: _state(cw, running) == "SUCCEEDED", 30, "the held run to end")
    assert "running or queued:\n  none\n" in cw("jobs", "describe", "backup").out
    missing = cw("jobs", "describe", "nope")
    assert missing.code == 1
    assert "JOB_NOT_FOUND" in missing.err


def test_jobs_list_run_columns_and_ages(cw: Run) -> None:  # noqa: F811
    assert cw("jobs", "create", "ok", "--shell", "--", "true").code == 0
    assert cw("jobs", "create", "idle", "--executor", "noop").code == 0
    assert cw("schedules", "create", "hourly", "--job", "ok", "--cron", "@hourly").code == 0
    assert cw("jobs", "run", "ok", "--wait").code == 0

    listing = cw("jobs", "list")
    header, *rows = listing.out.splitlines()
    assert re.split(r"\s{2,}", header)[:5] == ["NAME", "EXECUTOR", "LAST RUN", "NEXT RUN", "SUCCESS %"]
    cells = {re.split(r"\s{2,}", row)[0]: re.split(r"\s{2,}", row)[1:5] for row in rows}
    assert cells["idle"][1:4] == ["-", "-", "-"]
    # The server may leave a listed job's stats out: then the columns say `-`, never a guess.
    stats = {j["name"].split("/")[-1]: j["stats"] for j in cw("jobs", "list", "-o", "json").json()}
    if stats["ok"] is None:
        assert cells["ok"][1:4] == ["-", "-", "-"]
    else:
        assert re.fullmatch(r"SUCCEEDED (just now|\d+s ago)", cells["ok"][1]), cells
        assert re.fullmatch(r"in \d+(m|s)", cells["ok"][2]), cells
        assert cells["ok"][3] == "100%"

    # Tables show ages; -o wide (like json) exact times.
    table = cw("executions", "list").out.splitlines()[1]
    assert re.search(r"  (just now|\d+s ago)  ", table), table
    wide = cw("executions", "list", "-o", "wide").out.splitlines()[1]
    assert re.search(r"  \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  ", wide), wide
    assert "ago" not in wide
    got = cw("schedules", "get", "hourly").out
    assert re.search(r"next fire: +\d{4}-\d\d-\d\dT\d\d:00:00Z \(in \d+(m|s)\)\n", got), got


def test_cut_lists_say_so(cw: Run) -> None:  # noqa: F811
    for name in ("a", "b", "c"):
        assert cw("jobs", "create", name, "--executor", "noop").code == 0
    cut = cw("jobs", "list", "--limit", "2")
    assert [line.split()[0] for line in cut.out.splitlines()[1:]] == ["a", "b"]
    assert cut.err == "2 jobs shown; more with --limit N or --all\n"
    whole = cw("jobs", "list", "--limit", "3")
    assert (len(whole.out.splitlines()), whole.err) == (4, "")
    every = cw("jobs", "list", "--all", "-o", "json")
    assert (len(every.json()), every.err) == (3, "")
    for _ in range(2):
        assert cw("jobs", "run", "a").code == 0
    runs = cw("executions", "list", "--limit", "1", "-o", "json")
    assert len(runs.json()) == 1
    assert runs.err == "1 execution shown; more with --limit N or --all\n"
    assert cw("executions", "list", "--all").err == ""
    assert cw("jobs", "list", "--all", "--limit", "2").code == 2


def test_schedules_describe(cw: Run) -> None:  # noqa: F811
    assert cw("jobs", "create", "slow", "--shell", "--", "sleep", "1.5").code == 0
    assert cw("schedules", "create", "often", "--job", "slow", "--every", "1s", "--overlap", "skip").code == 0

    def skipped() -> bool:
        listed = cw("executions", "list", "--schedule", "often", "--state", "skipped", "-o", "json")
        return len(listed.json()) >= 1

    wait_for(skipped, 30, "a tick skipped for overlap")
    assert cw("schedules", "pause", "often").code == 0

    described = cw("schedules", "describe", "often")
    assert described.code == 0, described.err
    text = described.out
    assert "name:            namespaces/default/schedules/often" in text
    assert re.search(r"\n  skipped ticks: +(\d+) \(overlap \1\)\n", text), text
    assert re.search(r"\n  runs: +\d+ ", text), text
    fire = text.split("\nnext 5 fire times:\n")[1].split("\n\n")[0].splitlines()
    assert fire[0].split()[:6] == ["FIRE", "TIME", "(UTC)", "LOCAL", "TIME", "(UTC)"]
    assert len(fire) == 6
    recent = text.split("\nlast ")[1].splitlines()
    assert all("SKIPPED" not in line for line in recent[2:])  # counted, not listed among the runs

    document = cw("schedules", "describe", "often", "-o", "json").json()
    assert set(document) == {
        "schedule",
        "last_incident",
        "next_fire_times",
        "skipped_ticks",
        "active",
        "recent",
    }
    assert document["last_incident"] is None
    counted = document["skipped_ticks"]
    assert counted["total"] >= 1
    assert counted["by_reason"] == {"OVERLAP": counted["total"]}
    assert len(document["next_fire_times"]) == 5
    assert all(e["state"] != "SKIPPED" for e in document["recent"])
