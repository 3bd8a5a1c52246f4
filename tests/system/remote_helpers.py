"""Remote workers for the tests: `cronwire worker run` processes serving a tasks module written
into the test's directory, and raw WorkerService streams for what the SDK never does."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cronwire.v1 import worker_pb2, worker_service_pb2
from cronwire.v1.worker_service_pb2_grpc import WorkerServiceStub
from tests.support import wait_for

# The tasks the worker processes serve. Markers (files in MARKERS) show what a task did.
TASKS = """
import asyncio, os, pathlib, time
import cronwire

MARKERS = pathlib.Path(os.environ["MARKERS"])
worker = cronwire.Worker(
    queues=os.environ["QUEUES"].split(","),
    concurrency=int(os.environ.get("CONCURRENCY", "2")),
    drain_grace=float(os.environ.get("DRAIN_GRACE", "5")),
)


def mark(name: str) -> None:
    (MARKERS / name).write_text(str(os.getpid()))


@worker.task("echo")
def echo(**arguments):
    print("echo says", arguments.get("word", ""))
    return {"arguments": arguments, "worker": worker.identity}


@worker.task("block-first")
def block_first(tag="run"):
    attempt = cronwire.current_task().attempt
    if attempt == 1:
        mark(f"{tag}-started-{attempt}")
        time.sleep(3600)
    print("attempt", attempt, "done")
    return {"attempt": attempt, "worker": worker.identity}


@worker.task("wait-cancel")
async def wait_cancel(tag="run"):
    mark(f"{tag}-started")
    try:
        while True:
            await asyncio.sleep(0.05)
    except asyncio.CancelledError:
        mark(f"{tag}-cancelled")
        raise


@worker.task("gate")
def gate(tag="run"):
    # Starts, then waits for the test to open the gate (the file `<tag>-go`).
    attempt = cronwire.current_task().attempt
    mark(f"{tag}-started-{attempt}")
    print("at the gate on attempt", attempt)
    while not (MARKERS / f"{tag}-go").exists():
        time.sleep(0.02)
    print("through the gate on attempt", attempt)
    return {"attempt": attempt, "worker": worker.identity}


@worker.task("fail")
def fail(retryable=True):
    if not retryable:
        raise cronwire.worker.NonRetryableError("no point in trying again")
    raise ValueError("bad input")
"""


@dataclass
class WorkerProcesses:
    """`cronwire worker run` processes; whatever is left is killed at teardown."""

    workdir: Path
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "remote_tasks.py").write_text(TASKS)
        self.markers.mkdir(exist_ok=True)

    @property
    def markers(self) -> Path:
        return self.workdir / "markers"

    def start(
        self, target: str, *, queues: str, identity: str, token: str = "", concurrency: int = 2
    ) -> subprocess.Popen[str]:
        command = [
            str(Path(sys.executable).parent / "cronwire"),
            "worker",
            "run",
            "remote_tasks:worker",
            "--server",
            target,
            "--identity",
            identity,
        ]
        if token:
            command += ["--token", token]
        with (self.workdir / f"{identity}.log").open("w") as log:
            process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "MARKERS": str(self.markers),
                    "QUEUES": queues,
                    "CONCURRENCY": str(concurrency),
                },
            )
        self.started.append(process)
        return process

    def marker(self, name: str) -> Path | None:
        path = self.markers / name
        return path if path.exists() else None

    def log(self, identity: str) -> str:
        return (self.workdir / f"{identity}.log").read_text()

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        for path in sorted(self.workdir.glob("*.log")):
            print(f"--- {path.name}:\n" + "\n".join(path.read_text().splitlines()[-30:]))


class RawWorker:
    """A WorkerService stream driven by hand: send requests, read responses with a deadline."""

    def __init__(self, target: str, token: str = "") -> None:
        self._channel = grpc.insecure_channel(target)
        self._requests: queue.Queue[worker_service_pb2.ConnectRequest | None] = queue.Queue()
        self.responses: queue.Queue[worker_service_pb2.ConnectResponse | grpc.RpcError] = queue.Queue()
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._call = WorkerServiceStub(self._channel).Connect(self._outgoing(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _outgoing(self) -> Iterator[worker_service_pb2.ConnectRequest]:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                self.responses.put(response)
        except grpc.RpcError as error:
            self.responses.put(error)

    def send(self, **message: object) -> None:
        self._requests.put(worker_service_pb2.ConnectRequest(**message))  # type: ignore[arg-type]

    def hello(self, queues: list[str], identity: str = "raw-worker", free_slots: int = 1) -> None:
        self.send(hello=worker_pb2.WorkerHello(identity=identity, queues=queues, free_slots=free_slots))

    def next(self, kind: str, timeout: float = 15.0) -> worker_service_pb2.ConnectResponse:
        """The next response of `kind` (others are skipped); fails on the stream's error."""

        def found() -> worker_service_pb2.ConnectResponse | None:
            try:
                response = self.responses.get(timeout=0.05)
            except queue.Empty:
                return None
            if isinstance(response, grpc.RpcError):
                raise AssertionError(f"the stream ended: {response}")
            return response if response.WhichOneof("message") == kind else None

        return wait_for(found, timeout, f"a {kind} from the server")

    def error(self, timeout: float = 15.0) -> grpc.RpcError:
        """The error the stream ended with."""

        def ended() -> grpc.RpcError | None:
            with contextlib.suppress(queue.Empty):
                response = self.responses.get(timeout=0.05)
                if isinstance(response, grpc.RpcError):
                    return response
            return None

        return wait_for(ended, timeout, "the stream to end")

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self._channel.close()
