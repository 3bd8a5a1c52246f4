"""Remote workers: run your own functions as the jobs of cronwire schedules.

    import cronwire

    worker = cronwire.Worker("127.0.0.1:50051", queues=["billing"], token="cwk_...")

    @worker.task("send-invoices")
    def send_invoices(month: str) -> dict:
        print("sending the invoices of", month)     # captured: the execution's output
        return {"sent": 42}                          # the execution's result

    worker.run()                                     # or: cronwire worker run myapp.tasks:worker

A job with executor `remote` and parameters `{"queue": "billing", "task": "send-invoices"}` then
runs here: the server pushes its executions over one WorkerService stream, at most `concurrency`
at once. Each task is called with the execution's arguments as keyword arguments; what it
returns (any JSON value) is the result; an exception fails the attempt (retried under the job's
retry policy unless it is a `NonRetryableError`). `print` and `logging` inside a task are the
execution's output. Heartbeats are automatic; a broken stream is reconnected with backoff (to
the next target, when several are given), and the runs still going are taken over again if
their leases have not expired. SIGTERM (or `stop()`) drains: no new work, running tasks get
`drain_grace` seconds to finish, the rest are given back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import io
import logging
import os
import random
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO, TypeVar

import grpc
from google.protobuf import json_format, struct_pb2

from cronwire._channel import TLSConfig, call_metadata, channel_options, tls_config
from cronwire._version import __version__
from cronwire.v1 import worker_pb2, worker_service_pb2, worker_service_pb2_grpc

__all__ = ["NonRetryableError", "TaskContext", "Worker", "current_task"]

log = logging.getLogger("cronwire.worker")

F = TypeVar("F", bound=Callable[..., Any])

OUTPUT_CHUNK = 32 * 1024
OUTPUT_FLUSH_SECONDS = 0.2
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 10.0
# Errors that no reconnect mends: the worker stops with them.
FATAL = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


# The end of a stream's responses (grpc-stubs does not declare it).
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009


class NonRetryableError(Exception):
    """Raise it from a task to fail the attempt for good: the job's retry policy does not apply."""


@dataclass(frozen=True)
class TaskContext:
    """The execution a task runs for (`current_task()` inside a task)."""

    execution: str
    job: str
    task: str
    attempt: int
    scheduled_time: datetime | None
    deadline: datetime | None
    cancelled: threading.Event


_current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("cronwire_task", default=None)


def current_task() -> TaskContext:
    """The execution the calling task runs for; LookupError outside a task."""
    run = _current.get()
    if run is None:
        raise LookupError("not inside a cronwire task")
    return run.context


@dataclass
class _Run:
    execution: str
    token: str
    context: TaskContext
    task: asyncio.Task[None] | None = None
    output: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False

    def write(self, text: str) -> None:
        with self.lock:
            self.output.append(text)

    def take_output(self) -> str:
        with self.lock:
            text = "".join(self.output)
            self.output.clear()
        return text


class _CapturedStream(io.TextIOBase):
    """`sys.stdout`/`sys.stderr` while a worker runs: text written inside a task goes to its
    execution's output (and on to the real stream); elsewhere, only to the real stream."""

    def __init__(self, real: TextIO) -> None:
        self.real = real

    def write(self, text: str) -> int:
        run = _current.get()
        if run is not None:
            run.write(text)
        return self.real.write(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return self.real.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.real, "encoding", "utf-8")


class _CapturedLogs(logging.Handler):
    """Log records made inside a task, formatted, into its execution's output."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        run = _current.get()
        if run is not None and not record.name.startswith("cronwire.worker"):
            run.write(self.format(record) + "\n")


class _Stop(Exception):
    pass


def _default_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


class Worker:
    """A remote worker: registers tasks, then `run()` serves them until SIGTERM/SIGINT or `stop()`.

    Args:
        target: the server, `host:port`; several, comma-separated, are tried in turn on reconnect.
            None: set by `cronwire worker run` from its --server (or CRONWIRE_SERVER).
        queues: the queues to take work from (the jobs' `queue` parameter).
        token: a key with role `worker` for those queues (`cronwire-server keys create --role
            worker --queues ...`); None with auth off.
        tls: True for TLS with the system's CAs, or a TLSConfig.
        concurrency: how many tasks run at once.
        namespaces: only these namespaces' work (default: every one the key covers).
        identity: how the worker is shown (default `host:pid`).
        drain_grace: seconds running tasks get to finish when the worker stops.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        queues: Sequence[str],
        token: str | None = None,
        tls: bool | TLSConfig = False,
        concurrency: int = 4,
        namespaces: Sequence[str] = (),
        identity: str | None = None,
        drain_grace: float = 30.0,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.target = target
        self.queues = tuple(queues)
        self.token = token
        self.tls = tls
        self.concurrency = concurrency
        self.namespaces = tuple(namespaces)
        self.identity = identity or _default_identity()
        self.drain_grace = drain_grace
        self._tasks: dict[str, Callable[..., Any]] = {}
        self._runs: dict[str, _Run] = {}  # by lease token
        self._outbox: asyncio.Queue[worker_service_pb2.ConnectRequest] | None = None
        self._pending: list[worker_service_pb2.ConnectRequest] = []  # results waiting for a stream
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        # Plain functions run in threads of their own, as many as tasks may run at once (the
        # event loop's default executor has a few, whatever the concurrency).
        self._threads: ThreadPoolExecutor | None = None
        self._slots_due = False  # a slots message is on its way (see `_announce_slots`)

    # Registration

    def task(self, name: str) -> Callable[[F], F]:
        """Register a function (plain or `async def`) as the task `name`."""

        def register(function: F) -> F:
            if name in self._tasks:
                raise ValueError(f"task {name!r} is registered already")
            self._tasks[name] = function
            return function

        return register

    @property
    def tasks(self) -> list[str]:
        return sorted(self._tasks)

    # Running

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (then drain), in a new event loop. Without a logging
        configuration, log records of level INFO and above are shown (and captured in tasks)."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(self.serve(handle_signals=True))

    def stop(self) -> None:
        """Drain and stop (safe from any thread)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)

    async def serve(self, *, handle_signals: bool = False) -> None:
        """Serve until `stop()` (or a signal, with `handle_signals`), reconnecting as needed."""
        if not self.target:
            raise ValueError("no target: give Worker(target=...) or run it with `cronwire worker run`")
        if not self._tasks:
            raise ValueError("no tasks registered: decorate functions with @worker.task(name)")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._draining = False
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="cronwire-task")
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(signum, self._stopping.set)
        stdout, stderr = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _CapturedStream(stdout), _CapturedStream(stderr)
        handler = _CapturedLogs()
        logging.getLogger().addHandler(handler)
        targets = [t.strip() for t in self.target.split(",") if t.strip()]
        attempt = 0
        try:
            while True:
                target = targets[attempt % len(targets)]
                try:
                    await self._connect(target)
                    return  # drained
                except grpc.aio.AioRpcError as error:
                    if error.code() in FATAL:
                        raise
                    log.warning(
                        "cronwire worker: stream to %s broke (%s); reconnecting", target, error.details()
                    )
                except (OSError, _Stop) as error:
                    log.warning("cronwire worker: stream to %s broke (%s); reconnecting", target, error)
                if self._stopping.is_set() and not self._runs:
                    return
                attempt += 1
                backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._stopping.wait()
        finally:
            logging.getLogger().removeHandler(handler)
            sys.stdout, sys.stderr = stdout, stderr
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(signum)
            for run in self._runs.values():
                if run.task is not None:
                    run.task.cancel()
            # Threads still running a plain function (past the drain's grace) are not waited for.
            self._threads.shutdown(wait=False, cancel_futures=True)

    def _free(self) -> int:
        if self._draining:
            return 0
        return max(0, self.concurrency - len(self._runs))

    def _send(self, request: worker_service_pb2.ConnectRequest) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(request)
        elif request.WhichOneof("message") in ("result", "release"):
            self._pending.append(request)

    async def _connect(self, target: str) -> None:
        tls = tls_config(self.tls)
        options = channel_options(
            user_agent=f"cronwire-worker/{__version__}", retry_reads=False, tls=tls, extra=()
        )
        channel = (
            grpc.aio.secure_channel(target, tls.credentials(), options=options)
            if tls is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        async with channel:
            stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
            call: Any = stub.Connect(metadata=call_metadata(self.token))  # type: ignore[call-arg]
            hello = worker_pb2.WorkerHello(
                identity=self.identity,
                queues=self.queues,
                tasks=self.tasks,
                free_slots=self._free(),
                agent=f"cronwire-python/{__version__}",
                namespaces=self.namespaces,
            )
            await call.write(worker_service_pb2.ConnectRequest(hello=hello))
            first = await call.read()
            if first is _EOF or first.WhichOneof("message") != "welcome":
                raise _Stop("the server did not welcome the worker")
            interval = max(first.welcome.heartbeat_interval.ToTimedelta().total_seconds(), 0.05)
            log.info(
                "cronwire worker %s connected to %s (queues %s)", self.identity, target, ",".join(self.queues)
            )
            self._outbox = asyncio.Queue()
            # Take over the runs still going (a reconnect), then deliver what ended meanwhile.
            self._heartbeat_now()
            for request in self._pending:
                self._outbox.put_nowait(request)
            self._pending.clear()
            assert self._stopping is not None
            helpers = [
                asyncio.ensure_future(self._write(call)),
                asyncio.ensure_future(self._read(call)),
                asyncio.ensure_future(self._heartbeats(interval)),
                asyncio.ensure_future(self._flush_output()),
            ]
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                done, _ = await asyncio.wait([*helpers, stopping], return_when=asyncio.FIRST_COMPLETED)
                for helper in helpers:
                    if helper in done:
                        helper.result()  # its error: the stream broke
                        raise _Stop("the server ended the stream")
                await self._drain()
                await self._outbox.join()
                await call.done_writing()
            finally:
                for pending in [*helpers, stopping]:
                    pending.cancel()
                # Results not written yet wait for the next stream.
                while not self._outbox.empty():
                    request = self._outbox.get_nowait()
                    if request.WhichOneof("message") in ("result", "release"):
                        self._pending.append(request)
                self._outbox = None

    async def _write(self, call: Any) -> None:
        assert self._outbox is not None
        outbox = self._outbox
        while True:
            request = await outbox.get()
            try:
                await call.write(request)
            except BaseException as error:
                if request.WhichOneof("message") in ("result", "release"):
                    self._pending.append(request)
                if isinstance(error, asyncio.InvalidStateError):
                    # grpc's word for a write to a stream the server already ended (a worker
                    # thawed after its stream was closed): reconnect, like any broken stream.
                    raise _Stop("the server ended the stream") from error
                raise
            finally:
                outbox.task_done()

    async def _read(self, call: Any) -> None:
        while True:
            response = await call.read()
            if response is _EOF:
                return
            kind = response.WhichOneof("message")
            if kind == "assignment":
                self._start(response.assignment)
            elif kind == "cancel":
                run = self._runs.get(response.cancel.lease_token)
                if run is not None:
                    log.info("cronwire worker: %s %s; stopping it", run.execution, response.cancel.reason)
                    run.context.cancelled.set()
                    if run.task is not None:
                        run.task.cancel()
            elif kind == "refused":
                refused = response.refused
                log.warning(
                    "cronwire worker: the server refused a message about %s: %s",
                    refused.execution,
                    refused.message,
                )

    def _heartbeat_now(self) -> None:
        # The runs going, and those whose result waits to be delivered (a reconnect takes them
        # over before their results arrive).
        leases = [worker_pb2.HeldLease(execution=r.execution, lease_token=t) for t, r in self._runs.items()]
        for request in self._pending:
            kind = request.WhichOneof("message")
            if kind in ("result", "release"):
                ended = getattr(request, kind)
                leases.append(worker_pb2.HeldLease(execution=ended.execution, lease_token=ended.lease_token))
        self._send(worker_service_pb2.ConnectRequest(heartbeat=worker_pb2.WorkerHeartbeat(leases=leases)))

    async def _heartbeats(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._heartbeat_now()

    async def _flush_output(self) -> None:
        while True:
            await asyncio.sleep(OUTPUT_FLUSH_SECONDS)
            for run in list(self._runs.values()):
                self._send_output(run)

    def _send_output(self, run: _Run) -> None:
        text = run.take_output()
        while text:
            chunk, text = text[:OUTPUT_CHUNK], text[OUTPUT_CHUNK:]
            self._send(
                worker_service_pb2.ConnectRequest(
                    output=worker_pb2.OutputChunk(execution=run.execution, lease_token=run.token, text=chunk)
                )
            )

    def _start(self, assignment: worker_pb2.ExecutionAssignment) -> None:
        if self._free() <= 0:
            # Pushed before the server learnt that this worker is full: give it back.
            self._send(
                worker_service_pb2.ConnectRequest(
                    release=worker_pb2.LeaseRelease(
                        execution=assignment.execution, lease_token=assignment.lease_token
                    )
                )
            )
            return
        context = TaskContext(
            execution=assignment.execution,
            job=assignment.job,
            task=assignment.task,
            attempt=assignment.attempt,
            scheduled_time=assignment.scheduled_time.ToDatetime()
            if assignment.HasField("scheduled_time")
            else None,
            deadline=assignment.deadline.ToDatetime() if assignment.HasField("deadline") else None,
            cancelled=threading.Event(),
        )
        run = _Run(assignment.execution, assignment.lease_token, context)
        self._runs[run.token] = run
        arguments = (
            json_format.MessageToDict(assignment.arguments) if assignment.HasField("arguments") else {}
        )
        run.task = asyncio.ensure_future(self._execute(run, assignment.task, arguments))

    def _function(self, task: str) -> Callable[..., Any] | None:
        if task:
            return self._tasks.get(task)
        return next(iter(self._tasks.values())) if len(self._tasks) == 1 else None

    async def _execute(self, run: _Run, task: str, arguments: dict[str, Any]) -> None:
        token = _current.set(run)
        result: worker_pb2.TaskResult
        try:
            function = self._function(task)
            if function is None:
                raise NonRetryableError(
                    f"this worker has no task {task!r}"
                    if task
                    else "the job names no task and this worker has several"
                )
            value: Any
            if inspect.iscoroutinefunction(function):
                value = await function(**arguments)
            else:
                # In a thread that carries this task's context (its output capture).
                assert self._threads is not None
                call = functools.partial(contextvars.copy_context().run, function, **arguments)
                value = await asyncio.get_running_loop().run_in_executor(self._threads, call)
                if inspect.isawaitable(value):
                    value = await value
            result = worker_pb2.TaskResult(success=worker_pb2.TaskSuccess())
            if value is not None:
                json_format.ParseDict(_jsonable(value), result.success.result)
        except asyncio.CancelledError:
            if not run.context.cancelled.is_set():
                raise  # the worker itself stops: nothing to report
            result = worker_pb2.TaskResult(
                failure=worker_pb2.TaskFailure(type="Cancelled", message="cancelled", retryable=False)
            )
        except Exception as error:
            details = struct_pb2.Struct()
            details.update({"traceback": "".join(traceback.format_exception(error))[-16000:]})
            result = worker_pb2.TaskResult(
                failure=worker_pb2.TaskFailure(
                    type=type(error).__name__,
                    message=str(error)[:4000],
                    details=details,
                    retryable=not isinstance(error, NonRetryableError),
                )
            )
        finally:
            _current.reset(token)
        run.done = True
        self._send_output(run)
        result.execution, result.lease_token = run.execution, run.token
        self._send(worker_service_pb2.ConnectRequest(result=result))
        self._runs.pop(run.token, None)
        self._announce_slots()

    def _announce_slots(self) -> None:
        """Tell the server the free slots once the results of this turn of the loop are sent:
        one message for the tasks that end together."""
        if not self._slots_due:
            self._slots_due = True
            asyncio.get_running_loop().call_soon(self._send_slots)

    def _send_slots(self) -> None:
        self._slots_due = False
        self._send(worker_service_pb2.ConnectRequest(slots=worker_pb2.WorkerSlots(free_slots=self._free())))

    async def _drain(self) -> None:
        """No new work; running tasks get the grace to finish; the rest are given back."""
        self._draining = True
        self._send(worker_service_pb2.ConnectRequest(slots=worker_pb2.WorkerSlots(free_slots=0)))
        running = [r.task for r in self._runs.values() if r.task is not None]
        if running:
            log.info(
                "cronwire worker: draining, %d tasks running (up to %gs)", len(running), self.drain_grace
            )
            await asyncio.wait(running, timeout=self.drain_grace)
        for run in list(self._runs.values()):
            if run.task is not None:
                run.task.cancel()
            self._runs.pop(run.token, None)
            self._send(
                worker_service_pb2.ConnectRequest(
                    release=worker_pb2.LeaseRelease(execution=run.execution, lease_token=run.token)
                )
            )


def _jsonable(value: Any) -> Any:
    """`value` as JSON would carry it (tuples as lists, other objects as their text)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def load(reference: str) -> Worker:
    """The Worker at `package.module:attribute`, imported with the current directory on the path."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{reference!r} is not `package.module:worker`")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    import importlib

    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    if not isinstance(found, Worker):
        raise ValueError(f"{reference} is a {type(found).__name__}, not a cronwire.Worker")
    return found
