"""The `cronwire` CLI end to end through `main(argv)`, against a real server (in a background thread)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cronwire.cli import EXIT_FAILED, EXIT_USAGE, EXIT_WAIT_TIMEOUT, main
from tests.support import wait_for


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


@pytest.fixture
def cw(server_target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """Run the CLI against the test's server, in namespace `default` unless told otherwise."""
    return cli_against(server_target, monkeypatch, capsys)


def cli_against(target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """`main(argv)` against the server at `target`, with no namespace or key from the environment;
    each call's exit code and output."""
    monkeypatch.setenv("CRONWIRE_SERVER", target)
    monkeypatch.delenv("CRONWIRE_NAMESPACE", raising=False)
    monkeypatch.delenv("CRONWIRE_TOKEN", raising=False)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def test_jobs_create_get_list_update_delete(cw: Run) -> None:
    created = cw(
        "jobs",
        "create",
        "backup",
        "--shell",
        "--timeout",
        "10m",
        "--retries",
        "3",
        "--",
        "pg_dump",
        "-f",
        "x",
    )
    assert created.code == 0, created.err
    assert "namespaces/default/jobs/backup" in created.out
    assert "10m" in created.out

    job = cw("jobs", "get", "backup", "-o", "json").json()
    assert job["executor"] == "shell"
    assert job["parameters"] == {"argv": ["pg_dump", "-f", "x"]}
    assert job["timeout"] == "10m"
    assert job["retry_policy"]["max_attempts"] == 4

    noop = cw(
        "jobs", "create", "tick", "--executor", "noop", "--param", "sleep_seconds=0", "--label", "team=ops"
    )
    assert noop.code == 0, noop.err
    listing = cw("jobs", "list")
    assert listing.out.splitlines()[0].split()[:2] == ["NAME", "EXECUTOR"]
    assert [line.split()[0] for line in listing.out.splitlines()[1:]] == ["backup", "tick"]
    assert [j["name"] for j in cw("jobs", "list", "--executor", "noop", "-o", "json").json()] == [
        "namespaces/default/jobs/tick"
    ]

    updated = cw("jobs", "update", "backup", "--description", "nightly dump", "--timeout", "0", "-o", "json")
    assert updated.code == 0, updated.err
    assert updated.json()["description"] == "nightly dump"
    assert updated.json()["timeout"] is None
    merged = cw(
        "jobs", "update", "tick", "--param", "sleep_seconds=2", "--label", "tier=1", "-o", "json"
    ).json()
    assert merged["parameters"] == {"sleep_seconds": 2}
    assert merged["labels"] == {"team": "ops", "tier": "1"}
    assert cw("jobs", "update", "tick").code == EXIT_USAGE

    assert cw("jobs", "delete", "backup").code == 0
    missing = cw("jobs", "get", "backup")
    assert missing.code == 1
    assert missing.err == "cronwire: error: job 'namespaces/default/jobs/backup' not found [JOB_NOT_FOUND]\n"


def test_shell_command_and_json_parameters(cw: Run) -> None:
    assert cw("jobs", "create", "piped", "--shell-command", "echo a | tr a b").code == 0
    assert cw("jobs", "get", "piped", "-o", "json").json()["parameters"] == {
        "shell": True,
        "command": "echo a | tr a b",
    }
    run = cw("jobs", "run", "piped", "--wait")
    assert (run.code, run.out) == (0, "b\n")
    assert (
        cw("jobs", "create", "env", "--shell", "--param", 'env={"A": "1"}', "--", "sh", "-c", "echo $A").code
        == 0
    )
    assert cw("jobs", "run", "env", "--wait").out == "1\n"


def test_run_wait_exit_codes(cw: Run) -> None:
    assert cw("jobs", "create", "ok", "--shell", "--", "true").code == 0
    assert cw("jobs", "create", "ko", "--shell", "--", "false").code == 0
    succeeded = cw("jobs", "run", "ok", "--wait")
    assert succeeded.code == 0
    assert "SUCCEEDED" in succeeded.err
    failed = cw("jobs", "run", "ko", "--wait")
    assert failed.code == EXIT_FAILED
    assert "FAILED" in failed.err
    assert "exit code 1" in failed.err
    as_json = cw("jobs", "run", "ko", "--wait", "-o", "json")
    assert as_json.code == EXIT_FAILED
    assert as_json.json()["state"] == "FAILED"

    queued = cw("jobs", "run", "ok")
    assert queued.code == 0
    name = queued.out.split()[0]
    assert name.startswith("namespaces/default/executions/")
    waited = cw("executions", "get", name.split("/")[-1], "--wait")
    assert waited.code == 0


def test_run_wait_timeout(cw: Run) -> None:
    assert cw("jobs", "create", "slow", "--executor", "noop", "--param", "sleep_seconds=30").code == 0
    result = cw("jobs", "run", "slow", "--wait", "--wait-timeout", "300ms", "--poll-interval", "50ms")
    assert result.code == EXIT_WAIT_TIMEOUT
    assert "still" in result.err


def test_schedules(cw: Run) -> None:
    assert cw("jobs", "create", "backup", "--executor", "noop").code == 0
    nightly = cw(
        "schedules", "create", "nightly", "--job", "backup", "--cron", "0 3 * * *", "--tz", "Europe/Berlin"
    )
    assert nightly.code == 0, nightly.err
    assert "cron 0 3 * * *" in nightly.out
    every = cw("schedules", "create", "often", "--job", "backup", "--every", "5m", "-o", "json")
    assert every.json()["trigger"] == {"every": "5m"}
    once = cw("schedules", "create", "once", "--job", "backup", "--at", "2030-01-01T00:00:00Z", "-o", "json")
    assert once.json()["trigger"] == {"at": "2030-01-01T00:00:00Z"}
    both = cw(
        "schedules",
        "create",
        "both",
        "--job",
        "backup",
        "--cron",
        "0 * * * *",
        "--every",
        "90m",
        "-o",
        "json",
    )
    assert both.json()["trigger"] == {"any_of": [{"cron": "0 * * * *"}, {"every": "1h30m"}]}

    listing = cw("schedules", "list", "--job", "backup")
    assert [line.split()[0] for line in listing.out.splitlines()[1:]] == ["both", "nightly", "often", "once"]
    got = cw("schedules", "get", "nightly", "-o", "json").json()
    assert got["time_zone"] == "Europe/Berlin"
    assert got["next_fire_time"].endswith(("T01:00:00Z", "T02:00:00Z"))

    updated = cw("schedules", "update", "nightly", "--cron", "30 4 * * *", "--arg", "full=true", "-o", "json")
    assert updated.json()["trigger"] == {"cron": "30 4 * * *"}
    assert updated.json()["arguments"] == {"full": True}
    paused = cw("schedules", "pause", "nightly", "--reason", "maintenance", "-o", "json").json()
    assert (paused["paused"], paused["pause_reason"]) == (True, "maintenance")
    assert cw("schedules", "resume", "nightly", "-o", "json").json()["paused"] is False

    preview = cw("schedules", "preview", "nightly", "--count", "2")
    assert len(preview.out.splitlines()) == 3
    spec = cw(
        "schedules", "preview", "--cron", "0 9 * * 1-5", "--tz", "Europe/Berlin",
        "--after", "2027-03-24T00:00:00Z", "--count", "5", "-o", "json",
    )  # fmt: skip
    local = [t["local_time"] for t in spec.json()["fire_times"]]
    assert local[0].startswith("2027-03-24T09:00:00+01:00")
    assert local[3].startswith("2027-03-29T09:00:00+02:00")
    for dst, spring in (("debian", ["03:00:00+02:00"]), ("skip", [])):
        gap = cw(
            "schedules", "preview", "--cron", "30 2 * * *", "--tz", "Europe/Berlin", "--dst", dst,
            "--after", "2027-03-27T12:00:00Z", "--count", "2", "-o", "json",
        )  # fmt: skip
        on_the_day = [
            t["local_time"][11:] for t in gap.json()["fire_times"] if "2027-03-28" in t["local_time"]
        ]
        assert on_the_day == spring, gap.out
    assert cw("schedules", "preview", "--every", "1h", "--dst", "skip").code == EXIT_USAGE
    assert cw("schedules", "preview").code == EXIT_USAGE

    assert cw("schedules", "delete", "once").code == 0
    assert cw("schedules", "get", "once").code == 1


def test_errors_name_the_field_and_the_flag(cw: Run) -> None:
    assert cw("jobs", "create", "backup", "--executor", "noop").code == 0
    bad_cron = cw("schedules", "create", "s", "--job", "backup", "--cron", "0 25 * * *")
    assert bad_cron.code == 1
    assert bad_cron.err.startswith("cronwire: error: schedule.trigger.cron.expression (--cron): hour:")
    assert bad_cron.err.count("\n") == 1

    bad_id = cw("jobs", "create", "Bad", "--executor", "noop")
    assert bad_id.code == 1
    assert bad_id.err.startswith("cronwire: error: job_id (NAME): 'Bad' is not a valid id")

    bad_params = cw("jobs", "create", "x", "--executor", "shell")
    assert bad_params.code == 1
    assert "job.parameters" in bad_params.err
    assert "(--param)" in bad_params.err

    bad_zone = cw("schedules", "create", "z", "--job", "backup", "--every", "1h", "--tz", "Mars/Olympus")
    assert bad_zone.code == 1
    assert "schedule.time_zone (--tz)" in bad_zone.err

    exists = cw("jobs", "create", "backup", "--executor", "noop")
    assert (exists.code, exists.err.strip()) == (
        1,
        "cronwire: error: job 'namespaces/default/jobs/backup' already exists [JOB_ALREADY_EXISTS]",
    )


def test_usage_errors_exit_2(cw: Run) -> None:
    duration = cw("jobs", "create", "x", "--executor", "noop", "--timeout", "10x")
    assert duration.code == EXIT_USAGE
    assert "argument --timeout: invalid duration '10x'" in duration.err
    nothing = cw("jobs", "create", "x")
    assert nothing.code == EXIT_USAGE
    assert "--shell -- PROGRAM" in nothing.err
    assert cw("jobs", "create", "x", "--shell").code == EXIT_USAGE
    assert cw("jobs", "get", "x", "--", "extra").code == EXIT_USAGE
    assert cw("bogus").code == EXIT_USAGE
    assert cw("schedules", "create", "s", "--job", "j").code == EXIT_USAGE
    assert cw("executions", "list", "--state", "nope").code == EXIT_USAGE
    assert cw("--help").code == 0


def test_names_short_or_full_and_namespaces(cw: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cw("-n", "team-a", "jobs", "create", "backup", "--executor", "noop").code == 0
    assert cw("jobs", "get", "backup", "--namespace", "team-a").code == 0
    assert cw("jobs", "get", "namespaces/team-a/jobs/backup").code == 0
    assert cw("jobs", "get", "backup").code == 1  # not in `default`
    monkeypatch.setenv("CRONWIRE_NAMESPACE", "team-a")
    assert cw("jobs", "get", "backup", "-o", "json").json()["name"] == "namespaces/team-a/jobs/backup"
    assert cw("jobs", "list", "-n", "default", "-o", "json").json() == []


def test_executions(cw: Run) -> None:
    assert cw("jobs", "create", "hello", "--shell", "--", "echo", "hello").code == 0
    assert cw("jobs", "create", "slow", "--executor", "noop", "--param", "sleep_seconds=30").code == 0
    assert cw("jobs", "run", "hello", "--wait").code == 0
    slow = cw("jobs", "run", "slow", "-o", "json").json()["name"]

    listing = cw("executions", "list", "--job", "hello", "-o", "json").json()
    assert len(listing) == 1
    name = listing[0]["name"]
    shown = cw("executions", "get", name)
    assert "SUCCEEDED" in shown.out
    assert shown.out.endswith("output:\nhello\n")

    logs = cw("executions", "logs", name.split("/")[-1])
    assert (logs.code, logs.out) == (0, "hello\n")
    followed = cw("executions", "logs", name, "-f")
    assert (followed.code, followed.out) == (0, "hello\n")

    cancelled = cw("executions", "cancel", slow, "--reason", "not today")
    assert cancelled.code == 0
    assert cw("executions", "get", slow, "--wait").code == 5
    states = cw("executions", "list", "--state", "cancelled", "-o", "json").json()
    assert [e["name"] for e in states] == [slow]
    table = cw("executions", "list").out.splitlines()
    assert table[0].split()[:3] == ["NAME", "JOB", "STATE"]
    assert len(table) == 3


def test_job_types(cw: Run) -> None:
    table = cw("jobs", "types")
    assert {line.split()[0] for line in table.out.splitlines()[1:]} >= {"shell", "noop"}
    types = {t["name"]: t for t in cw("jobs", "types", "-o", "json").json()}
    assert types["shell"]["parameters_schema"]["type"] == "object"


def test_events(cw: Run) -> None:
    assert cw("jobs", "create", "hello", "--shell", "--", "echo", "hi").code == 0
    # Events are numbered just after their commit: wait until it is listed.
    listed = wait_for(lambda: cw("events", "list", "-o", "json").json(), 30, "the JOB_CREATED event")
    assert [e["type"] for e in listed] == ["JOB_CREATED"]
    start = str(listed[-1]["sequence"])
    assert cw("jobs", "run", "hello", "--wait").code == 0
    table = wait_for(
        lambda: cw("events", "list", "--job", "hello", "--type", "execution-succeeded").out.splitlines()[1:],
        30,
        "the EXECUTION_SUCCEEDED event",
    )
    assert len(table) == 1

    watched = cw("events", "watch", "--after", start, "--limit", "3", "-o", "json")
    assert watched.code == 0, watched.err
    lines = [json.loads(line) for line in watched.out.splitlines()]
    assert [e["type"] for e in lines] == ["EXECUTION_QUEUED", "EXECUTION_STARTED", "EXECUTION_SUCCEEDED"]
    human = cw("events", "watch", "--after", start, "--limit", "1", "--type", "execution-succeeded")
    assert "EXECUTION_SUCCEEDED" in human.out
    assert "namespaces/default/executions/" in human.out


def test_version(cw: Run) -> None:
    assert cw("--version").out.startswith("cronwire ")


# apply


def _write(path: Path, document: Any) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def _actions(result: Result) -> list[tuple[str, str, str]]:
    return [(c["kind"], c["name"].split("/")[-1], c["action"]) for c in result.json()]


def test_apply_creates_updates_and_prunes(cw: Run, tmp_path: Path) -> None:
    spec: dict[str, Any] = {
        "namespace": "ops",
        "jobs": [
            {
                "name": "backup",
                "executor": "shell",
                "parameters": {"argv": ["echo", "dump"]},
                "timeout": "10m",
                "retry_policy": {"max_attempts": 3, "initial_backoff": "30s"},
                "labels": {"team": "data"},
                "schedules": [
                    {"name": "nightly", "trigger": {"cron": "0 3 * * *"}, "time_zone": "Europe/Berlin"}
                ],
            },
            {"name": "report", "executor": "noop", "dependents": ["backup"]},
        ],
        "schedules": [
            {"name": "hourly", "job": "report", "trigger": {"every": "1h"}, "paused": True},
        ],
    }
    path = _write(tmp_path / "jobs.json", spec)
    first = cw("apply", "-f", path)
    assert first.code == 0, first.err
    assert first.out.splitlines() == [
        "job namespaces/ops/jobs/backup created",
        "job namespaces/ops/jobs/report created",
        "schedule namespaces/ops/schedules/nightly created",
        "schedule namespaces/ops/schedules/hourly created",
        "applied in namespace ops: 4 created",
    ]
    assert cw("schedules", "get", "hourly", "-n", "ops", "-o", "json").json()["paused"] is True

    again = cw("apply", "-f", path, "-o", "json")
    assert {action for _, _, action in _actions(again)} == {"unchanged"}

    spec["jobs"][0]["timeout"] = "20m"
    spec["jobs"][0]["retry_policy"]["max_attempts"] = 5
    spec["schedules"][0]["paused"] = False
    spec["schedules"][0]["trigger"] = {"every": "2h"}
    _write(tmp_path / "jobs.json", spec)
    dry = cw("apply", "-f", path, "--dry-run")
    assert "job namespaces/ops/jobs/backup would update: timeout, retry_policy" in dry.out
    assert dry.out.splitlines()[-1].startswith("dry run, nothing changed in namespace ops")
    assert cw("jobs", "get", "backup", "-n", "ops", "-o", "json").json()["timeout"] == "10m"
    changed = cw("apply", "-f", path, "-o", "json")
    assert _actions(changed) == [
        ("job", "backup", "update"),
        ("job", "report", "unchanged"),
        ("schedule", "nightly", "unchanged"),
        ("schedule", "hourly", "update"),
        ("schedule", "hourly", "resume"),
    ]
    backup = cw("jobs", "get", "backup", "-n", "ops", "-o", "json").json()
    assert backup["timeout"] == "20m"
    assert backup["retry_policy"]["max_attempts"] == 5
    assert backup["retry_policy"]["initial_backoff"] == "30s"

    # What `get -o json` prints applies as it is, output-only fields and all.
    exported = {"namespace": "ops", "jobs": [backup]}
    pruned = cw("apply", "-f", _write(tmp_path / "only.json", exported), "--prune", "-o", "json")
    assert pruned.code == 0, pruned.err
    assert _actions(pruned) == [
        ("job", "backup", "unchanged"),
        ("schedule", "hourly", "delete"),
        ("schedule", "nightly", "delete"),
        ("job", "report", "delete"),
    ]
    assert [j["name"] for j in cw("jobs", "list", "-n", "ops", "-o", "json").json()] == [
        "namespaces/ops/jobs/backup"
    ]
    assert cw("schedules", "list", "-n", "ops", "-o", "json").json() == []


def test_apply_clears_fields_set_to_null_and_guards_the_job_of_a_schedule(cw: Run, tmp_path: Path) -> None:
    spec: dict[str, Any] = {
        "jobs": [
            {"name": "a", "executor": "noop", "timeout": "1m", "description": "first"},
            {"name": "b", "executor": "noop"},
        ],
        "schedules": [{"name": "s", "job": "a", "trigger": {"cron": "0 * * * *"}}],
    }
    path = _write(tmp_path / "f.json", spec)
    assert cw("apply", "-f", path).code == 0
    spec["jobs"][0]["timeout"] = None
    _write(tmp_path / "f.json", spec)
    assert "job namespaces/default/jobs/a updated: timeout" in cw("apply", "-f", path).out
    assert cw("jobs", "get", "a", "-o", "json").json()["timeout"] is None

    spec["schedules"][0]["job"] = "b"
    _write(tmp_path / "f.json", spec)
    moved = cw("apply", "-f", path)
    assert moved.code == 1
    assert (
        "schedules[0].job: schedule namespaces/default/schedules/s runs namespaces/default/jobs/a"
        in moved.err
    )


def test_apply_reports_file_problems_with_their_place(cw: Run, tmp_path: Path) -> None:
    cases: list[tuple[Any, str]] = [
        ({"jobs": [{"name": "a"}]}, "jobs[0].executor: is required"),
        (
            {"jobs": [{"name": "a", "executor": "noop", "timeout": "soon"}]},
            "jobs[0].timeout: invalid duration",
        ),
        ({"jobs": [{"name": "a", "executor": "noop", "colour": "red"}]}, "jobs[0].colour: unknown field"),
        ({"schedules": [{"name": "s", "job": "a"}]}, "schedules[0].trigger: is required"),
        ({"schedules": [{"name": "s", "job": "a", "trigger": {"sometimes": 1}}]}, "unknown trigger"),
        ({"jobs": [{"name": "namespaces/x/jobs/a", "executor": "noop"}]}, "not in namespace 'default'"),
        (
            {"jobs": [{"name": "a", "executor": "noop"}, {"name": "a", "executor": "noop"}]},
            "jobs[1]: job namespaces/default/jobs/a is also given at jobs[0]",
        ),
        ({"job": []}, "job: unknown top-level key"),
    ]
    for document, message in cases:
        result = cw("apply", "-f", _write(tmp_path / "bad.json", document))
        assert result.code == 1, document
        assert message in result.err, (document, result.err)
        assert result.err.count("\n") == 1
    assert cw("jobs", "list", "-o", "json").json() == []
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert "is not valid JSON" in cw("apply", "-f", str(broken)).err
    assert cw("apply", "-f", str(tmp_path / "missing.yaml")).code == EXIT_USAGE


def test_apply_yaml(cw: Run, tmp_path: Path) -> None:
    pytest.importorskip("yaml", reason="YAML files need PyYAML")
    path = tmp_path / "jobs.yaml"
    path.write_text(
        "jobs:\n"
        "  - name: backup\n"
        "    executor: shell\n"
        "    parameters: {argv: [echo, hi]}\n"
        "    timeout: 10m\n"
        "    schedules:\n"
        "      - name: once\n"
        "        trigger: {at: 2030-01-01T00:00:00Z}\n"
    )
    result = cw("apply", "-f", str(path))
    assert result.code == 0, result.err
    assert cw("schedules", "get", "once", "-o", "json").json()["trigger"] == {"at": "2030-01-01T00:00:00Z"}
    exported = cw("jobs", "get", "backup", "-o", "yaml")
    assert "executor: shell" in exported.out
