"""The fence process with real processes: it kills a run's process group when its deadline
passes, when the server closes the pipe or dies, and finds a run's process that started but was
not registered yet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cronwire_server.executors.fence import Fence
from cronwire_server.executors.jobuser import JobUser
from tests.support import wait_for

# Every wait is bounded, so a broken fence fails the test instead of hanging it.
BOUND = 5.0


def gone(pid: int) -> bool:
    """Whether the process has ended (a zombie has: it waits only to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def group_gone(pgid: int) -> bool:
    """Whether no live process is left in the process group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return False
    return True


@pytest.fixture
def fence() -> Iterator[Fence]:
    started = Fence()
    started.start()
    yield started
    started.close()


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Job-like processes (each in a session of its own), killed after the test if still there."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def sleeper(started: list[subprocess.Popen[bytes]], token: str = "") -> subprocess.Popen[bytes]:
    env = {**os.environ, "CRONWIRE_LEASE_TOKEN": token} if token else None
    # A child of its own in the group too: the whole group must die.
    process = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60"], start_new_session=True, env=env)
    started.append(process)
    return process


def test_a_group_is_killed_when_its_deadline_passes(
    fence: Fence, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    job = sleeper(sleepers)
    fence.begin("run-1", time.monotonic() + 0.3)
    fence.guard("run-1", job.pid)
    assert job.wait(BOUND) == -signal.SIGKILL
    wait_for(lambda: group_gone(job.pid), BOUND, "the whole group to die")
    assert fence.overdue("run-1")


def test_a_renewed_deadline_keeps_the_group_alive(
    fence: Fence, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    job = sleeper(sleepers)
    # Each deadline a second ahead, renewed every 0.1 s for three seconds: without the renewals
    # the group dies after one; a loaded machine may stretch a step, not by ten times.
    fence.begin("run-1", time.monotonic() + 1.0)
    fence.guard("run-1", job.pid)
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        time.sleep(0.1)
        assert fence.extend(["run-1"], time.monotonic() + 1.0) == set()
    assert job.poll() is None
    fence.end("run-1")
    # The fence acts in order: once a later deadline was acted on, the ended run's had passed.
    later = sleeper(sleepers)
    fence.begin("run-2", time.monotonic() + 0.5)
    fence.guard("run-2", later.pid)
    assert later.wait(BOUND) == -signal.SIGKILL
    assert job.poll() is None, "an ended run was killed"


def test_a_deadline_extended_too_late_is_not_extended(
    fence: Fence, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    job = sleeper(sleepers)
    fence.begin("run-1", time.monotonic() - 0.1)
    assert fence.extend(["run-1"], time.monotonic() + 60) == {"run-1"}
    fence.guard("run-1", job.pid)  # registered past its deadline: killed at once
    assert job.wait(BOUND) == -signal.SIGKILL


def test_closing_the_pipe_kills_every_group_even_one_not_registered_yet(
    sleepers: list[subprocess.Popen[bytes]],
) -> None:
    fence = Fence()
    fence.begin("run-1", time.monotonic() + 60)
    registered = sleeper(sleepers)
    fence.guard("run-1", registered.pid)
    fence.begin("run-2", time.monotonic() + 60)
    # Started, but the server died before it could say so: found by its lease token.
    unregistered = sleeper(sleepers, token="run-2")
    fence.close()
    assert registered.wait(BOUND) == -signal.SIGKILL
    assert unregistered.wait(BOUND) == -signal.SIGKILL


def test_a_fence_that_died_is_replaced_and_told_what_it_knew(
    fence: Fence, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    job = sleeper(sleepers)
    fence.begin("run-1", time.monotonic() + 0.5)
    fence.guard("run-1", job.pid)
    old = fence.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: gone(old), BOUND, "the fence to die")
    fence.begin("run-2", time.monotonic() + 60)  # the write fails: a new fence starts
    assert fence.pid not in (None, old)
    assert job.wait(BOUND) == -signal.SIGKILL


def test_another_thread_never_starts_a_fence_but_its_lines_reach_the_next_one(
    fence: Fence, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """A fence started by a thread that ends would die with it (its parent-death signal follows
    that thread): so the lease renewer's thread only tells; the owner starts the next fence."""
    job = sleeper(sleepers)
    fence.begin("run-1", time.monotonic() + 0.5)
    fence.guard("run-1", job.pid)
    old = fence.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: gone(old), BOUND, "the fence to die")
    renewer = threading.Thread(target=fence.extend, args=(["run-1"], time.monotonic() + 60))
    renewer.start()
    renewer.join()
    assert fence.pid is None  # the write failed; no fence was started from that thread
    fence.start()  # the owner's next call: the new fence is told the renewed deadline
    assert fence.pid not in (None, old)
    # The fence acts in order: once a later deadline was acted on, run-1's first one had passed.
    later = sleeper(sleepers)
    fence.begin("run-2", time.monotonic() + 0.5)
    fence.guard("run-2", later.pid)
    assert later.wait(BOUND) == -signal.SIGKILL
    assert job.poll() is None, "the renewal made from the other thread was lost"


def test_a_server_killed_9_takes_its_jobs_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "job"
    server = textwrap.dedent(
        f"""
        import subprocess, time
        from cronwire_server.executors.fence import Fence
        fence = Fence()
        fence.begin("run-1", time.monotonic() + 60)
        job = subprocess.Popen(["sleep", "60"], start_new_session=True)
        fence.guard("run-1", job.pid)
        open({str(pid_file)!r}, "w").write(str(job.pid))
        time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", server])
    try:
        job = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), BOUND, "the job to start"))
        process.kill()
        process.wait(BOUND)
        wait_for(lambda: gone(job), BOUND, "the job to die with its server")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_fence_outlives_interrupts_sent_to_the_servers_process_group(
    fence: Fence, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    pid = fence.pid
    assert pid is not None
    wait_for(lambda: ignores(pid, signal.SIGINT, signal.SIGTERM), BOUND, "the fence to set up its signals")
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    job = sleeper(sleepers)
    fence.begin("run-1", time.monotonic() + 0.3)
    fence.guard("run-1", job.pid)
    assert job.wait(BOUND) == -signal.SIGKILL
    assert fence.pid == pid, "the fence died and was replaced"


def ignores(pid: int, *signals: signal.Signals) -> bool:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    mask = int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16)
    return all(mask & (1 << (s - 1)) for s in signals)


def test_runs_of_another_user_are_found_and_killed(
    fence: Fence, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """Jobs run as an unprivileged user (through setpriv, as the shell runner starts them): the
    fence, as the server's user, still reads their lease token in /proc and kills them."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("CI runs the tests as root: jobs of another user must be fenced")
        pytest.skip("needs root: jobs run as another user only under a root server")
    nobody = JobUser.named("nobody")

    def as_nobody(token: str) -> subprocess.Popen[bytes]:
        argv, options = nobody.spawn(["sh", "-c", "sleep 60 & sleep 60"])
        env = {"PATH": "/usr/bin:/bin", "CRONWIRE_LEASE_TOKEN": token}
        process = subprocess.Popen(argv, start_new_session=True, env=env, cwd="/", **options)
        sleepers.append(process)
        wait_for(
            lambda: Path(f"/proc/{process.pid}/status").read_text().count("\t65534\t") >= 2, BOUND, "uid"
        )
        return process

    registered = as_nobody("run-1")
    fence.begin("run-1", time.monotonic() + 0.3)
    fence.guard("run-1", registered.pid)
    assert registered.wait(BOUND) == -signal.SIGKILL
    wait_for(lambda: group_gone(registered.pid), BOUND, "the whole group to die")
    fence.begin("run-2", time.monotonic() + 60)
    unregistered = as_nobody("run-2")
    fence.close()
    assert unregistered.wait(BOUND) == -signal.SIGKILL


def test_parent_death_signals_at_any_moment_still_leave_no_run_alive(
    fence: Fence, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """The parent-death signal may arrive while the fence is already shutting down (its pipe
    closed first): wherever it lands, the fence kills its runs and exits cleanly."""
    job = sleeper(sleepers)
    fence.begin("run-1", time.monotonic() + 60)
    fence.guard("run-1", job.pid)
    process = fence._process
    assert process is not None
    wait_for(lambda: catches(process.pid, signal.SIGUSR1), BOUND, "the fence to set up its signals")
    for _ in range(200):
        if process.poll() is not None:
            break
        os.kill(process.pid, signal.SIGUSR1)
    assert job.wait(BOUND) == -signal.SIGKILL
    assert process.wait(BOUND) == 0


def catches(pid: int, sig: signal.Signals) -> bool:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    mask = int(next(line for line in status if line.startswith("SigCgt:")).split()[1], 16)
    return bool(mask & (1 << (sig - 1)))


def test_a_run_that_starts_no_process_is_kept_here_and_announced_only_if_it_does(
    fence: Fence, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    told: list[str] = []
    send = fence._send
    fence._send = lambda lines: (told.extend(lines), send(lines))[1]  # type: ignore[method-assign]
    fence.begin_many([("noop-1", time.monotonic() + 60, False), ("http-1", time.monotonic() - 1, False)])
    assert fence.extend(["noop-1"], time.monotonic() + 60) == set()
    fence.end_many(["noop-1"])
    assert told == [], "a run without processes cost the fence pipe a write"
    assert fence.overdue("http-1"), "its deadline is still kept: a late run is fenced off"
    # A run of a kind that said it starts none, starting one after all, is announced then.
    fence.begin_many([("odd-1", time.monotonic() + 0.3, False)])
    job = sleeper(sleepers)
    fence.guard("odd-1", job.pid)
    assert [line.split()[0] for line in told] == ["B", "G"]
    assert job.wait(BOUND) == -signal.SIGKILL
