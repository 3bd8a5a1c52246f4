"""Event delivery lag: from an event's commit to its arrival at each of N watchers.

A writer commits events at a fixed rate through the server's own storage code (the
unnumbered rows a change writes in its transaction, `storage.sql_events.insert`), the way
another replica would: the server learns of them by the database's NOTIFY, numbers them,
and fans them out. N WatchEvents streams in a separate process record when each response
arrives. See bench/README.md, "Event delivery lag".

    python bench/event_lag.py                   # add --json for one JSON object
    python bench/event_lag.py --topology both   # one server, then two replicas
    python bench/event_lag.py --compare-tree DIR   # DIR's server too, in the same run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from database import fresh_database
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from servers import quiet_http

import cronwire_server
from cronwire.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)
from cronwire_server.core.model import EventType
from cronwire_server.storage import sql_events
from cronwire_server.storage.sql_store import SqlStore, normalize_url, open_store
from cronwire_server.storage.tables import jobs

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGET_P99_MS = 100.0
NAMESPACE = "bench"
START_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 60.0
# After the writer stops, how long the watchers may take to receive everything.
DRAIN_TIMEOUT_S = 30.0
# Watchers prove they are subscribed by a first heartbeat.
HEARTBEAT_S = 0.5
TOPOLOGIES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    # One process runs everything; the watchers and the writer both talk to it / its database.
    "single": [("server", ())],
    # Watchers on an api-only replica; numbering races between both replicas' sequencers.
    "split": [("watched", ("--roles", "api")), ("other", ("--roles", "dispatcher,worker"))],
}


# --- servers ---------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the process has used (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(name: str, database_url: str, workdir: Path, flags: Sequence[str], tree: str = "") -> Server:
    """A server process; from the sources under `tree` (its server/ and client/) if given."""
    port_file = workdir / f"{name}.port"
    log = workdir / f"{name}.log"
    env = {**quiet_http(flags), **os.environ}
    if tree:
        paths = [str(Path(tree, "server")), str(Path(tree, "client")), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    port_file.unlink(missing_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cronwire_server",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
                "--port-file",
                str(port_file),
                "--watch-heartbeat-seconds",
                str(HEARTBEAT_S),
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        text = port_file.read_text().strip() if port_file.exists() else ""
        if text.isdigit():
            return Server(name, process, int(text), log)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{name} wrote no port file in {START_TIMEOUT_S:.0f} s")


# --- the writer ------------------------------------------------------------------------


@dataclass
class Written:
    commits: list[float]  # commits[n]: wall-clock time right after the COMMIT of event n returned
    measured_from: int  # events before this one are the warm-up
    seconds: float  # how long writing took
    transactions: int


async def job_snapshot(store: SqlStore, job_id: str) -> dict[str, Any]:
    """The snapshot the server writes with a JOB_UPDATED event of this job, built by its code."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(sa.select(jobs).where(jobs.c.id == job_id))).one()
    return sql_events.job_row_snapshot(dict(row._mapping))


async def write_events(
    database_url: str, rate: float, seconds: float, warmup: float, tick: float, snapshot_of: str
) -> Written:
    """Commit `rate` events per second for warmup + seconds, `tick` seconds' worth per transaction.

    Event n is a JOB_UPDATED of job `e<n>` carrying the snapshot of job `snapshot_of` (none if
    empty); "committed" is the moment the writer's COMMIT returned, so each lag measured from
    it is, if anything, a little short.
    """
    store = await open_store(normalize_url(database_url), pool_size=2)
    snapshot = await job_snapshot(store, snapshot_of) if snapshot_of else None
    commits: list[float] = []
    transactions = 0
    total = warmup + seconds
    started = time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - started) < total:
            due = min(int(rate * (elapsed + tick)), int(rate * total))
            if due > len(commits):
                now = datetime.now(UTC)
                rows = [
                    sql_events.row(
                        EventType.JOB_UPDATED,
                        NAMESPACE,
                        f"namespaces/{NAMESPACE}/jobs/e{n}",
                        now,
                        job_id=f"e{n}",
                        snapshot=snapshot,
                    )
                    for n in range(len(commits), due)
                ]
                async with store.engine.begin() as conn:
                    await conn.run_sync(sql_events.insert, rows)
                committed = time.time()
                commits.extend([committed] * len(rows))
                transactions += 1
            next_tick = started + (len(commits) / rate)
            await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))
    finally:
        await store.close()
    return Written(commits, int(rate * warmup), time.perf_counter() - started, transactions)


# A job as a user would define it: its row is the snapshot every benchmark event carries.
BENCH_JOB = {
    "description": "Nightly export of the orders table to the warehouse, then a summary mail.",
    "labels": {"team": "data", "tier": "2"},
    "executor": "shell",
    "parameters": {"argv": ["/usr/local/bin/export-orders", "--since", "yesterday", "--format", "parquet"]},
    "timeout": "600s",
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "10s", "backoffMultiplier": 2, "maxBackoff": "300s"},
    "callback": {"url": "https://hooks.example.com/cronwire", "secret": "not-in-events"},
}


async def create_job(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        request = job_service_pb2.CreateJobRequest(
            parent=f"namespaces/{NAMESPACE}",
            job_id="export",
            job=json_format.ParseDict(BENCH_JOB, job_pb2.Job()),
        )
        await stub.CreateJob(request)
    return "export"


# --- the watchers (a process of their own) ---------------------------------------------


def _light_response_class() -> Any:
    """A message wire-compatible with WatchEventsResponse that keeps each event as bytes.

    Parsing 100 streams of full events (snapshots included) would make the watcher process,
    not the server, the bottleneck; the sequence is all a lag needs, and it is the first
    field of every serialized Event.
    """
    file = descriptor_pb2.FileDescriptorProto(name="event_lag_light.proto", package="bench", syntax="proto3")
    message = file.message_type.add(name="LightWatchEventsResponse")
    repeated, optional = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED, 1
    message.field.add(
        name="events", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES, label=repeated
    )
    message.field.add(
        name="latest_sequence", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64, label=optional
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.LightWatchEventsResponse"))


LightResponse = _light_response_class()
WATCH_METHOD = "/cronwire.v1.EventService/WatchEvents"


def sequence_of(event: bytes) -> int:
    """The `sequence` (field 1, a varint, serialized first) of a serialized Event."""
    if not event or event[0] != 0x08:
        return 0
    value = shift = 0
    for byte in event[1:11]:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value
        shift += 7
    raise ValueError("bad varint")


class Stream:
    """One watcher: for each response, when it arrived and the sequences it held."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int, int]] = []  # (time, first sequence, last sequence)
        self.gaps = 0
        self.error = ""
        self.ready = asyncio.Event()
        self.last = 0

    def record(self, arrived: float, first: int, last: int, count: int) -> None:
        if last - first + 1 != count or (self.last and first != self.last + 1):
            self.gaps += 1
        self.last = last
        self.arrivals.append((arrived, first, last))


async def watch_light(channel: grpc.aio.Channel, stream: Stream) -> None:
    call = channel.unary_stream(
        WATCH_METHOD,
        request_serializer=event_service_pb2.WatchEventsRequest.SerializeToString,
        response_deserializer=LightResponse.FromString,
    )(event_service_pb2.WatchEventsRequest())
    try:
        async for response in call:
            arrived = time.time()
            events = response.events
            if not events:
                stream.ready.set()
                continue
            stream.record(arrived, sequence_of(events[0]), sequence_of(events[-1]), len(events))
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            stream.error = f"{error.code().name}: {error.details()}"
    except Exception as error:
        stream.error = repr(error)
    finally:
        stream.ready.set()


async def watch_full(channel: grpc.aio.Channel, stream: Stream, names: dict[int, tuple[int, float]]) -> None:
    """A watcher that parses everything: it maps each sequence to the writer's event number."""
    call = event_service_pb2_grpc.EventServiceStub(channel).WatchEvents(
        event_service_pb2.WatchEventsRequest()
    )
    try:
        async for response in call:
            arrived = time.time()
            if not response.events:
                stream.ready.set()
                continue
            events = response.events
            stream.record(arrived, events[0].sequence, events[-1].sequence, len(events))
            for event in events:
                job_id = event.job.rsplit("/", 1)[-1]
                if job_id.startswith("e") and job_id[1:].isdigit():  # not the job "export" itself
                    names[event.sequence] = (int(job_id[1:]), event.time.ToNanoseconds() / 1e9)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            stream.error = f"{error.code().name}: {error.details()}"
    except Exception as error:
        stream.error = repr(error)
    finally:
        stream.ready.set()


def percentile_ms(ordered: Sequence[float], p: float, expected: int) -> float | None:
    """The p-th percentile of `expected` lags of which `ordered` (sorted, seconds) arrived;
    None when it falls among the deliveries that never came (their lag is unbounded)."""
    if not expected:
        return None
    index = min(expected - 1, int(p / 100 * expected))
    return round(ordered[index] * 1000, 2) if index < len(ordered) else None


async def run_watchers(address: str, count: int, channels: int) -> None:
    """Open `count` streams, say "ready", wait for "drain <commits file>", report lags as JSON."""
    opened = [grpc.aio.insecure_channel(address) for _ in range(channels)]
    streams = [Stream() for _ in range(count)]
    names: dict[int, tuple[int, float]] = {}  # sequence -> (event number, Event.time)
    tasks = [asyncio.create_task(watch_full(opened[0], streams[0], names))]
    tasks += [asyncio.create_task(watch_light(opened[i % channels], s)) for i, s in enumerate(streams) if i]
    await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in streams)), READY_TIMEOUT_S)
    print("ready", flush=True)
    cpu_ready, wall_ready = time.process_time(), time.monotonic()
    line = await asyncio.to_thread(sys.stdin.readline)
    written = json.loads(await asyncio.to_thread(Path(line.split(maxsplit=1)[1].strip()).read_text))
    commits: list[float] = written["commits"]
    last_number = len(commits) - 1

    def drained() -> bool:
        done = [s for s in streams if not s.error]
        if not names or max(n for n, _ in names.values()) < last_number:
            return False
        final = max(names)
        return all(s.last >= final for s in done)

    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not drained() and time.monotonic() < deadline:  # noqa: ASYNC110 - polled with a deadline
        await asyncio.sleep(0.05)
    cpu_percent = round(100 * (time.process_time() - cpu_ready) / (time.monotonic() - wall_ready), 1)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in opened:
        await channel.close(None)

    measured_from = written["measured_from"]
    number_of = {seq: n for seq, (n, _) in names.items()}
    wanted = len(commits) - measured_from
    lags: list[float] = []
    from_event_time: list[float] = []
    delivered = 0
    for stream in streams:
        seen = 0
        for arrived, first, last in stream.arrivals:
            for seq in range(first, last + 1):
                n = number_of.get(seq)
                if n is None or n < measured_from:
                    continue
                seen += 1
                lags.append(arrived - commits[n])
                if stream is streams[0]:
                    from_event_time.append(arrived - names[seq][1])
        delivered += seen
    lags.sort()
    from_event_time.sort()
    result = {
        "watchers": count,
        "measured_events": wanted,
        "deliveries": delivered,
        "missing_deliveries": wanted * count - delivered,
        "streams_with_gaps": sum(1 for s in streams if s.gaps),
        "streams_cut_off": sum(1 for s in streams if s.error),
        # Responses that carried events, per stream (the fewer, the larger).
        "responses_per_stream": round(sum(len(s.arrivals) for s in streams) / max(1, count), 1),
        "first_error": next((s.error for s in streams if s.error), ""),
        # From "ready" (the writer starts) until every stream had everything.
        "watcher_process_cpu_percent": cpu_percent,
        # Over every delivery expected (measured events x watchers); null: past what arrived.
        "lag_ms": {
            p: percentile_ms(lags, float(p), wanted * count) for p in ("50", "90", "99", "99.9", "100")
        },
        # The first watcher only, from Event.time (the writer's clock just before its INSERT).
        "lag_from_event_time_ms": {p: percentile_ms(from_event_time, float(p), wanted) for p in ("50", "99")},
    }
    print(json.dumps(result), flush=True)


# --- one run ---------------------------------------------------------------------------


def machine_load() -> dict[str, float]:
    """The 1-minute load average and, where Linux reports it, the share of the last 60 s in
    which some runnable task waited for a CPU (/proc/pressure/cpu): how shared the machine was."""
    load: dict[str, float] = {"load_average_1m": round(os.getloadavg()[0], 2)}
    with contextlib.suppress(OSError, ValueError, IndexError):
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        load["cpu_pressure_some_avg60_percent"] = float(some[2].split("=")[1])
    return load


@dataclass
class Outcome:
    topology: str
    tree: str  # where the server's code came from ("" for this one's)
    snapshot: str
    rate: float
    seconds: float
    written_per_s: float
    transactions: int
    watchers: dict[str, Any]
    server_cpu_percent: dict[str, float]
    # Server CPU (all replicas) per event delivered to one watcher, sequencing included.
    server_cpu_us_per_delivery: float
    # Server CPU (all replicas) over the run, in cores: CPU seconds / wall seconds.
    server_cores: float
    machine: dict[str, float]

    @property
    def p99_ms(self) -> float:
        p99 = self.watchers["lag_ms"]["99"]
        return float("inf") if p99 is None else float(p99)

    @property
    def rate_reached(self) -> bool:
        """Whether the writer kept up the rate asked for (else the target load was not tested)."""
        return self.written_per_s >= 0.95 * self.rate

    @property
    def passed(self) -> bool:
        w = self.watchers
        return (
            self.rate_reached
            and self.p99_ms <= TARGET_P99_MS
            and not w["missing_deliveries"]
            and not w["streams_cut_off"]
        )


@contextmanager
def running(processes: list[Server]) -> Iterator[list[Server]]:
    try:
        yield processes
    finally:
        for server in processes:
            server.stop()


def run_topology(topology: str, args: argparse.Namespace, workdir: Path, tree: str = "") -> Outcome:
    with fresh_database(args.database_url) as database_url:
        servers: list[Server] = []
        with running(servers):
            for name, flags in TOPOLOGIES[topology]:
                servers.append(start_server(name, database_url, workdir, [*flags, *args.server_arg], tree))
            watched = servers[0]
            watchers = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--watch-address",
                    watched.address,
                    "--watchers",
                    str(args.watchers),
                    "--channels",
                    str(args.channels),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert watchers.stdin is not None
                assert watchers.stdout is not None
                if watchers.stdout.readline().strip() != "ready":
                    raise RuntimeError("the watcher process did not get ready")
                snapshot_of = asyncio.run(create_job(watched.address)) if args.snapshot == "job" else ""
                cpu_before = {s.name: s.cpu_seconds() for s in servers}
                clock = time.monotonic()
                written = asyncio.run(
                    write_events(
                        database_url, args.rate, args.seconds, args.warmup, args.tick_ms / 1000, snapshot_of
                    )
                )
                machine = machine_load()
                commits_file = workdir / f"commits-{topology}.json"
                commits_file.write_text(
                    json.dumps({"commits": written.commits, "measured_from": written.measured_from})
                )
                watchers.stdin.write(f"drain {commits_file}\n")
                watchers.stdin.flush()
                report = json.loads(watchers.stdout.readline())
                # From the first event written until the watchers had everything (or gave up).
                wall = time.monotonic() - clock
                used = {s.name: s.cpu_seconds() - cpu_before[s.name] for s in servers}
                cpu = {name: round(100 * seconds / wall, 1) for name, seconds in used.items()}
                cores = round(sum(used.values()) / wall, 2)
                deliveries = len(written.commits) * args.watchers - report["missing_deliveries"]
                per_delivery = round(sum(used.values()) / max(1, deliveries) * 1e6, 2)
            finally:
                if watchers.poll() is None:
                    watchers.kill()
                watchers.wait()
    return Outcome(
        topology=topology,
        tree=tree,
        snapshot=args.snapshot,
        rate=args.rate,
        seconds=args.seconds,
        written_per_s=round(len(written.commits) / written.seconds, 1),
        transactions=written.transactions,
        watchers=report,
        server_cpu_percent=cpu,
        server_cpu_us_per_delivery=per_delivery,
        server_cores=cores,
        machine=machine,
    )


def print_table(outcomes: list[Outcome]) -> None:
    trees = sorted({o.tree for o in outcomes})
    label = {tree: (f"[{chr(ord('a') + i)}]" if len(trees) > 1 else "") for i, tree in enumerate(trees)}
    print(
        f"{'topology':<13} {'events/s':>8} {'watchers':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'missing':>8} {'cut off':>8} {'cores':>6} {'us/event':>8}  verdict"
    )
    for o in outcomes:
        lag = {p: "never" if v is None else f"{v:.1f}" for p, v in o.watchers["lag_ms"].items()}
        print(
            f"{o.topology + label[o.tree]:<13} {o.written_per_s:>8.0f} {o.watchers['watchers']:>8} "
            f"{lag['50']:>8} {lag['90']:>8} {lag['99']:>8} {lag['100']:>8} "
            f"{o.watchers['missing_deliveries']:>8} {o.watchers['streams_cut_off']:>8} "
            f"{o.server_cores:>6.2f} {o.server_cpu_us_per_delivery:>8.2f}  {'PASS' if o.passed else 'MISS'}"
        )
    print()
    if len(trees) > 1:
        for tree in trees:
            print(f"{label[tree]} server from {tree or Path(cronwire_server.__file__).parent.parent}")
        print()
    target = f"target p99 <= {TARGET_P99_MS:.0f} ms, nothing missing, no stream cut off"
    for o in outcomes:
        verdict = "PASS" if o.passed else "MISS"
        print(
            f"{o.topology}{label[o.tree]} (snapshot: {o.snapshot}): p99 {o.p99_ms:.1f} ms, "
            f"server {o.server_cores:.2f} cores ({o.server_cpu_us_per_delivery} us per delivered event)  "
            f"{target}  {verdict}"
        )
        if not o.rate_reached:
            print(f"  the writer reached only {o.written_per_s:.0f} of {o.rate:.0f} events/s")
        print(
            f"  machine while writing: {o.machine}; "
            f"watcher process CPU {o.watchers['watcher_process_cpu_percent']} %; "
            f"{o.watchers['responses_per_stream']} responses per stream; "
            f"server CPU % by process {o.server_cpu_percent}"
        )
        if o.watchers["first_error"]:
            print(f"  first stream error: {o.watchers['first_error']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CRONWIRE_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="a PostgreSQL server the benchmark may create a database on (CRONWIRE_BENCH_DATABASE_URL)",
    )
    parser.add_argument("--topology", choices=[*TOPOLOGIES, "both"], default="single")
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--channels", type=int, default=1, help="channels the watchers share (default 1)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events committed per second")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds written but not measured")
    parser.add_argument(
        "--tick-ms", type=float, default=10.0, help="one transaction per tick (default 10 ms)"
    )
    parser.add_argument(
        "--snapshot",
        choices=["job", "none"],
        default="job",
        help="what each event carries: a job snapshot (as JOB_UPDATED events do; default) or nothing",
    )
    parser.add_argument("--server-arg", action="append", default=[], help="a flag for every server")
    parser.add_argument(
        "--compare-tree",
        default="",
        help="also run the servers from the sources under this directory (its server/ and client/, "
        "e.g. an exported older commit), alternating with this checkout's, in the same run",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each topology (and tree)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--watch-address", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.watch_address:
        asyncio.run(run_watchers(args.watch_address, args.watchers, args.channels))
        return 0

    topologies = list(TOPOLOGIES) if args.topology == "both" else [args.topology]
    trees = [args.compare_tree, ""] if args.compare_tree else [""]
    with tempfile.TemporaryDirectory(prefix="cronwire-event-lag-") as tmp:
        outcomes = [
            run_topology(t, args, Path(tmp), tree)
            for t in topologies
            for _ in range(args.repeat)
            for tree in trees
        ]
    if args.json:
        print(
            json.dumps(
                {
                    "target_p99_ms": TARGET_P99_MS,
                    "results": [{**asdict(o), "passed": o.passed} for o in outcomes],
                }
            )
        )
    else:
        print_table(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
