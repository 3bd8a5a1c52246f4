"""The installed `cronwire` console script, run as a process against a `cronwire-server` process."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import REPO, ServerProcess, start_server, wait_for


def _entry_point() -> str:
    beside = Path(sys.executable).with_name("cronwire")
    found = str(beside) if beside.exists() else shutil.which("cronwire")
    assert found, "the `cronwire` console script is not installed (pip install -e .)"
    return found


@pytest.fixture
def server(fresh_database_url: Callable[[str], str], tmp_path: Path) -> Iterator[ServerProcess]:
    running = start_server(fresh_database_url("sqlite"), tmp_path / "server")
    yield running
    running.stop()


def test_console_script_end_to_end(server: ServerProcess) -> None:
    env = {**os.environ, "CRONWIRE_SERVER": server.target, "CRONWIRE_NAMESPACE": "proc"}
    env.pop("CRONWIRE_TOKEN", None)

    def cronwire(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_entry_point(), *argv], env=env, capture_output=True, text=True, timeout=60)

    assert cronwire("jobs", "create", "ok", "--shell", "--", "true").returncode == 0
    assert cronwire("jobs", "create", "ko", "--shell", "--", "false").returncode == 0
    assert cronwire("jobs", "create", "hello", "--shell", "--", "echo", "hello world").returncode == 0

    ok = cronwire("jobs", "run", "ok", "--wait")
    assert ok.returncode == 0, ok.stderr
    assert "SUCCEEDED" in ok.stderr
    ko = cronwire("jobs", "run", "ko", "--wait")
    assert ko.returncode == 3, ko.stderr
    assert "FAILED" in ko.stderr
    hello = cronwire("jobs", "run", "hello", "--wait")
    assert (hello.returncode, hello.stdout) == (0, "hello world\n")

    listed = cronwire("jobs", "list", "-o", "json")
    assert [j["name"] for j in json.loads(listed.stdout)] == [
        "namespaces/proc/jobs/hello",
        "namespaces/proc/jobs/ko",
        "namespaces/proc/jobs/ok",
    ]
    table = cronwire("executions", "list", "--job", "ko")
    assert "FAILED" in table.stdout

    bad = cronwire("schedules", "create", "s", "--job", "ok", "--cron", "61 * * * *")
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.startswith("cronwire: error: schedule.trigger.cron.expression (--cron):")
    assert bad.stderr.count("\n") == 1

    usage = cronwire("jobs", "create", "x", "--timeout", "soon")
    assert usage.returncode == 2
    assert "argument --timeout" in usage.stderr


def test_console_script_without_a_server(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"
        result = subprocess.run(
            [_entry_point(), "--server", target, "--deadline", "5", "jobs", "list"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.startswith("cronwire: error: ")
    assert result.stderr.count("\n") == 1


def test_create_job_example_runs(server: ServerProcess) -> None:
    example = REPO / "examples" / "create_job.py"
    for _ in range(2):  # the second run updates what the first created
        result = subprocess.run(
            [sys.executable, str(example), "--server", server.target, "--namespace", "example"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "backing up" in result.stdout
        assert "SUCCEEDED" in result.stdout


def test_watch_failures_example_reports_a_failed_run(server: ServerProcess) -> None:
    import cronwire

    with cronwire.Client(server.target, namespace="example") as client:
        client.create_job("ko", executor="shell", parameters={"argv": ["sh", "-c", "echo broken; exit 3"]})
        # The creation's sequence: the watcher replays what follows it (0 would mean "from now on").
        after = wait_for(
            lambda: max((e.sequence for e in client.iter_events(namespace="-")), default=0), 30, "an event"
        )
        failed = client.run("ko", wait_timeout=30)
    example = REPO / "examples" / "watch_failures.py"
    command = [sys.executable, str(example), "--server", server.target, "--namespace", "example"]
    with subprocess.Popen(
        [*command, "--after", str(after)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as watcher:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=lambda: [lines.put(line) for line in watcher.stdout or []], daemon=True
        )
        reader.start()
        try:
            first = lines.get(timeout=30)
            assert f"EXECUTION_FAILED {failed.job} attempt 1: exit code 3" in first
            assert lines.get(timeout=30).strip() == "broken"
        finally:
            watcher.terminate()
            watcher.wait(timeout=30)
            reader.join(timeout=30)  # it reads to the end of the pipe before the pipe is closed


def _lines_of(process: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or []], daemon=True)
    reader.start()
    return lines, reader


def test_run_wait_follows_the_output_live(server: ServerProcess, tmp_path: Path) -> None:
    env = {**os.environ, "CRONWIRE_SERVER": server.target, "CRONWIRE_NAMESPACE": "live"}
    env.pop("CRONWIRE_TOKEN", None)
    go = tmp_path / "go"
    command = f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second"
    created = subprocess.run(
        [_entry_point(), "jobs", "create", "held", "--shell-command", command],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    with subprocess.Popen(
        [_entry_point(), "jobs", "run", "held", "--wait"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as run:  # fmt: skip
        lines, reader = _lines_of(run)
        try:
            # The first line arrives while the run is still held: printed as it is produced.
            assert lines.get(timeout=30) == "first\n"
            assert run.poll() is None
            go.touch()
            assert lines.get(timeout=30) == "second\n"
            assert run.wait(timeout=30) == 0
            assert "SUCCEEDED" in (run.stderr.read() if run.stderr else "")
        finally:
            go.touch()
            run.kill()
            reader.join(timeout=30)


def test_interrupted_run_wait_names_the_execution_that_keeps_running(server: ServerProcess) -> None:
    import cronwire

    env = {**os.environ, "CRONWIRE_SERVER": server.target, "CRONWIRE_NAMESPACE": "live"}
    env.pop("CRONWIRE_TOKEN", None)
    with cronwire.Client(server.target, namespace="live") as client:
        client.create_job(
            "long", executor="shell", parameters={"argv": ["sh", "-c", "echo started; sleep 60"]}
        )
        with subprocess.Popen(
            [_entry_point(), "jobs", "run", "long", "--wait"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as run:  # fmt: skip
            lines, reader = _lines_of(run)
            try:
                assert lines.get(timeout=30) == "started\n"
                run.send_signal(signal.SIGINT)
                assert run.wait(timeout=30) == 130
                err = run.stderr.read() if run.stderr else ""
            finally:
                run.kill()
                reader.join(timeout=30)
        (execution,) = client.list_executions(job="long").items
        assert execution.state is cronwire.ExecutionState.RUNNING
        assert err == (
            f"cronwire: interrupted; execution {execution.name} keeps running (RUNNING); "
            f"stop it with: cronwire executions cancel {execution.id}\n"
        )
        client.cancel_execution(execution)
