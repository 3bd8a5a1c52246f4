"""The python executor with real child interpreters: calls, results, exceptions, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.python_runner import PythonRunner
from cronwire_server.executors.runners import runner_for
from cronwire_server.executors.runtime import RunOutcome, RunRequest
from tests.support import eventually

SCHEDULED = datetime(2025, 3, 30, 1, 30, tzinfo=UTC)
# Every run is bounded, so a broken runner fails the test instead of hanging it.
BOUND = 10.0

TASKS = """
import asyncio
import os
import sys
import time


def add(a, b, *, scale=1):
    return {"sum": (a + b) * scale}


def context(cronwire):
    return {"cronwire": cronwire, "env": os.environ["CRONWIRE_ARGUMENTS"]}


def anything(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


class Boom(Exception):
    pass


def explode(n):
    raise Boom(f"bad {n}")


async def double_later(x):
    await asyncio.sleep(0)
    return x * 2


def unserialisable():
    return {1, 2}


def chatty():
    print("to stdout")
    print("to stderr", file=sys.stderr)
    return "done"


def sleepy():
    print(os.getpid())
    time.sleep(60)


def vanish():
    os._exit(3)


class Jobs:
    @staticmethod
    def nightly(day):
        return f"nightly {day}"


NOT_A_FUNCTION = 42
"""


@pytest.fixture
def tasks_dir(tmp_path: Path) -> Path:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    return tmp_path


def request(
    tasks_dir: Path,
    call: str,
    *,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
    timeout: float | None = None,
    **parameters: Any,
) -> RunRequest:
    parameters = {"callable": call, "working_dir": str(tasks_dir), **parameters}
    if args is not None:
        parameters["args"] = args
    if kwargs is not None:
        parameters["kwargs"] = kwargs
    return RunRequest(
        execution_name="namespaces/ops/executions/e-1",
        job_name="namespaces/ops/jobs/nightly",
        parameters=parameters,
        arguments=arguments if arguments is not None else {},
        scheduled_time=SCHEDULED,
        attempt=2,
        timeout=timedelta(seconds=timeout) if timeout is not None else None,
        lease_token="lease-1",
    )


async def run(
    req: RunRequest,
    cancel: asyncio.Event | None = None,
    on_output: Callable[[str], None] | None = None,
    runner: PythonRunner | None = None,
) -> RunOutcome:
    runner = runner or PythonRunner()
    return await asyncio.wait_for(runner.run(req, cancel or asyncio.Event(), on_output), BOUND)


def gone(pid: int) -> bool:
    """Whether the process has ended (a zombie has: it waits only to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def wait_gone(pid: int) -> None:
    await eventually(lambda: gone(pid), 2.0, f"process {pid} to end")


class FirstLine:
    """An on_output callback that lets a test await the first line of output."""

    def __init__(self) -> None:
        self.text = ""
        self.seen = asyncio.Event()

    def __call__(self, chunk: str) -> None:
        self.text += chunk
        if "\n" in self.text:
            self.seen.set()

    async def get(self) -> str:
        await asyncio.wait_for(self.seen.wait(), BOUND)
        return self.text.partition("\n")[0]


def test_runner_for_python_is_a_python_runner() -> None:
    assert isinstance(runner_for("python"), PythonRunner)


async def test_return_value_is_the_result_and_args_and_kwargs_are_passed(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "tasks:add", args=[2, 3], kwargs={"scale": 10}))
    assert outcome == RunOutcome(ExecutionState.SUCCEEDED, exit_code=0, result={"sum": 50})


async def test_only_args_and_kwargs_reach_a_function_without_a_cronwire_parameter(tasks_dir: Path) -> None:
    outcome = await run(
        request(tasks_dir, "tasks:anything", args=[1, "two"], kwargs={"k": [3]}, arguments={"day": "mon"})
    )
    assert outcome.result == {"args": [1, "two"], "kwargs": {"k": [3]}}


async def test_a_cronwire_parameter_gets_the_run_and_the_environment_has_the_arguments(
    tasks_dir: Path,
) -> None:
    outcome = await run(request(tasks_dir, "tasks:context", arguments={"day": "mon", "n": 2}))
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    assert outcome.result == {
        "cronwire": {
            "arguments": {"day": "mon", "n": 2},
            "execution": "namespaces/ops/executions/e-1",
            "scheduled_time": "2025-03-30T01:30:00+00:00",
            "attempt": 2,
            "lease_token": "lease-1",
        },
        "env": json.dumps({"day": "mon", "n": 2}),
    }


async def test_a_dotted_attribute_path_is_followed(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "tasks:Jobs.nightly", args=["mon"]))
    assert (outcome.state, outcome.result) == (ExecutionState.SUCCEEDED, "nightly mon")


async def test_an_exception_fails_the_run_with_its_type_message_and_traceback(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "tasks:explode", args=[7]))
    assert outcome.state is ExecutionState.FAILED
    assert outcome.exit_code == 1
    assert outcome.error == "tasks.Boom: bad 7"
    exception = outcome.result["exception"]
    assert (exception["type"], exception["message"]) == ("tasks.Boom", "bad 7")
    traceback = exception["traceback"]
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert 'in explode\n    raise Boom(f"bad {n}")' in traceback
    assert traceback.endswith("tasks.Boom: bad 7\n")
    # The call starts at the job's function: the executor's own frames are left out.
    assert "_python_entry" not in traceback
    assert traceback in outcome.output


async def test_an_async_function_is_awaited(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "tasks:double_later", args=[21]))
    assert (outcome.state, outcome.result) == (ExecutionState.SUCCEEDED, 42)


async def test_a_value_json_cannot_hold_is_recorded_as_its_repr(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "tasks:unserialisable"))
    assert (outcome.state, outcome.result) == (ExecutionState.SUCCEEDED, {"repr": "{1, 2}"})


async def test_a_result_over_the_limit_is_omitted(tasks_dir: Path) -> None:
    outcome = await run(
        request(tasks_dir, "tasks:anything", args=["x" * 500]), runner=PythonRunner(result_limit=100)
    )
    assert outcome.state is ExecutionState.SUCCEEDED
    assert set(outcome.result) == {"omitted"}


async def test_stdout_and_stderr_are_the_output_and_stream_live(tasks_dir: Path) -> None:
    chunks: list[str] = []
    outcome = await run(request(tasks_dir, "tasks:chatty"), on_output=chunks.append)
    assert outcome == RunOutcome(
        ExecutionState.SUCCEEDED, exit_code=0, output="to stdout\nto stderr\n", result="done"
    )
    assert "".join(chunks) == outcome.output


async def test_a_timeout_kills_the_child(tasks_dir: Path) -> None:
    first = FirstLine()
    outcome = await run(request(tasks_dir, "tasks:sleepy", timeout=0.5), on_output=first)
    assert outcome.state is ExecutionState.TIMED_OUT
    assert outcome.error == "timed out after 0.5s"
    await wait_gone(int(await first.get()))


async def test_cancel_stops_the_child(tasks_dir: Path) -> None:
    first, cancel = FirstLine(), asyncio.Event()
    running = asyncio.ensure_future(run(request(tasks_dir, "tasks:sleepy"), cancel, first))
    pid = int(await first.get())
    cancel.set()
    outcome = await running
    assert (outcome.state, outcome.error) == (ExecutionState.CANCELLED, "cancelled")
    await wait_gone(pid)


async def test_a_missing_module_fails_clearly(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "no_such_module:main"))
    assert outcome.state is ExecutionState.FAILED
    assert outcome.error == (
        "cannot import no_such_module: ModuleNotFoundError: No module named 'no_such_module'"
    )
    assert outcome.result["exception"]["type"] == "ModuleNotFoundError"


async def test_a_missing_attribute_fails_clearly(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "tasks:Jobs.weekly"))
    assert outcome.state is ExecutionState.FAILED
    assert outcome.error == (
        "cannot find tasks:Jobs.weekly: AttributeError: type object 'Jobs' has no attribute 'weekly'"
    )


async def test_something_not_callable_fails_clearly(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "tasks:NOT_A_FUNCTION"))
    assert outcome.state is ExecutionState.FAILED
    assert outcome.error == "cannot call tasks:NOT_A_FUNCTION: not callable (int)"


async def test_exiting_without_a_result_fails_with_the_exit_code(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "tasks:vanish"))
    assert (outcome.state, outcome.exit_code) == (ExecutionState.FAILED, 3)
    assert outcome.error == "exited without a result: exit code 3"


async def test_a_missing_interpreter_fails_to_start(tasks_dir: Path) -> None:
    outcome = await run(request(tasks_dir, "tasks:add", python=str(tasks_dir / "no-python")))
    assert outcome.state is ExecutionState.FAILED
    assert outcome.error == f"executable not found: {tasks_dir / 'no-python'}"


async def test_the_call_files_are_removed(tasks_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tasks_dir / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    outcome = await run(request(tasks_dir, "tasks:add", args=[1, 1]))
    assert outcome.result == {"sum": 2}
    assert os.listdir(scratch) == []
