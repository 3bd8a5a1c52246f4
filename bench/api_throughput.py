"""Throughput and latency of the cronwire gRPC API on PostgreSQL, against the echo ceiling.

    python bench/api_throughput.py [--seconds 10] [--json]

Phases, each driven from a separate load-generator process with 64 calls in
flight for --seconds after a --warmup:

1. echo: a bare grpc.aio server that returns its request bytes (payload the
   size of a GetJobRequest), the ceiling of Python gRPC on this machine;
2. CreateJob on the real server, each call a new `shell` job;
3. GetJob of the jobs created, picked at random;
4. add_job: the baseline of CreateJob, APScheduler 3's `add_job` on a
   SQLAlchemyJobStore in the same PostgreSQL, called from as many threads
   (`apscheduler_add_job.py`, its own process).

Both servers run on the same event loop (`--event-loop`, default auto: uvloop if
installed), and every phase reports the CPU the server, the load generator and
PostgreSQL used per call, which says who the bottleneck was and moves much less
than calls/s when other work shares the machine.

A measurement, not a test: it exits 0 whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cpu import CpuUsage, CpuWindow, Meter, postgres_meter, process_tree_meter
from database import fresh_database, libpq_url, wal_position
from echo_server import METHOD as ECHO_METHOD
from load import LoadProcess, LoadResult, LoadSpec, Workload
from servers import ServerFailed, ServerProcess
from sql_sent import metrics_port_file, statement_meter, with_metrics
from workloads import CreateJobWorkload, EchoWorkload, GetJobWorkload, get_job_request_size

from cronwire_server.eventloop import ALL_ROLES, EVENT_LOOPS, resolve

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# GetJob is a primary-key read; it should keep most of what gRPC itself can do.
GET_JOB_VS_ECHO_TARGET_PCT = 60.0
# 5x the ~475 add_job/s of APScheduler 3's SQLAlchemyJobStore on the same database, as first
# measured; the add_job phase measures that baseline again in every run.
CREATE_JOB_TARGET_PER_S = 2400.0
CREATE_JOB_VS_ADD_JOB_TARGET = 5.0
ADD_JOB_TIMEOUT_S = 60.0
CRONWIRE_PHASES = (("CreateJob", "create_job"), ("GetJob", "get_job"))
EVENT_LOOP_ENV = "CRONWIRE_EVENT_LOOP"
# CPU groups, as printed: the server under test, the load generator, PostgreSQL.
CPU_GROUPS = (("server", "server"), ("load", "load gen"), ("postgres", "PG"))
# The meter of the SQL statements the server sent, beside the CPU ones.
STATEMENTS = "statements"
WAL = "wal"


@dataclass(frozen=True)
class Phase:
    name: str  # as printed; `key` names it in the JSON
    key: str
    result: LoadResult | None  # None: the phase could not run
    note: str = ""
    cpu: CpuUsage | None = None  # None: not measured (not Linux, or the window was too short)
    event_loop: str = ""  # the loop the server ran on, as seen from outside ("" if unknown)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per phase (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured time before each phase (default 2)"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (default 64)")
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels they share (default 1)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CRONWIRE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="a PostgreSQL server to create the throwaway database on "
        "(default: $CRONWIRE_BENCH_DATABASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for cronwire_server, repeatable; write --server-arg=--flag=value",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=os.environ.get(EVENT_LOOP_ENV, "auto"),
        help=f"the loop of both servers; cronwire_server gets it as ${EVENT_LOOP_ENV} "
        f"(default: ${EVENT_LOOP_ENV}, else %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return parser.parse_args(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_spec(
    args: argparse.Namespace, address: str, workload: Workload, collect_ok_keys: bool = False
) -> LoadSpec:
    return LoadSpec(
        address=address,
        workload=workload,
        seconds=args.seconds,
        warmup=args.warmup,
        concurrency=args.concurrency,
        channels=args.channels,
        collect_ok_keys=collect_ok_keys,
    )


def server_event_loop(pid: int) -> str:
    """The loop a running server uses, from the outside: uvloop if its extension is mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""
    return "uvloop" if "/uvloop/loop." in maps else "asyncio"


def measured_run(
    args: argparse.Namespace, load: LoadProcess, spec: LoadSpec, meters: dict[str, Meter | None]
) -> tuple[LoadResult, CpuUsage | None]:
    """`load.run(spec)`, with the CPU of each meter over the measured window."""
    with CpuWindow(meters, args.warmup, args.seconds) as window:
        result = load.run(spec)
    return result, window.usage


def server_roles(server_args: Sequence[str]) -> frozenset[str]:
    """The roles the cronwire server will run, from its `--roles` argument (default all)."""
    roles: str | None = None
    for index, arg in enumerate(server_args):
        if arg.startswith("--roles="):
            roles = arg.split("=", 1)[1]
        elif arg == "--roles" and index + 1 < len(server_args):
            roles = server_args[index + 1]
    return ALL_ROLES if roles is None else frozenset(r.strip() for r in roles.split(",") if r.strip())


def run_echo(args: argparse.Namespace, load: LoadProcess, workdir: Path) -> Phase:
    argv = [
        *(sys.executable, str(Path(__file__).with_name("echo_server.py")), "--listen", "127.0.0.1:0"),
        *("--event-loop", args.echo_event_loop),
    ]
    workload = EchoWorkload(ECHO_METHOD, b"x" * get_job_request_size())
    with ServerProcess(argv, workdir, "echo-server") as server:
        progress(f"echo: {len(workload.payload)}-byte payload, server on {server.address}")
        meters = {"server": process_tree_meter(server.pid), "load": process_tree_meter(load.pid)}
        result, cpu = measured_run(args, load, load_spec(args, server.address, workload), meters)
        return Phase("echo", "echo", result, cpu=cpu, event_loop=server_event_loop(server.pid))


def run_cronwire(args: argparse.Namespace, load: LoadProcess, workdir: Path) -> list[Phase]:
    try:
        return _run_cronwire(args, load, workdir)
    except ServerFailed as exc:
        # Still report the echo ceiling; the missing phases say why.
        progress(str(exc))
        return [Phase(name, key, None, "the server did not start") for name, key in CRONWIRE_PHASES]


def _run_cronwire(args: argparse.Namespace, load: LoadProcess, workdir: Path) -> list[Phase]:
    with fresh_database(args.database_url) as database_url:
        argv = [
            *(sys.executable, "-m", "cronwire_server", "--listen", "127.0.0.1:0"),
            *("--database-url", database_url),
            *args.server_arg,
        ]
        argv = with_metrics(argv, workdir, "cronwire-server")
        with ServerProcess(argv, workdir, "cronwire-server") as server:
            progress(f"cronwire: server on {server.address}, database {database_url.rsplit('/', 1)[-1]}")
            loop = server_event_loop(server.pid)
            meters = {
                "server": process_tree_meter(server.pid),
                "load": process_tree_meter(load.pid),
                "postgres": postgres_meter(libpq_url(args.database_url)),
                # Not CPU: the statements sent, so that "cores" reads as statements per second.
                STATEMENTS: statement_meter(int(metrics_port_file(workdir, "cronwire-server").read_text())),
                # Nor this: bytes PostgreSQL wrote to its write-ahead log (the whole server's).
                WAL: partial(wal_position, libpq_url(args.database_url)),
            }
            create_spec = load_spec(args, server.address, CreateJobWorkload(), collect_ok_keys=True)
            create, create_cpu = measured_run(args, load, create_spec, meters)
            names, create.ok_keys = create.ok_keys, []
            progress(f"CreateJob: {len(names)} jobs created")
            get, get_cpu = None, None
            if names:
                get_spec = load_spec(args, server.address, GetJobWorkload(names))
                get, get_cpu = measured_run(args, load, get_spec, meters)
            exit_code = server.stop()
            if exit_code:
                progress(f"cronwire_server exited with {exit_code} on SIGTERM\n{server.log_tail()}")
    return [
        Phase("CreateJob", "create_job", create, cpu=create_cpu, event_loop=loop),
        Phase("GetJob", "get_job", get, "" if get else "no job was created", cpu=get_cpu, event_loop=loop),
    ]


def run_add_job(args: argparse.Namespace, workdir: Path) -> Phase:
    """APScheduler 3's add_job, from as many threads as CreateJob has calls in flight."""
    with fresh_database(args.database_url) as database_url:
        argv = [
            *(sys.executable, str(Path(__file__).with_name("apscheduler_add_job.py"))),
            *("--database-url", database_url, "--threads", str(args.concurrency)),
            *("--warmup", str(args.warmup), "--seconds", str(args.seconds)),
        ]
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as baseline:
            assert baseline.stdin is not None
            assert baseline.stdout is not None
            try:
                if baseline.stdout.readline().strip() != "ready":
                    return Phase("add_job", "add_job", None, "the APScheduler baseline did not start")
                progress(f"add_job: APScheduler 3, {args.concurrency} threads")
                meters = {
                    "server": process_tree_meter(baseline.pid),
                    "postgres": postgres_meter(libpq_url(args.database_url)),
                    WAL: partial(wal_position, libpq_url(args.database_url)),
                }
                with CpuWindow(meters, args.warmup, args.seconds) as window:
                    baseline.stdin.write("go\n")
                    baseline.stdin.flush()
                    figures = json.loads(baseline.stdout.readline())
                baseline.stdin.close()
                baseline.wait(ADD_JOB_TIMEOUT_S)
            finally:
                if baseline.poll() is None:
                    baseline.kill()
    return Phase("add_job", "add_job", LoadResult(**figures), cpu=window.usage, event_loop="threads")


def phase_figures(phase: Phase) -> dict[str, Any]:
    result = phase.result
    if result is None:
        return {"ran": False, "note": phase.note}
    return {
        "ran": True,
        "calls_per_s": round(result.calls_per_s, 1),
        "p50_ms": _round(result.percentile_ms(50)),
        "p99_ms": _round(result.percentile_ms(99)),
        "calls": result.calls,
        "errors": result.errors,
        "error_codes": result.error_codes,
        "first_error": result.first_error,
        "seconds": result.seconds,
        "event_loop": phase.event_loop,
        "cpu": cpu_figures(phase),
        "statements_per_call": _round(statements_per_call(phase)),
        "wal_bytes_per_call": _round(wal_per_call(phase), 0),
    }


def statements_per_call(phase: Phase) -> float | None:
    """SQL statements the server sent per successful call over the measured window."""
    if phase.cpu is None or phase.result is None or not phase.result.calls_per_s:
        return None
    per_second = phase.cpu.cores.get(STATEMENTS)
    return None if per_second is None else per_second / phase.result.calls_per_s


def wal_per_call(phase: Phase) -> float | None:
    """Bytes PostgreSQL wrote to its write-ahead log per successful call over the measured window."""
    if phase.cpu is None or phase.result is None or not phase.result.calls_per_s:
        return None
    per_second = phase.cpu.cores.get(WAL)
    return None if per_second is None else per_second / phase.result.calls_per_s


def cpu_figures(phase: Phase) -> dict[str, dict[str, float | None]] | None:
    """Per group: cores kept busy and CPU microseconds per successful call."""
    if phase.cpu is None or phase.result is None:
        return None
    rate = phase.result.calls_per_s
    return {
        group: {
            "cores": _round(phase.cpu.cores.get(group)),
            "us_per_call": _round(phase.cpu.per_call_us(group, rate), 0),
        }
        for group, _ in CPU_GROUPS
    }


def target_figures(phases: dict[str, Phase]) -> dict[str, dict[str, Any]]:
    echo, create, get, add = (phases[key].result for key in ("echo", "create_job", "get_job", "add_job"))
    get_pct = None
    if echo and get and echo.calls_per_s:
        get_pct = 100.0 * get.calls_per_s / echo.calls_per_s
    create_rate = create.calls_per_s if create else None
    vs_add_job = None
    if create_rate is not None and add and add.calls_per_s:
        vs_add_job = create_rate / add.calls_per_s
    return {
        "get_job_vs_echo_pct": _target(get_pct, GET_JOB_VS_ECHO_TARGET_PCT),
        "create_job_per_s": _target(create_rate, CREATE_JOB_TARGET_PER_S),
        # What the absolute target stands for, measured on this machine in this run.
        "create_job_vs_add_job": _target(vs_add_job, CREATE_JOB_VS_ADD_JOB_TARGET),
        # Not a target: the same ratio in server CPU per call, which other work on the
        # machine moves much less than it moves the echo ceiling's calls/s.
        "get_job_vs_echo_cpu_pct": {"value": _round(_cpu_ratio_pct(phases["echo"], phases["get_job"]))},
    }


def _cpu_ratio_pct(echo: Phase, get: Phase) -> float | None:
    """Echo's server CPU per call as a percentage of GetJob's."""
    if echo.cpu is None or get.cpu is None or echo.result is None or get.result is None:
        return None
    echo_us = echo.cpu.per_call_us("server", echo.result.calls_per_s)
    get_us = get.cpu.per_call_us("server", get.result.calls_per_s)
    return 100.0 * echo_us / get_us if echo_us and get_us else None


def _target(value: float | None, target: float) -> dict[str, Any]:
    return {"value": _round(value), "target": target, "pass": value is not None and value >= target}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(
    phases: dict[str, Phase], targets: dict[str, dict[str, Any]], loadavg: tuple[float, float]
) -> None:
    print(f"{os.cpu_count()} CPUs, load average {loadavg[0]:.2f} before the run, {loadavg[1]:.2f} after")
    cpu_heads = "".join(f" {name + ' us':>10}" for _, name in CPU_GROUPS)
    heads = f"{'phase':<10} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
    print(f"{heads}{cpu_heads} {'sql/call':>9} {'WAL B':>7}  loop")
    for phase in phases.values():
        r = phase.result
        if r is None:
            print(f"{phase.name:<10} {'-':>9} {'-':>8} {'-':>8} {'-':>7}  ({phase.note})")
            continue
        p50, p99 = _cell(r.percentile_ms(50), ".2f"), _cell(r.percentile_ms(99), ".2f")
        cpu = "".join(f" {_cpu_cell(phase, group):>10}" for group, _ in CPU_GROUPS)
        loop = phase.event_loop or "?"
        sql, wal = _cell(statements_per_call(phase), ".2f"), _cell(wal_per_call(phase), ".0f")
        row = f"{phase.name:<10} {r.calls_per_s:>9.0f} {p50:>8} {p99:>8} {r.errors:>7}{cpu}"
        print(f"{row} {sql:>9} {wal:>7}  {loop}")
        if r.first_error:
            print(f"{'':<10} first error: {r.first_error}")
    print("(CPU microseconds per call, and in brackets the cores kept busy; PG counts the whole server;")
    print(" sql/call: SQL statements the server sent per call, from its statement hook;")
    print(" WAL B: bytes PostgreSQL wrote to its write-ahead log per call, the whole server's;")
    print(' add_job: its "server" is the APScheduler process, its callers\' threads included)')
    loops = {p.event_loop for p in phases.values() if p.result and p.event_loop and p.key != "add_job"}
    if len(loops) > 1:
        print(f"WARNING: the servers ran on different event loops ({', '.join(sorted(loops))}): the ratio")
        print("         below compares loops as well as servers")
    get, create = targets["get_job_vs_echo_pct"], targets["create_job_per_s"]
    vs_add = targets["create_job_vs_add_job"]
    print()
    print(
        f"GetJob / echo ceiling: {_cell(get['value'], '.1f'):>6} %   "
        f"target >= {get['target']:.0f} %      {_verdict(get)}"
    )
    print(
        f"CreateJob:             {_cell(create['value'], '.0f'):>6} /s  "
        f"target >= {create['target']:.0f} /s  {_verdict(create)}"
    )
    print(
        f"CreateJob / add_job:   {_cell(vs_add['value'], '.2f'):>6} x   "
        f"target >= {vs_add['target']:.0f} x      {_verdict(vs_add)}  (APScheduler 3, this run)"
    )
    cpu_pct = targets["get_job_vs_echo_cpu_pct"]["value"]
    print(f"(echo / GetJob server CPU per call: {_cell(cpu_pct, '.1f')} %, steadier than the calls/s ratio)")


def _cpu_cell(phase: Phase, group: str) -> str:
    if phase.cpu is None or phase.result is None:
        return "-"
    cores = phase.cpu.cores.get(group)
    per_call = phase.cpu.per_call_us(group, phase.result.calls_per_s)
    if cores is None or per_call is None:
        return "-"
    return f"{per_call:.0f} ({cores:.1f})"


def _verdict(target: dict[str, Any]) -> str:
    return "PASS" if target["pass"] else "MISS"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # cronwire_server reads it; the echo server is told the loop that resolves to.
    os.environ[EVENT_LOOP_ENV] = args.event_loop
    try:
        args.echo_event_loop = resolve(args.event_loop, server_roles(args.server_arg))
    except ValueError as exc:
        raise SystemExit(f"--event-loop: {exc}") from None
    # Other work on the machine skews every phase; the output records how busy it was.
    loadavg_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cronwire-bench-") as tmp, LoadProcess() as load:
        workdir = Path(tmp)
        phase_list = [run_echo(args, load, workdir), *run_cronwire(args, load, workdir)]
        phase_list.append(run_add_job(args, workdir))
    loadavg_after = os.getloadavg()[0]
    phases = {phase.key: phase for phase in phase_list}
    targets = target_figures(phases)
    if args.json:
        config = {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "channels": args.channels,
            "cpus": os.cpu_count(),
            "loadavg_1m_before": round(loadavg_before, 2),
            "loadavg_1m_after": round(loadavg_after, 2),
            "event_loop": args.event_loop,
        }
        figures = {key: phase_figures(phase) for key, phase in phases.items()}
        print(json.dumps({"config": config, "phases": figures, "targets": targets}, indent=2))
    else:
        print_table(phases, targets, (loadavg_before, loadavg_after))
    # Missing a target is a result (0); a phase that could not run is not (1).
    return 0 if all(phase.result for phase in phase_list) else 1


if __name__ == "__main__":
    sys.exit(main())
