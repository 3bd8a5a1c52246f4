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
