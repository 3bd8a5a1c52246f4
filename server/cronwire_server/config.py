"""Server settings: command-line flags, each with a CRONWIRE_* environment variable."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

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


_DEFAULTS = Settings()


def _flag(
    parser: argparse.ArgumentParser,
    env: Mapping[str, str],
    flag: str,
    *,
    help: str,
    convert: Callable[[str], Any] = str,
    **extra: Any,
) -> None:
    """`--some-flag`: its CRONWIRE_SOME_FLAG variable, else the default of `Settings.some_flag`."""
    dest = flag.removeprefix("--").replace("-", "_")
    variable = "CRONWIRE_" + dest.upper()
    raw = env.get(variable)
    default = convert(raw) if raw is not None else getattr(_DEFAULTS, dest)
    parser.add_argument(
        flag, type=convert, default=default, help=f"{help} ({variable}, default %(default)s)", **extra
    )


def add_server_flags(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    """Flags for `serve`; each defaults to its CRONWIRE_* variable, then to the built-in default."""
    _flag(
        parser, env, "--listen", metavar="HOST:PORT", help="address to serve gRPC on; port 0 picks a free one"
    )
    add_database_flag(parser, env)
    _flag(
        parser,
        env,
        "--shutdown-grace",
        convert=float,
        metavar="SECONDS",
        help="on SIGTERM, how long running calls and executions may finish",
    )
    _flag(parser, env, "--port-file", metavar="PATH", help="write the bound port to this file once serving")
    parser.add_argument(
        "--roles",
        type=parse_roles,
        default=parse_roles(env.get("CRONWIRE_ROLES", ",".join(ROLES))),
        metavar="ROLES",
        help="what this process runs: api,dispatcher,worker or a subset (CRONWIRE_ROLES, default all)",
    )
    _flag(
        parser, env, "--worker-slots", convert=int, metavar="N", help="executions this process runs at once"
    )
    _flag(
        parser,
        env,
        "--lease-seconds",
        convert=float,
        metavar="SECONDS",
        help="a running execution whose worker stops renewing its lease this long is recovered "
        "by another replica",
    )
    _flag(
        parser,
        env,
        "--misfire-grace-seconds",
        convert=float,
        metavar="SECONDS",
        help="a tick fired later than this is a misfire, handled by the schedule's misfire policy",
    )
    _flag(
        parser,
        env,
        "--max-output-bytes",
        convert=int,
        metavar="BYTES",
        help="captured output kept per execution; the rest is dropped and flagged",
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
    _flag(
        parser,
        env,
        "--event-retention-days",
        convert=float,
        metavar="DAYS",
        help="how long events are kept for ListEvents and resuming watchers",
    )
    _flag(
        parser,
        env,
        "--watch-heartbeat-seconds",
        convert=float,
        metavar="SECONDS",
        help="an idle WatchEvents stream gets a heartbeat this often",
    )
    _flag(
        parser,
        env,
        "--watch-buffer",
        convert=int,
        metavar="BATCHES",
        help="event batches a watcher may fall behind before it is cut off and told to resume",
    )
    _flag(
        parser,
        env,
        "--event-loop",
        choices=EVENT_LOOPS,
        help="auto (uvloop in processes without the worker role, when installed), uvloop or asyncio",
    )
    _flag(parser, env, "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")


def add_database_flag(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    _flag(
        parser,
        env,
        "--database-url",
        metavar="URL",
        help="sqlite:///FILE or postgresql://USER@HOST/DB",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    # `migrate` has only some of the flags: the rest keep their defaults.
    return Settings(**{f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)})


def http_policy(settings: Settings) -> HttpPolicy:
    return HttpPolicy(
        allow_private=settings.allow_private_networks,
        allowed_networks=tuple(ipaddress.ip_network(n) for n in settings.allowed_networks),
        hint="allow it with --allow-private-networks or --allowed-networks",
    )
