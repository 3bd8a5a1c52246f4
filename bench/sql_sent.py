"""The SQL a cronwire server sent, read from its /metrics (the store's statement hook): the cost
of the work in database calls, which other load on the machine does not move."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

SQL_COUNTERS = {
    "cronwire_sql_statements_total": "statements",
    "cronwire_sql_round_trips_total": "round_trips",
}


def with_metrics(argv: list[str], workdir: Path, name: str) -> list[str]:
    """`argv` serving metrics on a free port, written to a file named after the server."""
    return [
        *argv,
        "--metrics-address",
        "127.0.0.1:0",
        "--metrics-port-file",
        str(metrics_port_file(workdir, name)),
    ]


def metrics_port_file(workdir: Path, name: str) -> Path:
    return workdir / f"{name}.metrics-port"


def sql_sent(ports: Sequence[int]) -> dict[str, float]:
    """The SQL the servers sent so far, summed: statements and round trips."""
    total = dict.fromkeys(SQL_COUNTERS.values(), 0.0)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in SQL_COUNTERS:
                    total[SQL_COUNTERS[name]] += float(value)
    return total


def statement_meter(port: int) -> Callable[[], float]:
    """A meter (a cumulative count, like the CPU meters) of the statements one server sent."""
    return lambda: sql_sent([port])["statements"]
