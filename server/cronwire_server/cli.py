"""`cronwire-server`: `serve` (the default) and `migrate`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cronwire_server import __version__, logs
from cronwire_server.auth.commands import add_keys_command, run_keys_command
from cronwire_server.config import (
    add_database_flag,
    add_log_format_flag,
    add_server_flags,
    settings_from_args,
)

COMMANDS = ("serve", "migrate", "keys")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cronwire-server", description="The cronwire job-scheduling server (gRPC)."
    )
    parser.add_argument("--version", action="version", version=f"cronwire-server {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the server (the default command)")
    add_server_flags(serve)
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    add_database_flag(migrate)
    add_keys_command(commands)
    add_log_format_flag(migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0] not in COMMANDS and args_list[0] not in ("-h", "--help", "--version")):
        args_list.insert(0, "serve")
    args = _parser().parse_args(args_list)
    try:
        from cronwire_server.app import serve
        from cronwire_server.eventloop import resolve, run
        from cronwire_server.storage.migrate import upgrade
    except ModuleNotFoundError as exc:
        print(
            f"cronwire-server needs the server extra: pip install 'cronwire[server]' ({exc})", file=sys.stderr
        )
        return 2
    if args.command == "keys":
        logs.configure("WARNING", "text")
        return run_keys_command(args)
    if args.command == "migrate":
        logs.configure("INFO", args.log_format)
        upgrade(args.database_url)
        print("database is up to date")
        return 0
    logs.configure(args.log_level, args.log_format)
    settings = settings_from_args(args)
    try:
        loop = resolve(settings.event_loop, settings.roles)
    except ValueError as exc:
        print(f"cronwire-server: {exc}", file=sys.stderr)
        return 2
    run(serve(settings), loop, settings.roles)
    return 0
