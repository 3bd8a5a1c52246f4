"""The shell executor with real processes: literal argv, environment, output, timeouts and cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.jobuser import SAFE_PATH, JobUser
from cronwire_server.executors.python_runner import PythonRunner
from cronwire_server.executors.registry import EntryPolicy
from cronwire_server.executors.runtime import RunOutcome, RunRequest
from cronwire_server.executors.shell import KILL_GRACE, ShellRunner
from tests.support import eventually

SCHEDULED = datetime(2025, 3, 30, 1, 30, tzinfo=UTC)
# Every run is bounded, so a broken runner fails the test instead of hanging it.
BOUND = 3.0


def request(
    parameters: dict[str, Any],
    *,
    arguments: dict[str, Any] | None = None,
    timeout: float | None = None,
    capture_bytes: int = 1024 * 1024,
) -> RunRequest:
    return RunRequest(
        execution_name="namespaces/ops/executions/e-1",
        job_name="namespaces/ops/jobs/backup",
        parameters=parameters,
        arguments=arguments if arguments is not None else {},
        scheduled_time=SCHEDULED,
        attempt=2,
        timeout=timedelta(seconds=timeout) if timeout is not None else None,
        capture_bytes=capture_bytes,
        lease_token="lease-1",
    )


async def run(
    req: RunRequest,
    cancel: asyncio.Event | None = None,
    on_output: Callable[[str], None] | None = None,
    runner: ShellRunner | PythonRunner | None = None,
) -> RunOutcome:
    runner = runner or ShellRunner()
    return await asyncio.wait_for(runner.run(req, cancel or asyncio.Event(), on_output), BOUND)


def gone(pid: int) -> bool:
    """Whether the process has ended (a zombie has: it waits only to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def same_file(a: str | Path, b: str | Path) -> bool:
    return os.path.samefile(a, b)


async def wait_gone(pid: int) -> None:
    await eventually(lambda: gone(pid), 2.0, f"process {pid} to end")


class Lines:
    """An on_output callback that lets a test await the first line of output."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.first_line = asyncio.Event()

    def __call__(self, chunk: str) -> None:
        self.chunks.append(chunk)
        if "\n" in "".join(self.chunks):
            self.first_line.set()

    async def first(self) -> str:
        await asyncio.wait_for(self.first_line.wait(), BOUND)
        return "".join(self.chunks).partition("\n")[0]


async def test_argv_is_passed_literally_never_through_a_shell(tmp_path: Path) -> None:
    hostile = ["; $(touch canary)", "`touch canary`", "a\nb; touch canary", "*", "$HOME", "'\""]
    script = "import json, sys; print(json.dumps(sys.argv[1:]))"
    outcome = await run(
        request({"argv": [sys.executable, "-c", script, *hostile], "working_dir": str(tmp_path)})
    )
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    assert json.loads(outcome.output) == hostile
    assert not (tmp_path / "canary").exists()
    assert os.listdir(tmp_path) == []


async def test_shell_true_runs_a_pipeline() -> None:
    outcome = await run(request({"shell": True, "command": "printf 'pear\\napple\\n' | sort | tr a-z A-Z"}))
    assert outcome == RunOutcome(ExecutionState.SUCCEEDED, exit_code=0, output="APPLE\nPEAR\n")


async def test_env_and_working_dir_are_applied_over_a_fresh_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONWIRE_TEST_SERVER_SECRET", "s3cret")
    monkeypatch.setenv("TZ", "Europe/Paris")
    script = "import json, os; print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}))"
    parameters = {
        "argv": [sys.executable, "-c", script],
        "env": {"GREETING": "hi"},
        "working_dir": str(tmp_path),
    }
    outcome = await run(request(parameters))
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    seen = json.loads(outcome.output)
    assert same_file(seen["cwd"], tmp_path)
    env = seen["env"]
    # Nothing of the server's: only the variables of the job's user, then the job's own.
    user = pwd.getpwuid(os.geteuid())
    assert {k: v for k, v in env.items() if not k.startswith("CRONWIRE_")} == {
        "PATH": SAFE_PATH,
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "LANG": "C.UTF-8",
        "GREETING": "hi",
    }


async def test_cronwire_variables_describe_the_run_and_win_over_the_jobs_env() -> None:
    script = (
        "import json, os; "
        "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('CRONWIRE_')}))"
    )
    arguments = {"date": "2025-03-30", "dry_run": True, "tables": ["a", "b"], "note": "é"}
    parameters = {
        "argv": [sys.executable, "-c", script],
        "env": {"CRONWIRE_JOB": "spoofed", "CRONWIRE_LEASE_TOKEN": "spoofed"},
    }
    outcome = await run(request(parameters, arguments=arguments))
    env = json.loads(outcome.output)
    assert json.loads(env.pop("CRONWIRE_ARGUMENTS")) == arguments
    assert env == {
        "CRONWIRE_EXECUTION": "namespaces/ops/executions/e-1",
        "CRONWIRE_JOB": "namespaces/ops/jobs/backup",
        "CRONWIRE_SCHEDULED_TIME": "2025-03-30T01:30:00+00:00",
        "CRONWIRE_ATTEMPT": "2",
        "CRONWIRE_LEASE_TOKEN": "lease-1",
    }


async def test_non_zero_exit_fails_with_the_code() -> None:
    outcome = await run(request({"argv": ["sh", "-c", "echo partial; exit 3"]}))
    assert outcome == RunOutcome(ExecutionState.FAILED, exit_code=3, output="partial\n", error="exit code 3")


async def test_stdout_and_stderr_interleave_as_produced() -> None:
    outcome = await run(request({"argv": ["sh", "-c", "echo one; echo two >&2; echo three; echo four >&2"]}))
    assert outcome.output == "one\ntwo\nthree\nfour\n"


async def test_output_beyond_the_bound_is_read_but_not_kept() -> None:
    script = "import sys; sys.stdout.write('x' * (3 * 1024 * 1024)); sys.stdout.flush(); print('end')"
    outcome = await run(request({"argv": [sys.executable, "-c", script]}, capture_bytes=1024, timeout=BOUND))
    assert outcome.state is ExecutionState.SUCCEEDED, outcome.error
    assert outcome.exit_code == 0
    assert outcome.output == "x" * 1024
    assert outcome.output_truncated


async def test_truncation_does_not_split_a_character() -> None:
    outcome = await run(request({"argv": ["sh", "-c", "printf 'ééé'"]}, capture_bytes=5))
    assert (outcome.output, outcome.output_truncated) == ("éé", True)


async def test_invalid_utf8_is_replaced() -> None:
    outcome = await run(request({"argv": ["sh", "-c", "printf 'a\\377b'"]}))
    assert outcome.output == "a\ufffdb"


async def test_timeout_kills_the_whole_process_tree() -> None:
    lines = Lines()
    outcome_task = asyncio.ensure_future(
        run(request({"argv": ["sh", "-c", "sleep 100 & echo $!; sleep 100"]}, timeout=0.5), on_output=lines)
    )
    grandchild = int(await lines.first())
    outcome = await outcome_task
    assert outcome.state is ExecutionState.TIMED_OUT
    assert outcome.error == "timed out after 0.5s"
    assert outcome.exit_code == -15
    await wait_gone(grandchild)


async def test_cancel_stops_the_run() -> None:
    cancel = asyncio.Event()
    lines = Lines()
    outcome_task = asyncio.ensure_future(
        run(request({"argv": ["sh", "-c", "sleep 100 & echo $!; wait"]}), cancel, lines)
    )
    grandchild = int(await lines.first())
    started = time.monotonic()
    cancel.set()
    outcome = await outcome_task
    assert time.monotonic() - started < 1.0
    assert outcome.state is ExecutionState.CANCELLED
    assert outcome.error == "cancelled"
    await wait_gone(grandchild)


async def test_cancel_before_the_start_runs_nothing(tmp_path: Path) -> None:
    cancel = asyncio.Event()
    cancel.set()
    outcome = await run(request({"argv": ["touch", str(tmp_path / "ran")]}), cancel)
    assert outcome == RunOutcome(ExecutionState.CANCELLED, error="cancelled")
    assert not (tmp_path / "ran").exists()


async def test_a_process_ignoring_sigterm_is_killed_after_the_grace() -> None:
    grace = 0.3
    assert grace < KILL_GRACE
    cancel = asyncio.Event()
    lines = Lines()
    script = "trap '' TERM; echo ready; sleep 100"
    outcome_task = asyncio.ensure_future(
        run(request({"argv": ["sh", "-c", script]}), cancel, lines, ShellRunner(kill_grace=grace))
    )
    assert await lines.first() == "ready"
    started = time.monotonic()
    cancel.set()
    outcome = await outcome_task
    elapsed = time.monotonic() - started
    assert grace <= elapsed < grace + 1.0
    assert (outcome.state, outcome.exit_code, outcome.error) == (ExecutionState.CANCELLED, -9, "cancelled")


async def test_processes_left_behind_by_a_finished_program_are_stopped() -> None:
    outcome = await run(request({"argv": ["sh", "-c", "sleep 100 & echo $!"]}))
    assert outcome.state is ExecutionState.SUCCEEDED
    await wait_gone(int(outcome.output))


async def test_cancelling_the_workers_task_kills_the_group_and_propagates() -> None:
    lines = Lines()
    task = asyncio.ensure_future(
        ShellRunner().run(
            request({"argv": ["sh", "-c", "sleep 100 & echo $!; wait"]}), asyncio.Event(), lines
        )
    )
    grandchild = int(await lines.first())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, BOUND)
    await wait_gone(grandchild)


async def test_killed_by_a_signal() -> None:
    outcome = await run(request({"argv": ["sh", "-c", "kill -TERM $$"]}))
    assert (outcome.state, outcome.exit_code, outcome.error) == (
        ExecutionState.FAILED,
        -15,
        "killed by signal SIGTERM",
    )


async def test_missing_executable_fails() -> None:
    outcome = await run(request({"argv": ["cronwire-no-such-program", "--help"]}))
    assert outcome == RunOutcome(
        ExecutionState.FAILED, error="executable not found: cronwire-no-such-program"
    )


async def test_executable_without_permission_fails(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    outcome = await run(request({"argv": [str(script)]}))
    assert outcome == RunOutcome(ExecutionState.FAILED, error=f"executable not permitted: {script}")


@pytest.mark.parametrize("shell", [False, True], ids=["argv", "shell"])
async def test_missing_working_dir_fails(tmp_path: Path, shell: bool) -> None:
    missing = str(tmp_path / "nowhere")
    program: dict[str, Any] = {"shell": True, "command": "true"} if shell else {"argv": ["true"]}
    outcome = await run(request({**program, "working_dir": missing}))
    assert outcome == RunOutcome(ExecutionState.FAILED, error=f"working directory not found: {missing}")


async def test_working_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.touch()
    outcome = await run(request({"argv": ["true"], "working_dir": str(file)}))
    assert outcome == RunOutcome(ExecutionState.FAILED, error=f"working directory {file}: Not a directory")


async def test_nul_byte_in_an_argument_fails() -> None:
    outcome = await run(request({"argv": ["echo", "a\0b"]}))
    assert outcome.state is ExecutionState.FAILED
    assert outcome.error.startswith("cannot start: ")


async def test_on_output_receives_chunks_before_the_process_ends(tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = 'echo first; while [ ! -e "$1" ]; do sleep 0.01; done; echo second'
    lines = Lines()
    outcome_task = asyncio.ensure_future(
        run(request({"argv": ["sh", "-c", script, "sh", str(go)]}, timeout=BOUND), on_output=lines)
    )
    assert await lines.first() == "first"
    assert not outcome_task.done()
    go.touch()
    outcome = await outcome_task
    assert outcome.state is ExecutionState.SUCCEEDED
    assert "".join(lines.chunks) == outcome.output == "first\nsecond\n"


async def test_a_failing_on_output_does_not_break_the_run() -> None:
    def explode(chunk: str) -> None:
        raise RuntimeError("listener broke")

    outcome = await run(request({"argv": ["echo", "hi"]}), on_output=explode)
    assert outcome == RunOutcome(ExecutionState.SUCCEEDED, exit_code=0, output="hi\n")


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("CI runs the tests as root: switching the job's user must be tested")
        pytest.skip("needs root: only a root server runs jobs as another user")


@pytest.fixture
def server_only_file() -> Iterator[Path]:
    """A file of the server's, mode 600, in a directory anyone may enter: only its mode keeps a
    job of another user out."""
    shared = Path(tempfile.mkdtemp())
    shared.chmod(0o755)
    private = shared / "server-only"
    private.write_text("server secret")
    private.chmod(0o600)
    yield private
    shutil.rmtree(shared)


async def test_a_job_of_a_root_server_runs_as_its_user_in_a_directory_of_its_own(
    server_only_file: Path,
) -> None:
    need_root()
    nobody = JobUser.named("nobody")
    script = (
        "id -u; id -g; pwd; stat -c '%U %a' .; touch made-here && echo made; "
        f"cat {server_only_file} 2>/dev/null || echo unreadable; "
        "cat /proc/$PPID/environ >/dev/null 2>&1 || echo environ-unreadable"
    )
    outcome = await run(request({"shell": True, "command": script}), runner=ShellRunner(user=nobody))
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    uid, gid, cwd, owner, made, secret, environ = outcome.output.splitlines()
    assert (int(uid), int(gid)) == (nobody.uid, nobody.gid)
    assert os.path.basename(cwd).startswith("cronwire-run-")
    assert not await asyncio.to_thread(os.path.exists, cwd)  # removed after the run
    assert owner == "nobody 700"
    assert (made, secret, environ) == ("made", "unreadable", "environ-unreadable")


async def test_a_working_dir_the_job_user_cannot_enter_is_refused(server_only_file: Path) -> None:
    need_root()
    private = server_only_file.parent / "private"
    private.mkdir(mode=0o700)
    runner = ShellRunner(user=JobUser.named("nobody"))
    outcome = await run(request({"argv": ["true"], "working_dir": str(private)}), runner=runner)
    error = f"working directory not permitted: {private} (jobs run as nobody)"
    assert outcome == RunOutcome(ExecutionState.FAILED, error=error)


async def test_a_missing_program_is_named_when_switching_users() -> None:
    need_root()
    runner = ShellRunner(user=JobUser.named("nobody"))
    outcome = await run(request({"argv": ["no-such-program-here"]}), runner=runner)
    assert outcome == RunOutcome(ExecutionState.FAILED, error="executable not found: no-such-program-here")


async def test_a_python_job_runs_as_the_job_user() -> None:
    need_root()
    nobody = JobUser.named("nobody")
    # os is refused to python jobs unless the server allows it (--python-path-allow os).
    runner = PythonRunner(user=nobody, entry=EntryPolicy(allow=("os",)))
    outcome = await run(request({"callable": "os:getuid"}), runner=runner)
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    assert outcome.result == nobody.uid
