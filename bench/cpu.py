"""CPU accounting for a benchmark phase: what the server, the load generator and PostgreSQL used.

Calls per second alone cannot say who was the bottleneck on a small shared machine;
CPU microseconds per call can, and they move much less than throughput when other
work shares the machine. Linux only (/proc); elsewhere every figure is None.

Ticks of /proc/PID/stat (utime + stime) are precise enough for processes that are
busy for seconds. PostgreSQL is counted as its postmaster's whole family: the live
backends plus `cutime + cstime` of the postmaster, which holds the CPU of backends
that exited (a pool that closes and reopens connections does not hide their cost).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

Meter = Callable[[], float]  # CPU seconds used so far by one group of processes


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """utime + stime of `pid` (plus cutime + cstime: children it waited for); 0 if it is gone."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # After the ")": state is index 0, so utime, stime, cutime, cstime are 11, 12, 13, 14.
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (/proc/PID/task/*/children is not in every kernel)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue  # it just ended
    return parents


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found.extend(below)
        todo.extend(below)
    return found


def process_tree_meter(pid: int) -> Meter | None:
    """CPU of `pid` and every process under it (a server that starts helper processes)."""
    if not Path(f"/proc/{pid}/stat").exists():
        return None
    return lambda: sum(_cpu_seconds(p) for p in (pid, *_descendants(pid)))


def postgres_meter(libpq_url: str) -> Meter | None:
    """CPU of the whole PostgreSQL server, if it runs on this machine (else None).

    Everything it does counts, other databases' work included: on a shared machine
    the figure is an upper bound for this benchmark's share.
    """
    try:
        with psycopg.connect(libpq_url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            # While the backend lives: its parent is the postmaster.
            postmaster = int(_stat_fields(int(row[0]) if row else 0)[1])
        command = Path(f"/proc/{postmaster}/comm").read_text().strip()
    except psycopg.Error:
        return None
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None  # not on this machine (or another PID namespace)
    if command not in ("postgres", "postmaster"):
        return None
    return lambda: (
        _cpu_seconds(postmaster, reaped_children=True)
        + sum(_cpu_seconds(p) for p in _descendants(postmaster))
    )


@dataclass
class CpuUsage:
    """Cores each group kept busy on average over the measured window (None: not measured)."""

    seconds: float
    cores: dict[str, float | None] = field(default_factory=dict)

    def per_call_us(self, group: str, calls_per_s: float) -> float | None:
        cores = self.cores.get(group)
        if cores is None or not calls_per_s:
            return None
        return cores / calls_per_s * 1e6


class CpuWindow:
    """Samples the meters at the start and the end of a phase's measured window.

    Runs in a thread beside the (blocking) load run: it sleeps through the warm-up,
    then measures for `seconds`, a little inside the window so the edges do not count.
    """

    EDGE_S = 0.2

    def __init__(self, meters: dict[str, Meter | None], warmup: float, seconds: float) -> None:
        self._meters = meters
        self._warmup = warmup
        self._seconds = seconds
        self._usage: CpuUsage | None = None
        self._thread = threading.Thread(target=self._run, name="cpu-window", daemon=True)

    def __enter__(self) -> CpuWindow:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.join()

    @property
    def usage(self) -> CpuUsage | None:
        return self._usage

    def _snapshot(self) -> dict[str, float | None]:
        return {name: meter() if meter else None for name, meter in self._meters.items()}

    def _run(self) -> None:
        length = self._seconds - 2 * self.EDGE_S
        if length <= 0:
            return
        time.sleep(self._warmup + self.EDGE_S)
        started, before = time.perf_counter(), self._snapshot()
        time.sleep(length)
        elapsed, after = time.perf_counter() - started, self._snapshot()
        cores: dict[str, float | None] = {}
        for name, end in after.items():
            begin = before[name]
            cores[name] = None if end is None or begin is None else (end - begin) / elapsed
        self._usage = CpuUsage(elapsed, cores)
