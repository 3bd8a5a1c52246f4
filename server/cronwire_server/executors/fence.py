"""Fencing: a run's processes die with its replica, and before its lease can pass on.

Job processes run in sessions of their own, so nothing ties them to the server:
a replica killed -9 or frozen would leave them running beside the retry another
replica starts once the lease expires. One small fence process per worker pool
closes that gap. The server tells it, through a pipe, each run's process groups
and, after each lease renewal, the monotonic time by which the run must be gone
(the renewal's send time + the lease - a safety margin; CLOCK_MONOTONIC is the
same clock in every process of the machine). The fence SIGKILLs a run's process
groups when

- that deadline passes without a newer one: the server is frozen, or has not
  reached the database in time; being a process of its own, the fence acts even
  when the server cannot;
- the pipe reaches end of file: the server is gone, kill -9 included (then the
  fence exits);
- the server says so (a run it learned is no longer its own).

A run is announced before its process starts and its group registered right
after, so that a server killed in between is covered too: the fence then finds
the process by the run's `CRONWIRE_LEASE_TOKEN` in /proc. A group registered
for a run past its deadline is killed at once. The fence also exits when its
parent dies (parent-death signal, and its parent pid checked every second), and
ignores SIGINT and SIGTERM: a Ctrl-C or a stop signal sent to the server's whole
process group must not kill runs the server is draining; the fence goes when
its pipe closes.

The same file is the fence process (`python fence.py cronwire-fence PARENT_PID`,
standard library only) and the server's client of it (`Fence`). The protocol is
lines of ASCII, each write at most PIPE_BUF bytes so that it is atomic:

    B <token> <deadline>         a run begins: kill what it starts after `deadline`
    G <token> <pgid>             the run's process group
    U <token> <pgid>             the group has ended: forget it
    R <deadline> <token>...      the runs' new deadline (after a lease renewal)
    K <token>                    kill the run's groups now
    E <token>                    the run is over: forget it
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

__all__ = ["MARKER", "Fence"]

# In the fence's command line, so that people and tests can tell it from a job's process.
MARKER = "cronwire-fence"
_PIPE_BUF = 4096
_PARENT_CHECK = 1.0
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_FILE = str(Path(__file__).resolve())

_log = logging.getLogger(__name__)


# The fence process


@dataclass
class _Run:
    deadline: float
    groups: set[int] = field(default_factory=set)
    # Between the announcement and the group's registration: its process may exist unregistered.
    starting: bool = True
    killed: bool = False


def _prctl(option: int, value: int | bytes) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _groups_holding(token: str) -> set[int]:
    """The process groups of processes whose environment holds the run's token."""
    needle = f"CRONWIRE_LEASE_TOKEN={token}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.add(os.getpgid(int(entry.name)))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


class _Fence:
    def __init__(self) -> None:
        self.runs: dict[str, _Run] = {}

    def kill(self, token: str) -> None:
        run = self.runs.get(token)
        if run is None or run.killed:
            return
        run.killed = True
        groups = set(run.groups)
        if run.starting:
            groups |= _groups_holding(token)
        for pgid in groups:
            _kill_group(pgid)

    def apply(self, line: str) -> None:
        verb, *args = line.split()
        if verb == "B":
            self.runs[args[0]] = _Run(float(args[1]))
        elif verb == "G":
            run = self.runs.get(args[0])
            pgid = int(args[1])
            if run is None or run.killed or run.deadline < time.monotonic():
                _kill_group(pgid)
                if run is not None:
                    run.killed = True
            else:
                run.groups.add(pgid)
                run.starting = False
        elif verb == "U":
            if (run := self.runs.get(args[0])) is not None:
                run.groups.discard(int(args[1]))
        elif verb == "R":
            deadline = float(args[0])
            for token in args[1:]:
                if (run := self.runs.get(token)) is not None and not run.killed:
                    run.deadline = max(run.deadline, deadline)
        elif verb == "K":
            self.kill(args[0])
        elif verb == "E":
            self.runs.pop(args[0], None)

    def kill_overdue(self, now: float) -> None:
        for token, run in list(self.runs.items()):
            if not run.killed and run.deadline < now:
                self.kill(token)

    def next_wakeup(self, now: float) -> float:
        deadlines = [r.deadline for r in self.runs.values() if not r.killed]
        return max(0.0, min([*deadlines, now + _PARENT_CHECK]) - now)

    def kill_all(self) -> None:
        for token in list(self.runs):
            self.kill(token)


def _read_available(fd: int) -> tuple[bytes, bool]:
    """What the pipe holds now, and whether it reached end of file."""
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return b"".join(chunks), False
        if not data:
            return b"".join(chunks), True
        chunks.append(data)


def main(argv: list[str]) -> int:
    parent = int(argv[-1])
    _prctl(_PR_SET_NAME, MARKER.encode())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    # The parent-death signal only sets a flag and wakes the poll through the wakeup pipe: a
    # handler that raised could land anywhere, even after the last guarded line, and leave the
    # runs alive.
    gone = False

    def parent_gone(signum: int, frame: object) -> None:
        nonlocal gone
        gone = True

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    signal.signal(signal.SIGUSR1, parent_gone)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGUSR1)
    fence = _Fence()
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    poller = select.poll()
    poller.register(stdin, select.POLLIN)
    poller.register(wake_read, select.POLLIN)
    pending = b""

    def read() -> bool:
        nonlocal pending
        data, eof = _read_available(stdin)
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if line:
                fence.apply(line.decode("ascii"))
        return eof

    while not gone and os.getppid() == parent:
        poller.poll(math.ceil(fence.next_wakeup(time.monotonic()) * 1000))
        # Taken before reading: a deadline the server extended before it passed is
        # extended here too, since that message is in the pipe by now.
        now = time.monotonic()
        if read():
            break
        fence.kill_overdue(now)
    # What the server said before it died counts (it may have died as this process started).
    read()
    fence.kill_all()
    # Python's shutdown puts handled signals back to their default action: a late parent-death
    # signal would then kill the fence with it instead of letting it exit.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    return 0


# The server's client


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[Concatenate[Fence, _P], _R]) -> Callable[Concatenate[Fence, _P], _R]:
    def locked(self: Fence, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    locked.__doc__ = method.__doc__
    return locked


class Fence:
    """The server's side of a fence process: started on first use (or `start`), restarted if it
    dies, told about runs as they begin, renew and end. Safe to call from several threads; but
    only the thread that made it starts the process, because the fence's parent-death signal
    follows the thread that started it (a renewal thread ending would kill every run). Another
    thread's lines reach a fence that died when the owner starts the next one (it is told the
    whole state)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._owner = threading.get_ident()
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe = -1
        # Every run's deadline (token -> monotonic time), announced to the fence or not.
        self._deadlines: dict[str, float] = {}
        # What the fence knows, to tell a restarted one: the groups of each announced run.
        self._groups: dict[str, set[int]] = {}
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @_locked
    def start(self) -> None:
        """Start the fence process unless it runs already (else it starts on first use)."""
        if self._process is not None and self._process.poll() is not None:
            self._stop_process()
        self._write([])

    def _spawn(self) -> None:
        """A new fence process, told what the last one knew; OSError if it cannot start."""
        self._stop_process()
        read, write = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", _FILE, MARKER, str(os.getpid())],
                stdin=read,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        # Never block the event loop on a fence that stopped reading: that fails the write.
        os.set_blocking(write, False)
        self._pipe = write
        # A group with no deadline left (its run was forgotten) is killed at once.
        lines = [f"B {token} {self._deadlines.get(token, -math.inf)!r}" for token in self._groups]
        lines += [f"G {token} {pgid}" for token, groups in self._groups.items() for pgid in groups]
        for chunk in _packed(lines):
            os.write(self._pipe, chunk)

    def begin(self, token: str, deadline: float) -> None:
        """A run is about to start processes: kill them after `deadline` (a monotonic time)."""
        self.begin_many([(token, deadline, True)])

    @_locked
    def begin_many(self, runs: Iterable[tuple[str, float, bool]]) -> None:
        """`begin` for several runs (token, deadline, whether it may start processes), told in one
        write (or as few as fit). A run that starts no process (noop, http) is not announced:
        its deadline is only kept here, for `overdue`."""
        lines = []
        for token, deadline, announced in runs:
            self._deadlines[token] = deadline
            if announced:
                self._groups[token] = set()
                lines.append(f"B {token} {deadline!r}")
        if lines:
            self._send(lines)

    @_locked
    def guard(self, token: str, pgid: int) -> None:
        """The run started process group `pgid`."""
        lines = [f"G {token} {pgid}"]
        if token not in self._groups and token in self._deadlines:  # a kind that said it starts none
            lines.insert(0, f"B {token} {self._deadlines[token]!r}")
        self._groups.setdefault(token, set()).add(pgid)
        self._send(lines)
        if self.overdue(token):
            self.kill(token)

    @_locked
    def unguard(self, token: str, pgid: int) -> None:
        """Process group `pgid` of the run has ended (forgotten, so that its number may be reused)."""
        self._groups.get(token, set()).discard(pgid)
        self._send([f"U {token} {pgid}"])

    @_locked
    def extend(self, tokens: Iterable[str], deadline: float) -> set[str]:
        """Move the runs' deadline to `deadline`. Runs whose deadline passed before the fence could
        have learned it are killed instead: those are returned."""
        tokens = [t for t in tokens if t in self._deadlines]
        if not tokens:
            return set()
        announced = [t for t in tokens if t in self._groups]
        if announced:
            self._send(_chunked(f"R {deadline!r}", announced))
        written = time.monotonic()
        late = {t for t in tokens if self._deadlines[t] < written}
        for token in tokens:
            if token in late:
                self.kill(token)
            else:
                self._deadlines[token] = max(self._deadlines[token], deadline)
        return late

    @_locked
    def overdue(self, token: str, now: float | None = None) -> bool:
        """Whether the run's deadline has passed (the fence has killed it, or is about to)."""
        deadline = self._deadlines.get(token)
        return deadline is not None and deadline < (time.monotonic() if now is None else now)

    @_locked
    def kill(self, token: str) -> None:
        """Kill the run's process groups now (here and by the fence, which also finds a process
        that started but is not registered yet)."""
        if token not in self._deadlines:
            return  # over: nothing of it is left
        self._deadlines[token] = -math.inf
        if token not in self._groups:
            return  # never announced: it started no process
        for pgid in self._groups[token]:
            _kill_group(pgid)
        self._send([f"K {token}"])

    def end(self, token: str) -> None:
        self.end_many([token])

    @_locked
    def end_many(self, tokens: Iterable[str]) -> None:
        """The runs are over: forgotten here and by the fence, told in one write (or as few as fit)."""
        lines = []
        for token in tokens:
            self._deadlines.pop(token, None)
            if self._groups.pop(token, None) is not None:
                lines.append(f"E {token}")
        if lines:
            self._send(lines)

    @_locked
    def close(self, wait: float = 5.0) -> None:
        """Close the pipe: the fence kills what is left and exits. Later calls do nothing."""
        self._closed = True
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        if self._process is not None:
            try:
                self._process.wait(wait)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def _send(self, lines: list[str]) -> None:
        self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if self._closed:
            return
        chunks = _packed(lines)
        for attempt in (1, 2):
            try:
                if self._process is None:
                    if threading.get_ident() != self._owner:
                        return  # the owner starts the next one, and tells it the whole state
                    self._spawn()
                while chunks:
                    os.write(self._pipe, chunks[0])
                    del chunks[0]
                return
            except OSError as error:  # it died (EPIPE), stopped reading (a full pipe), cannot start
                self._stop_process()
                if attempt == 2:
                    _log.error("no fence process (%s): runs are not fenced until one starts", error)
                else:
                    # A new one learns the state (lines are idempotent), then gets what is left.
                    _log.warning("the fence process failed (%s); starting another", error)

    def _stop_process(self) -> None:
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            self._process.wait()
            self._process = None


def _chunked(head: str, tokens: list[str]) -> list[str]:
    """`head token...` lines, each within PIPE_BUF."""
    lines, line = [], head
    for token in tokens:
        if len(line) + len(token) + 2 > _PIPE_BUF:
            lines.append(line)
            line = head
        line += f" {token}"
    lines.append(line)
    return lines


def _packed(lines: list[str]) -> list[bytes]:
    """The lines in writes of at most PIPE_BUF bytes each (atomic on a pipe), split at lines."""
    chunks, chunk = [], b""
    for line in lines:
        data = line.encode("ascii") + b"\n"
        if len(chunk) + len(data) > _PIPE_BUF:
            chunks.append(chunk)
            chunk = b""
        chunk += data
    if chunk:
        chunks.append(chunk)
    return chunks


if __name__ == "__main__":
    sys.exit(main(sys.argv))
