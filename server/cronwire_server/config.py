"""Server settings: command-line flags, each with a CRONWIRE_* environment variable."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from cronwire_server.core.model import RetentionPolicy
from cronwire_server.eventloop import EVENT_LOOPS
from cronwire_server.executors.address_policy import HttpPolicy
from cronwire_server.logs import FORMATS as LOG_FORMATS

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_DATABASE_URL = "sqlite:///cronwire.db"
# The dashboard, /metrics, /healthz and /readyz, served by default when gRPC listens on loopback.
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8080"
ROLES = ("api", "dispatcher", "worker")
# The standard services a caller may reach without an API key, unless configured otherwise.
AUTH_EXEMPTABLE = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


def parse_networks(value: str) -> tuple[str, ...]:
    networks = tuple(n.strip() for n in value.split(",") if n.strip())
    for network in networks:
        try:
            ipaddress.ip_network(network)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{network!r} is not a network (CIDR): {exc}") from exc
    return networks


def non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {number}")
    return number


def host_and_port(address: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_metrics_address(value: str) -> str:
    if value:
        try:
            host_and_port(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number, not negative, got {value}")
    return number


def positive_float(value: str) -> float:
    number = non_negative_float(value)
    if number == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return number


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
    # Finished executions kept per job (0: no limit) and for how long (0: forever).
    execution_retention_count: int = 1000
    execution_retention_days: float = 30.0
    # How often this process heartbeats in the replica registry (`cronwire status`).
    replica_heartbeat_seconds: float = 5.0
    watch_heartbeat_seconds: float = 15.0
    watch_buffer: int = 256
    event_loop: str = "auto"
    # The HTTP listener (dashboard, /metrics, /healthz, /readyz) at HOST:PORT; empty: not served.
    # The command line's default (see `resolve_http_address`) serves it on loopback.
    http_address: str = ""
    # Where to write the HTTP port once serving (useful with port 0).
    http_port_file: str = ""
    # Whether `http_address` is the default rather than asked for: then a port already taken
    # leaves the server running without the listener, and says so.
    http_address_defaulted: bool = False
    # Older names of http_address and http_port_file (`--metrics-address`), kept as aliases.
    metrics_address: str = ""
    metrics_port_file: str = ""
    # "text" for people, "json" (one object per line) for log collectors.
    log_format: str = "text"
    # Auth: on when listening beyond loopback (unless `insecure`), or with `require_auth`.
    require_auth: bool = False
    insecure: bool = False
    # Requests per second per API key in each replica (0: unlimited), and the burst allowed.
    rate_limit_per_key: float = 50.0
    rate_limit_burst: int = 100
    # Failed authentications per second per client address (0: unlimited), and the burst allowed.
    auth_failures_per_peer: float = 1.0
    auth_failure_burst: int = 20
    # How long a replica trusts what it read about a key: the delay before a revocation bites.
    key_cache_seconds: float = 5.0
    # Services open without a key (health checks and reflection by default).
    auth_exempt_services: tuple[str, ...] = AUTH_EXEMPTABLE
    # TLS (PEM files): a certificate and key serve TLS; a client CA also requires client certificates.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Limits (see limits.py); 0 = unlimited where a limit is a count.
    max_message_bytes: int = 8 * 1024 * 1024
    max_jobs_per_namespace: int = 100_000
    max_schedules_per_namespace: int = 100_000
    max_running_per_namespace: int = 0
    # Sizes of the free-form documents a request may carry: every copy of them (rows, events,
    # watchers' pages) is bounded by these.
    max_parameters_bytes: int = 256 * 1024
    max_arguments_bytes: int = 256 * 1024
    max_labels_bytes: int = 64 * 1024
    # Server streams (WatchEvents, StreamExecutionLogs) open at once, per key and per replica.
    max_streams_per_key: int = 100
    max_streams_per_replica: int = 2000
    # Executions one run of a job may lead to through its dependents, every path counted.
    max_fan_out: int = 100
    # Secrets that jobs reference by name: a YAML or JSON file of name -> value and namespaces.
    secrets_file: str = ""
    # Who shell and python jobs run as (see executors.jobuser): by default a root server's jobs
    # run as cronwire-jobs or nobody, and as root only with allow_root_jobs.
    run_as: str = ""
    allow_root_jobs: bool = False
    # The packages python jobs may call (`module:function`); empty: any but those that run programs
    # or code (os, builtins, subprocess...; see executors.registry.REFUSED_MODULES).
    python_path_allow: tuple[str, ...] = ()


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
        "--execution-retention-count",
        convert=non_negative,
        metavar="N",
        help="finished executions kept per job, the newest; older ones and their output are "
        "pruned in the background (0: no limit)",
    )
    _flag(
        parser,
        env,
        "--execution-retention-days",
        convert=non_negative_float,
        metavar="DAYS",
        help="finished executions that ended longer ago are pruned with their output (0: kept forever)",
    )
    _flag(
        parser,
        env,
        "--replica-heartbeat-seconds",
        convert=positive_float,
        metavar="SECONDS",
        help="how often this process heartbeats in the replica registry; it shows as not alive "
        "after three missed heartbeats",
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
    add_log_format_flag(parser, env)
    _optional_flag(
        parser,
        env,
        "--http-address",
        convert=parse_metrics_address,
        metavar="HOST:PORT",
        help="serve the dashboard, /metrics, /healthz and /readyz over HTTP (HTTPS with --tls-cert) "
        f"at HOST:PORT; port 0 picks a free one; empty turns it off; default {DEFAULT_HTTP_ADDRESS} "
        "when --listen is on loopback, else off",
    )
    _flag(
        parser,
        env,
        "--http-port-file",
        metavar="PATH",
        help="write the bound HTTP port to this file once serving",
    )
    _optional_flag(
        parser,
        env,
        "--metrics-address",
        convert=parse_metrics_address,
        metavar="HOST:PORT",
        help="the older name of --http-address",
    )
    _flag(parser, env, "--metrics-port-file", metavar="PATH", help="the older name of --http-port-file")
    add_tls_flags(parser, env)
    add_auth_flags(parser, env)
    add_limit_flags(parser, env)
    _flag(
        parser,
        env,
        "--secrets-file",
        metavar="PATH",
        help='secrets jobs reference as {"secret": "NAME"}: a YAML or JSON mapping of name to '
        "{value, namespaces} (a plain value: every namespace), read again when it changes; "
        "CRONWIRE_SECRET_<NAME> variables are read too, for every namespace",
    )
    _flag(
        parser,
        env,
        "--run-as",
        metavar="USER",
        help="the user shell and python jobs run as (the server must run as root to switch); "
        "a root server without it runs them as cronwire-jobs, else nobody",
    )
    _switch(
        parser,
        env,
        "--allow-root-jobs",
        help="let a server running as root run jobs as root: they can then read its database URL, "
        "secrets and keys",
    )
    _flag(
        parser,
        env,
        "--python-path-allow",
        convert=parse_python_path_allow,
        metavar="PKG[,PKG]",
        help="the only packages python jobs may call (module:function under one of them); without it "
        "every module but those that run programs or code (os, builtins, subprocess, sys...)",
    )


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_python_path_allow(value: str) -> tuple[str, ...]:
    """`myapp, reports.jobs` -> ("myapp", "reports.jobs")."""
    packages = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    for package in packages:
        if not _MODULE_NAME.fullmatch(package):
            raise argparse.ArgumentTypeError(
                f"{package!r} is not a module name (letters, digits, _ and dots)"
            )
    return packages


def _optional_flag(
    parser: argparse.ArgumentParser,
    env: Mapping[str, str],
    flag: str,
    *,
    help: str,
    convert: Callable[[str], Any] = str,
    **extra: Any,
) -> None:
    """`--some-flag`, else its CRONWIRE_SOME_FLAG variable, else None: not given (the setting's
    default then depends on other settings)."""
    variable = "CRONWIRE_" + flag.removeprefix("--").replace("-", "_").upper()
    raw = env.get(variable)
    parser.add_argument(
        flag,
        type=convert,
        default=convert(raw) if raw is not None else None,
        help=f"{help} ({variable})",
        **extra,
    )


def _switch(parser: argparse.ArgumentParser, env: Mapping[str, str], flag: str, *, help: str) -> None:
    """A boolean `--flag`, also set by CRONWIRE_FLAG=1 (or true, yes)."""
    variable = "CRONWIRE_" + flag.removeprefix("--").replace("-", "_").upper()
    on = env.get(variable, "").strip().lower() in ("1", "true", "yes")
    parser.add_argument(flag, action="store_true", default=on, help=f"{help} ({variable}=1)")


def parse_exempt_services(value: str) -> tuple[str, ...]:
    services = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = set(services) - set(AUTH_EXEMPTABLE)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"only health and reflection can be open without a key: a subset of {','.join(AUTH_EXEMPTABLE)}"
        )
    return services


def add_auth_flags(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    _switch(
        parser,
        env,
        "--require-auth",
        help="require an API key even when listening on loopback (beyond loopback it always is)",
    )
    _switch(
        parser,
        env,
        "--insecure",
        help="serve without authentication on a non-loopback address; only for trusted networks",
    )
    _flag(
        parser,
        env,
        "--rate-limit-per-key",
        convert=non_negative_float,
        metavar="REQUESTS_PER_SECOND",
        help="requests per second each API key may make to this replica; 0 is unlimited",
    )
    _flag(
        parser,
        env,
        "--rate-limit-burst",
        convert=non_negative,
        metavar="REQUESTS",
        help="requests a key may make at once before --rate-limit-per-key paces it",
    )
    _flag(
        parser,
        env,
        "--auth-failures-per-peer",
        convert=non_negative_float,
        metavar="PER_SECOND",
        help="failed authentications a client address may make per second; past it, its calls "
        "get RESOURCE_EXHAUSTED until it is back under (0: unlimited)",
    )
    _flag(
        parser,
        env,
        "--auth-failure-burst",
        convert=non_negative,
        metavar="FAILURES",
        help="failed authentications a client address may make at once before "
        "--auth-failures-per-peer paces it",
    )
    _flag(
        parser,
        env,
        "--key-cache-seconds",
        convert=non_negative_float,
        metavar="SECONDS",
        help="how long a replica trusts what it read about a key: a revoked key stops working "
        "within this time",
    )
    parser.add_argument(
        "--auth-exempt-services",
        type=parse_exempt_services,
        default=parse_exempt_services(env.get("CRONWIRE_AUTH_EXEMPT_SERVICES", ",".join(AUTH_EXEMPTABLE))),
        metavar="SERVICES",
        help="services callable without a key, comma-separated; empty makes health and reflection "
        "need one too (CRONWIRE_AUTH_EXEMPT_SERVICES, default health and reflection)",
    )


def add_tls_flags(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    _flag(parser, env, "--tls-cert", metavar="PEM", help="serve TLS with this certificate chain")
    _flag(parser, env, "--tls-key", metavar="PEM", help="the private key of --tls-cert")
    _flag(
        parser,
        env,
        "--tls-client-ca",
        metavar="PEM",
        help="require client certificates signed by these CAs (mutual TLS); needs --tls-cert",
    )


def add_limit_flags(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    _flag(
        parser,
        env,
        "--max-message-bytes",
        convert=non_negative,
        metavar="BYTES",
        help="largest request message accepted; larger ones get RESOURCE_EXHAUSTED",
    )
    for kind in ("jobs", "schedules"):
        _flag(
            parser,
            env,
            f"--max-{kind}-per-namespace",
            convert=non_negative,
            metavar="N",
            help=f"{kind} a namespace may hold; creating more gets RESOURCE_EXHAUSTED (0: no limit)",
        )
    _flag(
        parser,
        env,
        "--max-running-per-namespace",
        convert=non_negative,
        metavar="N",
        help="executions of one namespace running at once across all replicas; the rest wait "
        "QUEUED (0: no limit)",
    )
    for document, of in (
        ("parameters", "a job's parameters"),
        ("arguments", "the arguments of a schedule or a run"),
        ("labels", "a job's labels, keys and values together"),
    ):
        _flag(
            parser,
            env,
            f"--max-{document}-bytes",
            convert=non_negative,
            metavar="BYTES",
            help=f"largest size of {of}; larger gets INVALID_ARGUMENT naming the field (0: no limit)",
        )
    for scope in ("key", "replica"):
        _flag(
            parser,
            env,
            f"--max-streams-per-{scope}",
            convert=non_negative,
            metavar="N",
            help=f"streams (WatchEvents, StreamExecutionLogs) open at once per {scope}; more get "
            "RESOURCE_EXHAUSTED (0: no limit)",
        )
    _flag(
        parser,
        env,
        "--max-fan-out",
        convert=non_negative,
        metavar="N",
        help="executions one run of a job may lead to through its dependents, every path counted; "
        "a job change past it gets INVALID_ARGUMENT naming dependents (0: no limit)",
    )


def add_log_format_flag(parser: argparse.ArgumentParser, env: Mapping[str, str] = os.environ) -> None:
    _flag(
        parser,
        env,
        "--log-format",
        choices=LOG_FORMATS,
        help="text (readable) or json (one object per line, for log collectors)",
    )


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
    given = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    if hasattr(args, "http_address"):
        given.update(resolve_http_address(args))
    return Settings(**given)


def resolve_http_address(args: argparse.Namespace) -> dict[str, Any]:
    """The HTTP listener's address and port file from --http-address or its older name
    --metrics-address (SystemExit when both are given and differ); when neither is,
    DEFAULT_HTTP_ADDRESS if gRPC listens on loopback, else off."""
    address, older = args.http_address, args.metrics_address
    if address is not None and older is not None and address != older:
        raise SystemExit(
            "cronwire-server: --metrics-address is the older name of --http-address: give one of them"
        )
    chosen = address if address is not None else older
    defaulted = chosen is None
    if chosen is None:
        chosen = DEFAULT_HTTP_ADDRESS if is_loopback_address(args.listen) else ""
    port_file = args.http_port_file or args.metrics_port_file
    return {
        "http_address": chosen,
        "http_address_defaulted": defaulted,
        "metrics_address": chosen,
        "http_port_file": port_file,
        "metrics_port_file": port_file,
    }


def is_loopback_address(address: str) -> bool:
    """Whether HOST:PORT only accepts connections from this machine (names other than
    localhost count as reachable from elsewhere)."""
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def http_policy(settings: Settings) -> HttpPolicy:
    return HttpPolicy(
        allow_private=settings.allow_private_networks,
        allowed_networks=tuple(ipaddress.ip_network(n) for n in settings.allowed_networks),
        hint="allow it with --allow-private-networks or --allowed-networks",
    )


def retention_policy(settings: Settings) -> RetentionPolicy:
    days = settings.execution_retention_days
    return RetentionPolicy(
        count=settings.execution_retention_count, max_age=timedelta(days=days) if days > 0 else None
    )
