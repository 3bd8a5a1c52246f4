"""`cronwire apply` checked by the server first (AIP-163 validate_only), through `main(argv)` and
the SDK, against a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import cronwire
from cronwire import CronTrigger, IntervalTrigger
from cronwire.cli import main
from tests.integration.client.conftest import ThreadedServer
from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)


def _write(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def test_validate_only_checks_everything_and_stores_nothing(client: cronwire.Client) -> None:
    checked = client.create_job(
        "backup", executor="shell", parameters={"argv": ["echo", "hi"]}, validate_only=True
    )
    assert checked.name == "namespaces/test/jobs/backup"
    assert checked.parameters == {"argv": ["echo", "hi"]}
    with pytest.raises(cronwire.NotFound):
        client.get_job("backup")
    with pytest.raises(cronwire.InvalidArgument) as refused:
        client.create_job("bad", executor="shell", parameters={"argv": "echo"}, validate_only=True)
    assert refused.value.field_violations[0].field.startswith("job.parameters.argv")
    # A schedule's job must exist, as for a real create.
    with pytest.raises(cronwire.NotFound):
        client.create_schedule(
            "s", job="backup", trigger=IntervalTrigger(timedelta(hours=1)), validate_only=True
        )

    job = client.create_job("backup", executor="noop", description="first")
    with pytest.raises(cronwire.AlreadyExists):
        client.create_job("backup", executor="noop", validate_only=True)
    would = client.update_job(job, description="second", validate_only=True)
    assert would.description == "second"
    assert client.get_job("backup").description == "first"
    client.update_job(job, description="third")
    with pytest.raises(cronwire.Conflict):  # the etag is checked too
        client.update_job(job, description="fourth", validate_only=True)

    checked_schedule = client.create_schedule(
        "nightly", job="backup", trigger=CronTrigger("0 3 * * *"), validate_only=True
    )
    assert checked_schedule.next_fire_time is not None
    assert client.list_schedules().items == []
    schedule = client.create_schedule("nightly", job="backup", trigger=CronTrigger("0 3 * * *"))
    with pytest.raises(cronwire.InvalidArgument):
        client.update_schedule(schedule, trigger=CronTrigger("61 * * * *"), validate_only=True)
    assert client.update_schedule(schedule, description="d", validate_only=True).description == "d"
    assert client.get_schedule("nightly").description == ""


def test_apply_dry_run_reports_what_the_server_refuses_at_its_place(cw: Run, tmp_path: Path) -> None:  # noqa: F811
    spec: dict[str, Any] = {
        "jobs": [
            {"name": "fine", "executor": "noop"},
            {"name": "broken", "executor": "shell", "parameters": {"argv": "echo hi"}},
        ],
        "schedules": [
            {"name": "ok", "job": "fine", "trigger": {"every": "1h"}},
            {"name": "odd", "job": "fine", "trigger": {"cron": "61 * * * *"}},
            {"name": "orphan", "job": "nowhere", "trigger": {"every": "1h"}},
        ],
    }
    path = _write(tmp_path / "f.json", spec)
    for flags in (["--dry-run"], []):
        result = cw("apply", "-f", path, *flags)
        assert result.code == 1, result.out
        errors = [line for line in result.err.splitlines() if line.startswith("cronwire: error: ")]
        assert [line.split(": ")[2] for line in errors] == [
            "jobs[1].parameters.argv",
            "schedules[1].trigger.cron",
            "schedules[2].job",
        ], result.err
        assert "nothing changed in namespace default: the server refused 3 places" in result.err
        assert result.out == ""
        # All or nothing: the valid job and schedules were not created either.
        assert cw("jobs", "list", "-o", "json").json() == []
        assert cw("schedules", "list", "-o", "json").json() == []

    # Fixed, the dry run passes the server's checks (schedules of jobs the file creates too).
    spec["jobs"][1]["parameters"]["argv"] = ["echo", "hi"]
    spec["schedules"] = spec["schedules"][:1]
    dry = cw("apply", "-f", _write(tmp_path / "f.json", spec), "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.out.splitlines()[-1] == (
        "dry run, nothing changed in namespace default: 3 created (checked by the server)"
    )
    assert cw("jobs", "list", "-o", "json").json() == []
    assert cw("apply", "-f", path).code == 0
    assert len(cw("jobs", "list", "-o", "json").json()) == 2

    # An update the server refuses is reported before anything changes.
    spec["jobs"][0]["description"] = "new"
    spec["jobs"][1]["retry_policy"] = {"max_attempts": 1000}
    refused = cw("apply", "-f", _write(tmp_path / "f.json", spec))
    assert refused.code == 1
    assert "cronwire: error: jobs[1].retry_policy.max_attempts: must be between" in refused.err
    assert cw("jobs", "get", "fine", "-o", "json").json()["description"] == ""


@pytest.fixture
def limited_target(sqlite_url: str) -> Iterator[str]:
    server = ThreadedServer(sqlite_url, max_jobs_per_namespace=2)
    yield server.target
    server.stop()


def test_apply_failing_part_way_names_what_was_made(
    limited_target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Each create passes the server's check; the third meets the namespace limit when made.
    spec = {"jobs": [{"name": f"job-{n}", "executor": "noop"} for n in range(3)]}
    spec["schedules"] = [{"name": "s", "job": "job-0", "trigger": {"every": "1h"}}]
    path = _write(tmp_path / "f.json", spec)
    code = main(["--server", limited_target, "apply", "-f", path])
    out, err = capsys.readouterr()
    assert code == 1
    assert "cronwire: error: job namespaces/default/jobs/job-2 could not be created: jobs[2]:" in err
    assert "--max-jobs-per-namespace" in err
    assert "  made before the failure: job namespaces/default/jobs/job-0 created" in err
    assert "  made before the failure: job namespaces/default/jobs/job-1 created" in err
    assert "  not attempted: schedule namespaces/default/schedules/s would create" in err
    assert err.splitlines()[-1].startswith(
        "apply stopped in namespace default: 2 created; 1 failed, 1 not attempted"
    )
    assert out.splitlines() == [
        "job namespaces/default/jobs/job-0 created",
        "job namespaces/default/jobs/job-1 created",
    ]


def test_apply_declares_calendars_and_schedules_that_use_them(cw: Run, tmp_path: Path) -> None:  # noqa: F811
    # The schedules name calendars this file makes; the calendars name one another in any order.
    spec: dict[str, Any] = {
        "calendars": [
            {
                "name": "business-days",
                "time_zone": "Europe/Berlin",
                "include_calendars": ["weekdays"],
                "exclude_calendars": ["bavaria"],
            },
            {"name": "weekdays", "time_zone": "Europe/Berlin", "weekdays": "mon-fri"},
            {"name": "bavaria", "time_zone": "Europe/Berlin", "public_holidays": ["DE-BY"]},
        ],
        "jobs": [
            {
                "name": "report",
                "executor": "noop",
                "schedules": [
                    {
                        "name": "report-9am",
                        "trigger": {"cron": "0 9 * * *"},
                        "time_zone": "Europe/Berlin",
                        "only_on_calendars": ["business-days"],
                    },
                    {
                        "name": "month-end",
                        "trigger": {
                            "business_day": {"calendar": "business-days", "day": -1, "time_of_day": "17:00"}
                        },
                        "time_zone": "Europe/Berlin",
                    },
                    {
                        "name": "whit",
                        "trigger": {
                            "business_day": {"calendar": "business-days", "day": 1, "from_date": "2027-05-17"}
                        },
                        "time_zone": "Europe/Berlin",
                    },
                    {
                        "name": "standup",
                        "trigger": {"rrule": "DTSTART:20270104T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO,WE"},
                        "time_zone": "Europe/Berlin",
                        "exclude_calendars": ["bavaria"],
                    },
                ],
            }
        ],
    }
    path = _write(tmp_path / "f.json", spec)
    dry = cw("apply", "-f", path, "--dry-run")
    assert dry.code == 0, dry.err
    assert dry.out.splitlines()[-1] == (
        "dry run, nothing changed in namespace default: 8 created (checked by the server)"
    )
    assert cw("calendars", "list", "-o", "json").json() == []

    applied = cw("apply", "-f", path)
    assert applied.code == 0, applied.err
    # Each calendar before the calendars and schedules that name it.
    assert applied.out.splitlines()[:3] == [
        "calendar namespaces/default/calendars/weekdays created",
        "calendar namespaces/default/calendars/bavaria created",
        "calendar namespaces/default/calendars/business-days created",
    ]
    report = cw("schedules", "get", "report-9am", "-o", "json").json()
    assert report["only_on_calendars"] == ["namespaces/default/calendars/business-days"]
    month_end = cw("schedules", "get", "month-end", "-o", "json").json()
    assert month_end["trigger"]["business_day"]["calendar"] == "namespaces/default/calendars/business-days"
    whit = cw("schedules", "get", "whit", "-o", "json").json()
    assert whit["next_fire_time"] == "2027-05-17T22:00:00Z"  # Tuesday 18 May, 00:00 in Berlin
    assert cw("schedules", "get", "standup", "-o", "json").json()["exclude_calendars"] == [
        "namespaces/default/calendars/bavaria"
    ]

    # Applied again: nothing to do, whichever form a name was given in.
    again = cw("apply", "-f", path)
    assert again.code == 0, again.err
    assert again.out.splitlines()[-1] == "applied in namespace default: 8 unchanged"

    # What `calendars get -o yaml` prints is a valid calendar of an apply file.
    printed = cw("calendars", "get", "bavaria", "-o", "json").json()
    spec["calendars"][2] = {**printed, "public_holidays": [*printed["public_holidays"], "DE-BE"]}
    spec["jobs"][0]["schedules"][0]["only_on_calendars"] = None  # null clears it
    changed = cw("apply", "-f", _write(tmp_path / "f.json", spec))
    assert changed.code == 0, changed.err
    assert "calendar namespaces/default/calendars/bavaria updated: public_holidays" in changed.out
    assert "schedule namespaces/default/schedules/report-9am updated: only_on_calendars" in changed.out
    assert cw("schedules", "get", "report-9am", "-o", "json").json().get("only_on_calendars", []) == []

    # A bad calendar field is named at its place in the file, and nothing changes.
    spec["calendars"][1]["weekdays"] = "mon-xyz"
    bad = cw("apply", "-f", _write(tmp_path / "f.json", spec))
    assert bad.code != 0
    assert "calendars[1].weekdays" in bad.err
    spec["calendars"][1]["weekdays"] = ["MONDAY", "TUESDAY"]
    spec["calendars"][1]["time_zone"] = "Mars/Olympus"
    bad = cw("apply", "-f", _write(tmp_path / "f.json", spec))
    assert bad.code == 1
    assert "calendars[1].time_zone" in bad.err
    assert cw("calendars", "get", "weekdays", "-o", "json").json()["time_zone"] == "Europe/Berlin"

    # Pruned: the schedules go first, then the calendars nothing names any more.
    pruned = cw(
        "apply",
        "-f",
        _write(tmp_path / "f.json", {"jobs": [{"name": "report", "executor": "noop"}]}),
        "--prune",
    )
    assert pruned.code == 0, pruned.err
    assert pruned.out.splitlines()[-1] == "applied in namespace default: 7 deleted, 1 unchanged"
    assert cw("calendars", "list", "-o", "json").json() == []
