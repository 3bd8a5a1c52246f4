"""Throughput and latency of the cronwire gRPC API on PostgreSQL, against the echo ceiling.

    python bench/api_throughput.py [--seconds 10] [--json]

Phases, each driven from a separate load-generator process with 64 calls in
flight for --seconds after a --warmup:

1. echo: a bare grpc.aio server that returns its request bytes (payload the
   size of a GetJobRequest), the ceiling of Python gRPC on this machine;
2. CreateJob on the real server, each call a new `shell` job;
3. GetJob of the jobs created, picked at random.

A measurement, not a test: it exits 0 whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from database import fresh_database
from echo_server import METHOD as ECHO_METHOD
from load import LoadProcess, LoadResult, LoadSpec, Workload
from servers import ServerFailed, ServerProcess
from workloads import CreateJobWorkload, EchoWorkload, GetJobWorkload, get_job_request_size

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# GetJob is a primary-key read; it should keep most of what gRPC itself can do.
GET_JOB_VS_ECHO_TARGET_PCT = 60.0
# 5x the ~475 add_job/s of APScheduler 3's SQLAlchemyJobStore on the same database.
CREATE_JOB_TARGET_PER_S = 2400.0
CRONWIRE_PHASES = (("CreateJob", "create_job"), ("GetJob", "get_job"))


@dataclass(frozen=True)
class Phase:
    name: str  # as printed; `key` names it in the JSON
    key: str
    result: LoadResult | None  # None: the phase could not run
    note: str = ""


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


def run_echo(args: argparse.Namespace, load: LoadProcess, workdir: Path) -> Phase:
    argv = [sys.executable, str(Path(__file__).with_name("echo_server.py")), "--listen", "127.0.0.1:0"]
    workload = EchoWorkload(ECHO_METHOD, b"x" * get_job_request_size())
    with ServerProcess(argv, workdir, "echo-server") as server:
        progress(f"echo: {len(workload.payload)}-byte payload, server on {server.address}")
        return Phase("echo", "echo", load.run(load_spec(args, server.address, workload)))


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
        with ServerProcess(argv, workdir, "cronwire-server") as server:
            progress(f"cronwire: server on {server.address}, database {database_url.rsplit('/', 1)[-1]}")
            create = load.run(load_spec(args, server.address, CreateJobWorkload(), collect_ok_keys=True))
            names, create.ok_keys = create.ok_keys, []
            progress(f"CreateJob: {len(names)} jobs created")
            get = load.run(load_spec(args, server.address, GetJobWorkload(names))) if names else None
            exit_code = server.stop()
            if exit_code:
                progress(f"cronwire_server exited with {exit_code} on SIGTERM\n{server.log_tail()}")
    return [
        Phase("CreateJob", "create_job", create),
        Phase("GetJob", "get_job", get, "" if get else "no job was created"),
    ]


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
    }


def target_figures(phases: dict[str, Phase]) -> dict[str, dict[str, Any]]:
    echo, create, get = (phases[key].result for key in ("echo", "create_job", "get_job"))
    get_pct = None
    if echo and get and echo.calls_per_s:
        get_pct = 100.0 * get.calls_per_s / echo.calls_per_s
    create_rate = create.calls_per_s if create else None
    return {
        "get_job_vs_echo_pct": _target(get_pct, GET_JOB_VS_ECHO_TARGET_PCT),
        "create_job_per_s": _target(create_rate, CREATE_JOB_TARGET_PER_S),
    }


def _target(value: float | None, target: float) -> dict[str, Any]:
    return {"value": _round(value), "target": target, "pass": value is not None and value >= target}


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_table(phases: dict[str, Phase], targets: dict[str, dict[str, Any]], loadavg_before: float) -> None:
    print(f"{os.cpu_count()} CPUs, load average {loadavg_before:.2f} before the run")
    print(f"{'phase':<10} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for phase in phases.values():
        r = phase.result
        if r is None:
            print(f"{phase.name:<10} {'-':>9} {'-':>8} {'-':>8} {'-':>7}  ({phase.note})")
            continue
        p50, p99 = _cell(r.percentile_ms(50), ".2f"), _cell(r.percentile_ms(99), ".2f")
        print(f"{phase.name:<10} {r.calls_per_s:>9.0f} {p50:>8} {p99:>8} {r.errors:>7}")
        if r.first_error:
            print(f"{'':<10} first error: {r.first_error}")
    get, create = targets["get_job_vs_echo_pct"], targets["create_job_per_s"]
    print()
    print(
        f"GetJob / echo ceiling: {_cell(get['value'], '.1f'):>6} %   "
        f"target >= {get['target']:.0f} %      {_verdict(get)}"
    )
    print(
        f"CreateJob:             {_cell(create['value'], '.0f'):>6} /s  "
        f"target >= {create['target']:.0f} /s  {_verdict(create)}"
    )


def _verdict(target: dict[str, Any]) -> str:
    return "PASS" if target["pass"] else "MISS"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Other work on the machine skews every phase; the output records how busy it was.
    loadavg_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cronwire-bench-") as tmp, LoadProcess() as load:
        workdir = Path(tmp)
        phase_list = [run_echo(args, load, workdir), *run_cronwire(args, load, workdir)]
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
        }
        figures = {key: phase_figures(phase) for key, phase in phases.items()}
        print(json.dumps({"config": config, "phases": figures, "targets": targets}, indent=2))
    else:
        print_table(phases, targets, loadavg_before)
    # Missing a target is a result (0); a phase that could not run is not (1).
    return 0 if all(phase.result for phase in phase_list) else 1


if __name__ == "__main__":
    sys.exit(main())
