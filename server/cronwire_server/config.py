"""Server settings: command-line flags, each with a CRONWIRE_* environment variable."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cronwire_server.eventloop import EVENT_LOOPS
from cronwire_server.executors.http_runner import HttpPolicy

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///cronwire.db"
ROLES = ("api", "dispatcher", "worker")


def parse_networks(value: str) -> tuple[str, ...]:
    networks = tuple(n.strip() for n in value.split(",") if n.strip())
    for network in networks:
        try:
            ipaddress.ip_network(network)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{network!r} is not a network (CIDR): {exc}") from exc
    return networks


def parse_roles(value: str) -> frozenset[str]:
    roles = frozenset(r.strip() for r in value.split(",") if r.strip())
    unknown = roles - set(ROLES)
    if unknown or not roles:
        raise argparse.ArgumentTypeError(f"roles are a comma-separated subset of {','.join(ROLES)}")
    return roles


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database_url: str = DEFAULT_DATABASE_URL
    # Seconds that running calls get to finish on SIGTERM.
    shutdown_grace: float = 10.0
    # Where to write the bound port once serving (useful with port 0).
    port_file: str = ""
    log_level: str = "INFO"
    # Which parts this process runs; every role is safe to run in many processes at once.
    roles: frozenset[str] = frozenset(ROLES)
    worker_slots: int = 16
    lease_seconds: float = 30.0
    misfire_grace_seconds: float = 5.0
    max_output_bytes: int = 1024 * 1024
    # Webhooks (http jobs, callbacks) to loopback, private and link-local addresses.
    allow_private_networks: bool = False
    allowed_networks: tuple[str, ...] = ()
    event_retention_days: float = 7.0
    watch_heartbeat_seconds: float = 15.0
    watch_buffer: int = 256
    event_loop: str = "auto"


def add_server_flags(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    """Flags for `serve`; each defaults to its CRONWIRE_* variable, then to the built-in default."""
    parser.add_argument(
        "--listen",
        default=env.get("CRONWIRE_LISTEN", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help="address to serve gRPC on; port 0 picks a free one (CRONWIRE_LISTEN, default %(default)s)",
    )
    add_database_flag(parser, env)
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=float(env.get("CRONWIRE_SHUTDOWN_GRACE", "10")),
        metavar="SECONDS",
        help="on SIGTERM, how long running calls may finish (CRONWIRE_SHUTDOWN_GRACE, default %(default)s)",
    )
    parser.add_argument(
        "--port-file",
        default=env.get("CRONWIRE_PORT_FILE", ""),
        metavar="PATH",
        help="write the bound port to this file once serving (CRONWIRE_PORT_FILE)",
    )
    parser.add_argument(
        "--roles",
        type=parse_roles,
        default=parse_roles(env.get("CRONWIRE_ROLES", ",".join(ROLES))),
        metavar="ROLES",
        help="what this process runs: api,dispatcher,worker or a subset (CRONWIRE_ROLES, default all)",
    )
    parser.add_argument(
        "--worker-slots",
        type=int,
        default=int(env.get("CRONWIRE_WORKER_SLOTS", "16")),
        metavar="N",
        help="executions this process runs at once (CRONWIRE_WORKER_SLOTS, default %(default)s)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=float(env.get("CRONWIRE_LEASE_SECONDS", "30")),
        metavar="SECONDS",
        help="a running execution whose worker stops renewing its lease this long is recovered "
        "by another replica (CRONWIRE_LEASE_SECONDS, default %(default)s)",
    )
    parser.add_argument(
        "--misfire-grace-seconds",
        type=float,
        default=float(env.get("CRONWIRE_MISFIRE_GRACE_SECONDS", "5")),
        metavar="SECONDS",
        help="a tick fired later than this is a misfire, handled by the schedule's misfire policy "
        "(CRONWIRE_MISFIRE_GRACE_SECONDS, default %(default)s)",
    )
    parser.add_argument(
        "--max-output-bytes",
        type=int,
        default=int(env.get("CRONWIRE_MAX_OUTPUT_BYTES", str(1024 * 1024))),
        metavar="BYTES",
        help="captured output kept per execution; the rest is dropped and flagged "
        "(CRONWIRE_MAX_OUTPUT_BYTES, default %(default)s)",
    )
    parser.add_argument(
        "--allow-private-networks",
        action="store_true",
        default=env.get("CRONWIRE_ALLOW_PRIVATE_NETWORKS", "").lower() in ("1", "true", "yes"),
        help="let http jobs and callbacks call loopback, private and link-local addresses "
        "(CRONWIRE_ALLOW_PRIVATE_NETWORKS=1); off by default: a scheduler that calls URLs for its "
        "users must not reach the cloud metadata service or the host's own ports",
    )
    parser.add_argument(
        "--allowed-networks",
        type=parse_networks,
        default=parse_networks(env.get("CRONWIRE_ALLOWED_NETWORKS", "")),
        metavar="CIDR,...",
        help="non-public networks http jobs and callbacks may call, e.g. 10.1.0.0/16 "
        "(CRONWIRE_ALLOWED_NETWORKS)",
    )
    parser.add_argument(
        "--event-retention-days",
        type=float,
        default=float(env.get("CRONWIRE_EVENT_RETENTION_DAYS", "7")),
        metavar="DAYS",
        help="how long events are kept for ListEvents and resuming watchers "
        "(CRONWIRE_EVENT_RETENTION_DAYS, default %(default)s)",
    )
    parser.add_argument(
        "--watch-heartbeat-seconds",
        type=float,
        default=float(env.get("CRONWIRE_WATCH_HEARTBEAT_SECONDS", "15")),
        metavar="SECONDS",
        help="an idle WatchEvents stream gets a heartbeat this often (CRONWIRE_WATCH_HEARTBEAT_SECONDS, "
        "default %(default)s)",
    )
    parser.add_argument(
        "--watch-buffer",
        type=int,
        default=int(env.get("CRONWIRE_WATCH_BUFFER", "256")),
        metavar="BATCHES",
        help="event batches a watcher may fall behind before it is cut off and told to resume "
        "(CRONWIRE_WATCH_BUFFER, default %(default)s)",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=env.get("CRONWIRE_EVENT_LOOP", "auto"),
        help="auto (uvloop in processes without the worker role, when installed), uvloop or asyncio "
        "(CRONWIRE_EVENT_LOOP, default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=env.get("CRONWIRE_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(CRONWIRE_LOG_LEVEL, default %(default)s)",
    )


def add_database_flag(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    parser.add_argument(
        "--database-url",
        default=env.get("CRONWIRE_DATABASE_URL", DEFAULT_DATABASE_URL),
        metavar="URL",
        help="sqlite:///FILE or postgresql://USER@HOST/DB (CRONWIRE_DATABASE_URL, default %(default)s)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(
        listen=args.listen,
        database_url=args.database_url,
        shutdown_grace=args.shutdown_grace,
        port_file=args.port_file,
        log_level=args.log_level,
        roles=args.roles,
        worker_slots=args.worker_slots,
        lease_seconds=args.lease_seconds,
        misfire_grace_seconds=args.misfire_grace_seconds,
        max_output_bytes=args.max_output_bytes,
        allow_private_networks=args.allow_private_networks,
        allowed_networks=args.allowed_networks,
        event_retention_days=args.event_retention_days,
        watch_heartbeat_seconds=args.watch_heartbeat_seconds,
        watch_buffer=args.watch_buffer,
        event_loop=args.event_loop,
    )


def http_policy(settings: Settings) -> HttpPolicy:
    return HttpPolicy(
        allow_private=settings.allow_private_networks,
        allowed_networks=tuple(ipaddress.ip_network(n) for n in settings.allowed_networks),
        hint="allow it with --allow-private-networks or --allowed-networks",
    )
