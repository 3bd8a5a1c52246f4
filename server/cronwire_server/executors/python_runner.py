"""The `python` executor: calls `module:function` in a child interpreter.

The child is run by the `shell` runner, so it gets the same treatment as a
program: the same user (never the server's privileges), its own session,
killed as a group on timeout or cancel (SIGTERM, then SIGKILL after the kill
grace), the same fresh environment with the
`CRONWIRE_*` variables (`CRONWIRE_ARGUMENTS` among them), and stdout and stderr
captured and streamed as output. It runs `_python_entry`, which imports the
module (the working directory is on its search path), calls the function with
`args` and `kwargs` (and `cronwire=`, the run's context, if it has a parameter of
that name), awaits it with `asyncio.run` if it is a coroutine function, and
writes a JSON reply to a file of a private temporary directory: the reply
never mixes with the output, and the function may print whatever it likes.

The module must be one the server's `EntryPolicy` permits (`--python-path-allow`;
by default not `os`, `builtins`, `subprocess` and the like): the runner refuses
others before starting anything, and the child refuses a function reached
through a refused module (`tasks:os.system`) or belonging to one.

The run succeeds when the function returns: its value, if JSON can hold it, is
the result, else `{"repr": "..."}`. An exception, or a module or function that
cannot be found, fails the run with `"Type: message"` and the result
`{"exception": {"type", "message", "traceback"}}`; the traceback is in the
output too. A child that exits without a reply (`sys.exit`, `os._exit`, a
signal) fails the run with its exit code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.entry_policy import EntryPolicy
from cronwire_server.executors.jobuser import JobUser
from cronwire_server.executors.runtime import OutputCallback, RunOutcome, RunRequest, cancelled_outcome
from cronwire_server.executors.shell import KILL_GRACE, ShellRunner, _exit_error

__all__ = ["RESULT_LIMIT", "PythonRunner"]

# Bytes of JSON a returned value may take; a larger one is recorded as {"omitted": <bytes>}.
RESULT_LIMIT = 1024 * 1024

# The entry's source is handed to the interpreter under `-c` rather than run as
# `-m cronwire_server...` or as its file: the job's interpreter needs no cronwire,
# the job's user need not be able to read the server's installation, and the
# search path starts with the working directory instead of this package's.
_ENTRY = Path(__file__).with_name("_python_entry.py").read_text(encoding="utf-8")
_CALL, _REPLY = "call.json", "reply.json"


class PythonRunner:
    """Runs `python` jobs. `kill_grace` is the seconds between SIGTERM and SIGKILL; `entry`, the
    modules a job may call (by default every one but those that run programs or code)."""

    def __init__(
        self,
        *,
        kill_grace: float = KILL_GRACE,
        result_limit: int = RESULT_LIMIT,
        user: JobUser | None = None,
        entry: EntryPolicy | None = None,
    ) -> None:
        self._shell = ShellRunner(kill_grace=kill_grace, user=user)
        self.result_limit = result_limit
        self.entry = entry or EntryPolicy()

    async def run(
        self,
        request: RunRequest,
        cancel: asyncio.Event,
        on_output: OutputCallback | None = None,
    ) -> RunOutcome:
        if cancel.is_set():
            return cancelled_outcome()
        # Checked at create and update too; again here, for jobs stored before (or by a server
        # with another --python-path-allow).
        refused = self.entry.violations(request.parameters)
        if refused:
            return RunOutcome(ExecutionState.FAILED, error=f"refused: {refused[0].description}")
        # Made here, so that the `finally` below removes it whatever happens next.
        directory = tempfile.mkdtemp(prefix="cronwire-python-")
        try:
            # The child writes its reply there, as the job's user.
            self._shell.user.own(directory)
            await asyncio.to_thread(_write_call, directory, request, self.result_limit, self.entry)
            ran = await self._shell.run(_child_request(request, directory), cancel, on_output)
            # Stopped, or never started (exit_code None): the shell runner's outcome says it all.
            if ran.state in (ExecutionState.TIMED_OUT, ExecutionState.CANCELLED) or ran.exit_code is None:
                return ran
            reply = await asyncio.to_thread(_read_reply, directory, self.result_limit)
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)
        return _outcome(ran, reply)


def _write_call(directory: str, request: RunRequest, reply_limit: int, entry: EntryPolicy) -> None:
    """What the child is to call, in the private directory where it writes its reply."""
    parameters = request.parameters
    call = {
        "callable": parameters["callable"],
        "args": parameters.get("args", []),
        "kwargs": parameters.get("kwargs", {}),
        "context": {
            "arguments": request.arguments,
            "execution": request.execution_name,
            "scheduled_time": request.scheduled_time.isoformat(),
            "attempt": request.attempt,
            "lease_token": request.lease_token,
        },
        "reply_limit": reply_limit,
        "policy": entry.to_json(),
    }
    with open(os.path.join(directory, _CALL), "w", encoding="utf-8") as file:
        json.dump(call, file, default=str)


def _child_request(request: RunRequest, directory: str) -> RunRequest:
    """The request as a `shell` run of the entry."""
    parameters = request.parameters
    python: str = parameters.get("python") or sys.executable
    argv = [python, "-c", _ENTRY, os.path.join(directory, _CALL), os.path.join(directory, _REPLY)]
    # Unbuffered, so output streams as printed and survives os._exit; the job may say otherwise.
    shell: dict[str, Any] = {"argv": argv, "env": {"PYTHONUNBUFFERED": "1", **parameters.get("env", {})}}
    if "working_dir" in parameters:
        shell["working_dir"] = parameters["working_dir"]
    return dataclasses.replace(request, parameters=shell)


def _read_reply(directory: str, limit: int) -> dict[str, Any] | None:
    """The child's reply; None when it wrote none (or something that is not one)."""
    try:
        with open(os.path.join(directory, _REPLY), "rb") as file:
            # The entry keeps a reply within the limit plus its bounded error texts.
            data = file.read(limit + 1024 * 1024)
    except FileNotFoundError:
        return None
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


def _outcome(ran: RunOutcome, reply: dict[str, Any] | None) -> RunOutcome:
    if reply is None:
        return dataclasses.replace(
            ran, state=ExecutionState.FAILED, error=f"exited without a result: {_exit_error(ran.exit_code)}"
        )
    if "error" in reply:
        return dataclasses.replace(
            ran,
            state=ExecutionState.FAILED,
            error=str(reply["error"]),
            result={"exception": reply.get("exception")},
        )
    if "value" in reply:
        result = reply["value"]
    elif "repr" in reply:
        result = {"repr": reply["repr"]}
    else:
        result = {"omitted": f"a result of {reply.get('omitted')} bytes of JSON, over the limit"}
    if ran.exit_code != 0:
        # It returned, then the interpreter failed on its way out (an atexit hook, a thread).
        error = f"returned, then failed on exit: {_exit_error(ran.exit_code)}"
        return dataclasses.replace(ran, state=ExecutionState.FAILED, error=error, result=result)
    return dataclasses.replace(ran, state=ExecutionState.SUCCEEDED, error="", result=result)
