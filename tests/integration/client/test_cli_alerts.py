"""`cronwire notifications` and schedule deadlines from the CLI, against a real server with a local
webhook receiver: routes and rules created, shown and deleted, a failure's notification listed
as delivered, deadlines set, merged, shown and cleared."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cronwire.cli import main
from tests.integration.client.conftest import ThreadedServer
from tests.integration.client.test_cli import Result, Run
from tests.support import wait_for


@pytest.fixture
def hook() -> Iterator[tuple[str, list[bytes]]]:
    got: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_address[1]}/hook", got
    http.shutdown()
    http.server_close()


@pytest.fixture
def cwa(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Run]:
    """The CLI against a server that may call the tests' local receivers."""
    server = ThreadedServer(sqlite_url, allow_private_networks=True)
    monkeypatch.setenv("CRONWIRE_SERVER", server.target)
    monkeypatch.delenv("CRONWIRE_NAMESPACE", raising=False)
    monkeypatch.delenv("CRONWIRE_TOKEN", raising=False)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    yield run
    server.stop()


def test_routes_rules_and_deliveries(
    cwa: Run, hook: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, got = hook
    monkeypatch.setenv("CRONWIRE_SECRET_OPS_HOOK_KEY", "hook-signing-key")
    created = cwa(
        "notifications", "routes", "create", "ops-hook", "--webhook", url, "--signing-secret", "OPS_HOOK_KEY"
    )
    assert created.code == 0, created.err
    assert f"webhook {url} (signed with secret OPS_HOOK_KEY)" in created.out
    assert "hook-signing-key" not in cwa("notifications", "routes", "get", "ops-hook", "-o", "json").out
    no_destination = cwa("notifications", "routes", "create", "nowhere")
    assert no_destination.code != 0
    assert "give one destination" in no_destination.err

    rule = cwa("notifications", "rules", "create", "flaky-failures", "--route", "ops-hook",
               "--on", "failed,recovered", "--job", "flaky")  # fmt: skip
    assert rule.code == 0, rule.err
    assert "FAILED,RECOVERED" in rule.out
    listed = cwa("notifications", "rules", "list")
    assert "flaky-failures  ops-hook  FAILED,RECOVERED  flaky" in listed.out
    assert cwa("notifications", "rules", "create", "bad", "--route", "ops-hook", "--on", "sad").code != 0

    assert cwa("jobs", "create", "flaky", "--shell-command", "false").code == 0
    assert cwa("jobs", "run", "flaky", "--wait").code != 0
    wait_for(lambda: got, 20, "the webhook call")

    def delivered() -> str | None:
        out = cwa("notifications", "deliveries").out
        return out if "DELIVERED" in out else None

    table = wait_for(delivered, 20, "the delivery recorded")
    assert "ops-hook  FAILED  DELIVERED  1         200" in table
    incidents = cwa("notifications", "incidents", "--open").out
    assert "FAILED  flaky" in incidents

    in_use = cwa("notifications", "routes", "delete", "ops-hook")
    assert in_use.code != 0
    assert "ROUTE_IN_USE" in in_use.err or "named by rule" in in_use.err
    assert cwa("notifications", "rules", "delete", "flaky-failures").code == 0
    assert cwa("notifications", "routes", "delete", "ops-hook").code == 0
    assert "ops-hook" not in cwa("notifications", "routes", "list").out


def test_schedule_deadlines_from_the_cli(cwa: Run) -> None:
    assert cwa("jobs", "create", "report", "--shell-command", "true").code == 0
    created = cwa("schedules", "create", "daily", "--job", "report", "--cron", "0 7 * * *",
                  "--tz", "Europe/Berlin", "--start-within", "5m", "--finish-by", "9:30",
                  "--max-duration", "1h")  # fmt: skip
    assert created.code == 0, created.err
    assert "deadlines:" in created.out
    assert "start within 5m, finish by 09:30 local, max duration 1h" in created.out
    stored = cwa("schedules", "get", "daily", "-o", "json").json()["deadlines"]
    assert stored == {"start_within": "5m", "finish_by": "09:30", "max_duration": "1h"}

    # One deadline changed, the others kept.
    updated = cwa("schedules", "update", "daily", "--finish-by", "2h")
    assert updated.code == 0, updated.err
    assert "start within 5m, finish within 2h of the tick, max duration 1h" in updated.out
    described = cwa("schedules", "describe", "daily")
    assert "finish within 2h of the tick" in described.out
    assert "last incident:\n  none" in described.out

    assert cwa("schedules", "update", "daily", "--no-deadlines").code == 0
    assert cwa("schedules", "get", "daily", "-o", "json").json().get("deadlines") is None
    bad = cwa("schedules", "update", "daily", "--finish-by", "25:00")
    assert bad.code != 0
    assert "HH:MM" in bad.err


def test_check_ins_from_the_cli(cwa: Run) -> None:
    created = cwa("checkins", "create", "nightly-backup", "--cron", "0 2 * * *", "--tz", "Europe/Berlin",
                  "--grace", "30m", "--label", "team=data")  # fmt: skip
    assert created.code == 0, created.err
    assert "shown only this once" in created.err
    token = next(line.split()[-1] for line in created.out.splitlines() if line.startswith("token:"))
    assert token.startswith("ci_")
    assert "grace:          30m" in created.out
    assert token not in cwa("checkins", "get", "nightly-backup", "-o", "json").out
    assert "nightly-backup" in cwa("checkins", "list").out

    started = cwa("checkins", "ping", token, "--start")
    assert started.code == 0, started.err
    assert "last ping kind: START" in started.out
    ended = cwa("checkins", "ping", token)
    assert "last ping kind: SUCCESS" in ended.out
    assert "last duration:" in ended.out
    assert "last duration:  -" not in ended.out
    failed = cwa("checkins", "ping", token, "--fail")
    assert "last ping kind: FAIL" in failed.out

    no_trigger = cwa("checkins", "create", "bare")
    assert no_trigger.code != 0
    assert "say when pings are expected" in no_trigger.err
    assert cwa("checkins", "delete", "nightly-backup").code == 0
    gone = cwa("checkins", "ping", token)
    assert gone.code != 0
    assert "no check-in has this token" in gone.err


def test_apply_declares_deadlines_and_takes_back_what_get_prints(cwa: Run, tmp_path: Path) -> None:
    spec: dict[str, Any] = {
        "jobs": [{"name": "report", "executor": "noop"}],
        "schedules": [
            {
                "name": "daily",
                "job": "report",
                "trigger": {"cron": "0 7 * * *"},
                "time_zone": "Europe/Berlin",
                "deadlines": {"start_within": "5m", "finish_by": "09:30"},
            },
            {"name": "plain", "job": "report", "trigger": {"every": "1h"}},
        ],
    }
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps(spec))
    applied = cwa("apply", "-f", str(path))
    assert applied.code == 0, applied.err
    assert cwa("schedules", "get", "daily", "-o", "json").json()["deadlines"] == {
        "start_within": "5m",
        "finish_by": "09:30",
        "max_duration": None,
    }
    # What `get -o yaml` prints applies as it is, with deadlines or without (null).
    for name in ("daily", "plain"):
        printed = tmp_path / f"{name}.yaml"
        document = cwa("schedules", "get", name, "-o", "yaml").out
        printed.write_text(
            "schedules:\n"
            + "".join(f"  {line}\n" if i else f"- {line}\n" for i, line in enumerate(document.splitlines()))
        )
        again = cwa("apply", "-f", str(printed))
        assert again.code == 0, again.err
        assert "0 created, 0 updated" in again.out or "unchanged" in again.out, again.out
    spec["schedules"][0]["deadlines"] = {"max_duration": "1h"}
    path.write_text(json.dumps(spec))
    changed = cwa("apply", "-f", str(path))
    assert changed.code == 0, changed.err
    assert cwa("schedules", "get", "daily", "-o", "json").json()["deadlines"] == {
        "start_within": None,
        "finish_by": None,
        "max_duration": "1h",
    }
