"""Structured logs of a real server process: JSON lines for collectors, readable text by default."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cronwire import Client, CompletionCallback, CronTrigger, RetryPolicy
from cronwire_server.logs import JsonFormatter
from tests.support import ServerProcess, start_server, wait_for

DEADLINE = 20.0
NS = "logs"
ENV_SECRET = "env-value-never-logged"
CALLBACK_SECRET = "callback-secret-never-logged"
QUERY_SECRET = "query-token-never-logged"


def json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def test_json_lines_carry_the_names_of_each_run(tmp_path: Path) -> None:
    server = start_server(
        f"sqlite:///{tmp_path / 'cronwire.db'}",
        tmp_path,
        "--log-format",
        "json",
        "--allow-private-networks",
    )
    try:
        with Client(server.target, namespace=NS) as client:
            client.create_job(
                "ok", executor="shell", parameters={"argv": ["true"], "env": {"API_TOKEN": ENV_SECRET}}
            )
            client.create_job(
                "broken",
                executor="shell",
                parameters={"argv": ["false"]},
                retry_policy=RetryPolicy(max_attempts=2, initial_backoff=timedelta(milliseconds=100)),
                # Nothing listens on port 9: the delivery fails and is tried again later.
                callback=CompletionCallback(
                    url=f"http://127.0.0.1:9/hook?token={QUERY_SECRET}", secret=CALLBACK_SECRET
                ),
            )
            ok = client.run_job("ok")
            broken = client.run_job("broken")
            client.create_schedule("every-second", job="ok", trigger=CronTrigger("* * * * * *"))

            def seen() -> bool:
                lines = [line for line in json_lines(server) if line["logger"] == "cronwire_server.workers"]
                messages = {(line.get("execution"), line["message"]) for line in lines}
                return (
                    (ok.name, "run finished") in messages
                    and (broken.name, "run finished; a retry is queued") in messages
                    and any(line.get("schedule") for line in lines if line["message"] == "run finished")
                    and any(line["message"].startswith("callback to") for line in lines)
                )

            wait_for(seen, DEADLINE, "log lines of the runs, the scheduled run and the callback", 0.1)
            client.delete_schedule("every-second")
    finally:
        server.stop()

    lines = json_lines(server)  # every line parses as one JSON object
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys()
        assert line["time"].endswith("Z")
        assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

    runs = [line for line in lines if line["logger"] == "cronwire_server.workers" and "execution" in line]
    for line in runs:
        execution_id = line["execution"].rsplit("/", 1)[1]
        assert line["namespace"] == NS
        assert line["execution"] == f"namespaces/{NS}/executions/{execution_id}"
        assert line["job"] in (f"namespaces/{NS}/jobs/ok", f"namespaces/{NS}/jobs/broken")
    by_message = {(line["execution"], line["message"]): line for line in runs}
    finished = by_message[(ok.name, "run finished")]
    assert finished["state"] == "SUCCEEDED"
    assert finished["exit_code"] == 0
    assert "schedule" not in finished, "a run-now execution has no schedule"
    assert by_message[(ok.name, "run started")]["kind"] == "shell"
    retried = by_message[(broken.name, "run finished; a retry is queued")]
    assert (retried["state"], retried["attempt"]) == ("FAILED", 1)
    scheduled = next(line for line in runs if line.get("schedule") and line["message"] == "run finished")
    assert scheduled["schedule"] == f"namespaces/{NS}/schedules/every-second"
    callback = next(line for line in runs if line["message"].startswith("callback to"))
    assert callback["job"] == f"namespaces/{NS}/jobs/broken"
    assert callback["message"].startswith("callback to http://127.0.0.1:9/hook not delivered: ConnectError")
    assert callback["reason"].startswith("ConnectError")
    # One line per attempt: the reason and what happens next together.
    attempts = [line["delivery_attempt"] for line in runs if line["message"].startswith("callback to")]
    assert len(attempts) == len(set(attempts)), attempts

    text = server.log()
    for secret in (ENV_SECRET, CALLBACK_SECRET, QUERY_SECRET):
        assert secret not in text


def test_text_lines_stay_readable(tmp_path: Path) -> None:
    server = start_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path)
    try:
        with Client(server.target, namespace=NS) as client:
            client.create_job("ok", executor="shell", parameters={"argv": ["true"]})
            execution_id = client.run_job("ok").name.rsplit("/", 1)[1]
            line = wait_for(
                lambda: next((x for x in server.log().splitlines() if "run finished" in x), None),
                DEADLINE,
                "the run's finish line",
                0.1,
            )
    finally:
        server.stop()
    # The classic line, then the run's names, compactly.
    pattern = (
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO cronwire_server\.workers: run finished "
        rf"namespace={NS} job=ok execution={execution_id} state=SUCCEEDED attempt=1 exit_code=0"
    )
    assert re.fullmatch(pattern, line), line
    assert not any(x.startswith("{") for x in server.log().splitlines())


def test_migrate_logs_json_too(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cronwire_server",
            "migrate",
            "--database-url",
            f"sqlite:///{tmp_path / 'cronwire.db'}",
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(line["message"].startswith("Running upgrade") for line in lines)
    assert all(line["time"].endswith("Z") and line["level"] == "INFO" for line in lines)


def test_an_exception_is_one_json_field() -> None:
    try:
        raise ValueError("the detail")
    except ValueError:
        record = logging.LogRecord(
            "cronwire_server.x", logging.ERROR, __file__, 1, "it broke", (), sys.exc_info()
        )
    record.job = "namespaces/a/jobs/b"
    formatted = JsonFormatter().format(record)
    assert "\n" not in formatted
    entry = json.loads(formatted)
    assert entry["message"] == "it broke"
    assert entry["job"] == "namespaces/a/jobs/b"
    assert entry["exception"].startswith("Traceback")
    assert entry["exception"].rstrip().endswith("ValueError: the detail")
    assert entry["time"].endswith("Z")
