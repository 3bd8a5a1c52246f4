"""Fencing: at most one attempt of an execution runs at a time, even when the replica running it
is killed -9 or frozen past its lease. Counted by what the job itself writes to a file, not by
the server's records."""

from __future__ import annotations

import itertools
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from cronwire.v1 import execution_pb2
from tests.support import ServerProcess, wait_for
from tests.system.helpers import (
    RUNNING,
    Api,
    Execution,
    Replicas,
    alive,
    all_ended,
    describe,
    execution_in,
    worker_pid,
)

LEASE = 3.0
# Beyond the lease: the recovery loop's period (lease / 2 at most), the retry backoff, a claim.
RECOVERY_MARGIN = 5.0
# Well within the lease: the fence notices its pipe closed at once.
DIES_WITHIN = LEASE / 2

# Appends `attempt token pid time` to a file every 20 ms for a minute: each line proves the
# attempt's process was running at that time.
TICKER = """
import os, sys, time
attempt, token = os.environ["CRONWIRE_ATTEMPT"], os.environ.get("CRONWIRE_LEASE_TOKEN", "-")
with open(sys.argv[1], "a", buffering=1) as out:
    for _ in range(3000):
        out.write(f"{attempt} {token} {os.getpid()} {time.time()!r}\\n")
        time.sleep(0.02)
"""


@dataclass
class Attempt:
    number: int
    token: str
    pid: int
    first: float
    last: float
    ticks: int


def attempts(path: Path) -> dict[int, Attempt]:
    """What the job's processes wrote, by process."""
    found: dict[int, Attempt] = {}
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue  # a line being written
        number, token, pid, stamp = int(parts[0]), parts[1], int(parts[2]), float(parts[3])
        seen = found.setdefault(pid, Attempt(number, token, pid, stamp, stamp, 0))
        seen.last, seen.ticks = stamp, seen.ticks + 1
    return found


def assert_never_two_at_once(path: Path) -> list[Attempt]:
    runs = sorted(attempts(path).values(), key=lambda a: a.first)
    for before, after in itertools.pairwise(runs):
        overlap = before.last - after.first
        assert overlap < 0, f"attempt {before.number} still ran {overlap:.2f}s into attempt {after.number}"
    return runs


def ticking(path: Path, number: int, ticks: int = 1) -> Callable[[], Attempt | None]:
    def check() -> Attempt | None:
        return next((a for a in attempts(path).values() if a.number == number and a.ticks >= ticks), None)

    return check


def no_idle_transactions_beyond_a_second(url: str) -> None:
    """A replica frozen inside a transaction would hold its rows' locks (and so its lease) for as
    long as it is frozen; the database ends such a session instead, as production should."""
    sync = make_url(url).set(drivername="postgresql")
    database = sync.database
    with psycopg.connect(sync.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET idle_in_transaction_session_timeout = 1000')


def start_ticking_job(replicas: Replicas, url: str, tmp_path: Path) -> tuple[Api, Path, Execution]:
    servers = [replicas.start(url, "--lease-seconds", f"{LEASE:g}") for _ in range(2)]
    api = replicas.api(servers[0])
    out = tmp_path / "ticks"
    job = api.create_job(
        "ticker",
        "shell",
        parameters={"argv": [sys.executable, "-c", TICKER, str(out)]},
        retryPolicy={"maxAttempts": 2, "initialBackoff": "0.2s", "maxBackoff": "0.2s"},
    )
    first = api.run_job(job.name)
    running = wait_for(execution_in(api, first.name, RUNNING), 15, "the first attempt to run")
    wait_for(ticking(out, 1), 10, "the first attempt's process to write")
    return api, out, running


def victim_and_survivor(replicas: Replicas, running: Execution) -> tuple[ServerProcess, ServerProcess]:
    victim = next(s for s in replicas.started if s.process.pid == worker_pid(running.worker))
    return victim, next(s for s in replicas.started if s is not victim)


@pytest.mark.postgres
def test_a_killed_replicas_job_dies_with_it_and_its_retry_never_runs_beside_it(
    fresh_database_url: Callable[[str], str], replicas: Replicas, tmp_path: Path
) -> None:
    url = fresh_database_url("postgres")
    api, out, running = start_ticking_job(replicas, url, tmp_path)
    victim, survivor = victim_and_survivor(replicas, running)
    job_processes = replicas.adopt_job_processes(victim)

    killed = time.monotonic()
    assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_for(lambda: not any(alive(pid) for pid in job_processes), DIES_WITHIN, "the job's process to die")
    assert time.monotonic() - killed < DIES_WITHIN

    api = replicas.api(survivor)
    second = wait_for(ticking(out, 2, ticks=5), LEASE + RECOVERY_MARGIN, "the retry to run")
    runs = assert_never_two_at_once(out)
    assert [(a.number, a.token) for a in runs] == [(1, runs[0].token), (2, second.token)]
    assert runs[0].token != second.token
    retries = [e for e in api.executions_of(job=running.job) if e.attempt == 2]
    assert len(retries) == 1, describe(retries)
    assert retries[0].state == RUNNING, describe(retries)
    assert worker_pid(retries[0].worker) == survivor.process.pid
    lost = api.get(running.name)
    assert lost.state == execution_pb2.EXECUTION_STATE_LOST, describe([lost])


@pytest.mark.postgres
def test_a_replica_frozen_past_its_lease_has_its_job_killed_before_the_retry_and_records_nothing(
    fresh_database_url: Callable[[str], str], replicas: Replicas, tmp_path: Path
) -> None:
    url = fresh_database_url("postgres")
    no_idle_transactions_beyond_a_second(url)
    api, out, running = start_ticking_job(replicas, url, tmp_path)
    victim, survivor = victim_and_survivor(replicas, running)
    job_processes = replicas.adopt_job_processes(victim)
    api = replicas.api(survivor)

    victim.process.send_signal(signal.SIGSTOP)
    try:
        # Its fence kills the job before the lease expires, while the replica is still frozen.
        wait_for(
            lambda: not any(alive(pid) for pid in job_processes), LEASE, "the frozen replica's job to die"
        )
        wait_for(ticking(out, 2, ticks=5), LEASE + RECOVERY_MARGIN, "the retry to run")
    finally:
        victim.process.send_signal(signal.SIGCONT)

    # On thawing, whichever notices first names the reason: its own safe-margin check or the
    # renewal that finds the lease taken. Either way the run is fenced and records nothing.
    fenced = re.compile(
        "run fenced: its lease (was not renewed within the safe margin|passed to another replica)"
        ".* execution=" + running.name.rsplit("/", 1)[1]
    )
    runs = assert_never_two_at_once(out)
    assert [a.number for a in runs] == [1, 2]
    wait_for(lambda: fenced.search(victim.log()), 10, "the thawed replica to notice it was fenced")

    # What the thawed replica did not record: the first attempt stays as recovery left it.
    first = api.get(running.name)
    assert first.state == execution_pb2.EXECUTION_STATE_LOST, describe([first])
    assert "lease expired" in first.error, first.error
    everything = api.executions_of(job=running.job)
    assert sorted(e.attempt for e in everything) == [1, 2], describe(everything)
    assert "run outcome not recorded" not in victim.log()


@pytest.mark.postgres
def test_each_attempt_sees_its_own_lease_token_and_attempt_number(
    fresh_database_url: Callable[[str], str], replicas: Replicas
) -> None:
    url = fresh_database_url("postgres")
    api = replicas.api(replicas.start(url))
    job = api.create_job(
        "fails-once",
        "shell",
        parameters={"command": 'echo "$CRONWIRE_ATTEMPT $CRONWIRE_LEASE_TOKEN"; exit 1', "shell": True},
        retryPolicy={"maxAttempts": 2, "initialBackoff": "0.1s", "maxBackoff": "0.1s"},
    )
    api.run_job(job.name)
    ended = wait_for(all_ended(api, job=job.name, at_least=2), 20, "both attempts to end")
    seen = sorted(api.get(e.name).output.split() for e in ended)
    assert [attempt for attempt, _ in seen] == ["1", "2"], seen
    tokens = [token for _, token in seen]
    assert all(re.fullmatch(r"[0-9a-f]{32}", token) for token in tokens), tokens
    assert tokens[0] != tokens[1]
