"""`cronwire notifications` and schedule deadlines from the CLI, against a real server with a local
webhook receiver: routes and rules created, updated, shown and deleted, a failure's notification
listed as delivered, deadlines set, merged, shown and cleared, check-ins created, updated and
pinged."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.client.conftest import ThreadedServer
from tests.integration.client.test_cli import Run, cli_against
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
    yield cli_against(server.target, monkeypatch, capsys)
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
    # Its incident resolved, silently, saying why.
    assert "RESOLVED BY" in (resolved := cwa("notifications", "incidents").out)
    assert "notificationRules/flaky-failures was deleted" in resolved
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


def test_routes_and_rules_updated_from_the_cli(
    cwa: Run, hook: tuple[str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, got = hook
    monkeypatch.setenv("CRONWIRE_SECRET_OPS_HOOK_KEY", "hook-signing-key")
    assert cwa("notifications", "routes", "create", "ops-hook", "--webhook", url).code == 0
    first_etag = cwa("notifications", "routes", "get", "ops-hook", "-o", "json").json()["etag"]

    described = cwa("notifications", "routes", "update", "ops-hook", "--description", "the ops channel",
                    "--max-per-hour", "60")  # fmt: skip
    assert described.code == 0, described.err
    assert f"destination:  webhook {url}\n" in described.out
    assert "max per hour: 60\n" in described.out
    assert "description:  the ops channel\n" in described.out
    # A flag of the same kind of destination changes that field and keeps the others.
    signed = cwa("notifications", "routes", "update", "ops-hook", "--signing-secret", "OPS_HOOK_KEY")
    assert f"destination:  webhook {url} (signed with secret OPS_HOOK_KEY)\n" in signed.out
    # Another kind: refused unless its kind flag replaces the destination.
    wrong = cwa("notifications", "routes", "update", "ops-hook", "--smtp-password-secret", "SMTP_PASSWORD")
    assert wrong.code != 0
    assert "--smtp-password-secret: flags of email destinations (give --email to replace it)" in wrong.err
    mixed = cwa(
        "notifications", "routes", "update", "ops-hook", "--slack", "SLACK_URL", "--signing-secret", "K"
    )
    assert mixed.code != 0
    assert "flags of different destinations" in mixed.err
    mailed = cwa("notifications", "routes", "update", "ops-hook", "--email", "oncall@example.com",
                 "--from", "cronwire@example.com", "--smtp-host", "smtp.example.com",
                 "--smtp-security", "smtps", "--smtp-user", "cronwire",
                 "--smtp-password-secret", "SMTP_PASSWORD")  # fmt: skip
    assert mailed.code == 0, mailed.err
    assert (
        "destination:  email to oncall@example.com from cronwire@example.com via smtp.example.com "
        "(SMTPS, login cronwire, password in secret SMTP_PASSWORD)\n"
    ) in mailed.out
    rotated = cwa("notifications", "routes", "update", "ops-hook", "--smtp-port", "2465",
                  "--smtp-password-secret", "SMTP_PASSWORD_2026")  # fmt: skip
    assert (
        "via smtp.example.com:2465 (SMTPS, login cronwire, password in secret SMTP_PASSWORD_2026)"
        in rotated.out
    )
    stored = cwa("notifications", "routes", "get", "ops-hook", "-o", "json").json()
    assert stored["description"] == "the ops channel"
    back = cwa(
        "notifications", "routes", "update", "ops-hook", "--webhook", url, "--signing-secret", "OPS_HOOK_KEY"
    )
    assert f"destination:  webhook {url} (signed with secret OPS_HOOK_KEY)\n" in back.out
    stale = cwa("notifications", "routes", "update", "ops-hook", "--description", "x", "--etag", first_etag)
    assert stale.code != 0
    assert "ETAG_MISMATCH" in stale.err
    nothing = cwa("notifications", "routes", "update", "ops-hook")
    assert nothing.code != 0
    assert "nothing to update" in nothing.err

    # A rule for another job, changed to the one that fails: the next failure notifies.
    assert cwa("jobs", "create", "flaky", "--shell-command", "false").code == 0
    rule = cwa("notifications", "rules", "create", "flaky-failures", "--route", "ops-hook",
               "--on", "timed-out", "--job", "other", "--label", "team=data")  # fmt: skip
    assert rule.code == 0, rule.err
    updated = cwa("notifications", "rules", "update", "flaky-failures", "--on", "failed,recovered",
                  "--any-job", "--label", "tier=1", "--description", "flaky things")  # fmt: skip
    assert updated.code == 0, updated.err
    assert "on:          FAILED,RECOVERED\n" in updated.out
    assert "job:         any\n" in updated.out
    assert "labels:      team=data, tier=1\n" in updated.out
    assert "description: flaky things\n" in updated.out
    narrowed = cwa("notifications", "rules", "update", "flaky-failures", "--job", "flaky", "--label", "team=",
                   "--label", "tier=")  # fmt: skip
    assert narrowed.code == 0, narrowed.err
    assert "job:         namespaces/default/jobs/flaky\n" in narrowed.out
    assert "labels:      -\n" in narrowed.out
    nowhere = cwa("notifications", "rules", "update", "flaky-failures", "--route", "pager")
    assert nowhere.code != 0
    assert "ROUTE_NOT_FOUND" in nowhere.err
    assert cwa("jobs", "run", "flaky", "--wait").code != 0
    body = json.loads(wait_for(lambda: got, 20, "the webhook call")[0])
    assert (body["kind"], body["rule"]) == ("FAILED", "namespaces/default/notificationRules/flaky-failures")


@pytest.fixture
def cwb(backend_target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """The CLI against a server on each database backend."""
    return cli_against(backend_target, monkeypatch, capsys)


def test_a_check_in_updated_from_the_cli(cwb: Run) -> None:
    created = cwb("checkins", "create", "nightly-backup", "--cron", "0 2 * * *", "--tz", "Europe/Berlin",
                  "--grace", "30m", "--label", "team=data")  # fmt: skip
    assert created.code == 0, created.err
    token = next(line.split()[-1] for line in created.out.splitlines() if line.startswith("token:"))
    first_etag = cwb("checkins", "get", "nightly-backup", "-o", "json").json()["etag"]

    updated = cwb("checkins", "update", "nightly-backup", "--every", "10s", "--grace", "1m",
                  "--label", "owner=ops", "--description", "to S3")  # fmt: skip
    assert updated.code == 0, updated.err
    assert "trigger:        every 10s\n" in updated.out
    assert "time zone:      Europe/Berlin\n" in updated.out
    assert "grace:          1m\n" in updated.out
    assert "labels:         owner=ops, team=data\n" in updated.out
    assert "description:    to S3\n" in updated.out
    assert token not in updated.out
    stored = cwb("checkins", "get", "nightly-backup", "-o", "json").json()
    assert stored["etag"] != first_etag
    expected_in = next(line for line in updated.out.splitlines() if line.startswith("next expected:"))
    assert "(in " in expected_in or "(just now)" in expected_in  # the first tick of 10 s after the update

    # --at without --tz is read in the check-in's zone (Europe/Berlin: UTC+1 in January).
    once = cwb("checkins", "update", "nightly-backup", "--at", "2030-01-01T09:00", "--label", "team=")
    assert once.code == 0, once.err
    assert "next expected:  2030-01-01T08:00:00Z" in once.out
    assert "labels:         owner=ops\n" in once.out
    zoned = cwb("checkins", "update", "nightly-backup", "--cron", "30 2 * * *", "--tz", "UTC")
    assert "time zone:      UTC\n" in zoned.out
    assert "T02:30:00Z" in next(line for line in zoned.out.splitlines() if line.startswith("next expected:"))

    stale = cwb("checkins", "update", "nightly-backup", "--description", "x", "--etag", first_etag)
    assert stale.code != 0
    assert "ETAG_MISMATCH" in stale.err
    bad = cwb("checkins", "update", "nightly-backup", "--grace", "8d")
    assert bad.code != 0
    assert "check_in.grace" in bad.err
    nothing = cwb("checkins", "update", "nightly-backup")
    assert nothing.code != 0
    assert "nothing to update" in nothing.err
    assert cwb("checkins", "get", "nightly-backup", "-o", "json").json()["description"] == "to S3"
    pinged = cwb("checkins", "ping", token)  # the token of the create still pings
    assert pinged.code == 0, pinged.err
    assert "last ping kind: SUCCESS" in pinged.out


def test_a_check_in_shows_its_etag_and_refuses_start_and_end(cwa: Run) -> None:
    created = cwa("checkins", "create", "nightly-backup", "--every", "1h")
    assert created.code == 0, created.err
    etag = cwa("checkins", "get", "nightly-backup", "-o", "json").json()["etag"]
    shown = cwa("checkins", "get", "nightly-backup")
    assert f"etag:           {etag}\n" in shown.out
    # The etag shown is the one `update --etag` takes.
    updated = cwa("checkins", "update", "nightly-backup", "--grace", "10m", "--etag", etag)
    assert updated.code == 0, updated.err
    new_etag = cwa("checkins", "get", "nightly-backup", "-o", "json").json()["etag"]
    assert new_etag != etag
    assert f"etag:           {new_etag}\n" in updated.out

    # A check-in's trigger has no start or end: the flags are refused by name, nothing changed.
    for flag in ("--start", "--end"):
        refused = cwa("checkins", "create", "other", "--every", "1h", flag, "2030-01-01T00:00Z")
        assert refused.code != 0
        assert f"{flag} does not apply to a check-in" in refused.err
        refused = cwa("checkins", "update", "nightly-backup", "--every", "2h", flag, "2030-01-01T00:00Z")
        assert refused.code != 0
        assert f"{flag} does not apply to a check-in" in refused.err
    assert "other" not in cwa("checkins", "list").out
    kept = cwa("checkins", "get", "nightly-backup", "-o", "json").json()
    assert kept["etag"] == new_etag
