"""Start a server as a subprocess, learn its port from its port file, stop it with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 60.0
# Benchmarked servers serve no HTTP listener (dashboard, metrics) unless a benchmark asks with a
# flag: it would take a fixed port and add the RPC metrics to every call. A variable, not a flag,
# so that servers of trees older than the listener start alike.
QUIET_HTTP = {"CRONWIRE_HTTP_ADDRESS": ""}


def quiet_http(argv: Sequence[str]) -> dict[str, str]:
    """QUIET_HTTP, unless `argv` asks for the listener (`--metrics-address`, `--http-address`)."""
    asked = any(a.split("=")[0] in ("--metrics-address", "--http-address") for a in argv)
    return {} if asked else QUIET_HTTP


STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.05


class ServerFailed(RuntimeError):
    pass


class ServerProcess:
    """A server started with `--port-file`, bound to 127.0.0.1 on a free port.

    Its output goes to a log file beside the port file, shown when it fails to start.
    """

    def __init__(
        self,
        argv: Sequence[str],
        workdir: Path,
        name: str,
        *,
        poll_interval: float = POLL_INTERVAL_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self._env = dict(env or {})  # beside (over) this process's environment
        self._poll_interval = poll_interval
        self._argv = list(argv)
        self._port_file = workdir / f"{name}.port"
        self._log_path = workdir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        # Seconds from spawning the process to its port file appearing (0 until started).
        self.startup_seconds = 0.0

    @property
    def pid(self) -> int:
        """The process id while it runs, else 0."""
        return self._process.pid if self._process is not None else 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> ServerProcess:
        self._port_file.unlink(missing_ok=True)
        spawned = time.monotonic()
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [*self._argv, "--port-file", str(self._port_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._port_file.parent,
                # Unbuffered, so the log tail shown on a failed start is complete.
                env={**quiet_http(self._argv), **os.environ, **self._env, "PYTHONUNBUFFERED": "1"},
            )
        try:
            self.port = self._wait_for_port(timeout)
            self.startup_seconds = time.monotonic() - spawned
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_port(self, timeout: float) -> int:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self._process.returncode}\n{self.log_tail()}")
            port = _read_port(self._port_file)
            if port:
                return port
            time.sleep(self._poll_interval)
        raise ServerFailed(f"{self.name} wrote no port file within {timeout:.0f} s\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop in time. Returns the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"{self.name} ignored SIGTERM for {timeout:.0f} s; killing it", file=sys.stderr)
                process.kill()
                process.wait()
        return process.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _read_port(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def rss_bytes(pid: int) -> int:
    """The resident set size of a running process (VmRSS in /proc/PID/status, Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds a running process has used so far, and seconds its threads were runnable
    but waited for a CPU (Linux; summed over the threads alive now).

    From /proc/PID/task/*/schedstat, which the scheduler keeps in nanoseconds: the
    tick-sampled times of /proc/PID/stat miss processes that wake on a timer and
    finish before the next tick.
    """
    used = waited = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on_cpu, on_queue, _ = task.joinpath("schedstat").read_text().split()
        except FileNotFoundError:  # the thread just ended
            continue
        used += int(on_cpu)
        waited += int(on_queue)
    return used / 1e9, waited / 1e9
