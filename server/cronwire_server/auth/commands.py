"""`cronwire-server keys create|list|revoke`: key management straight on the database, so an
operator can make the first admin key before any server runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from cronwire_server.auth.keys import (
    ALL_EXECUTORS,
    ALL_NAMESPACES,
    ALL_QUEUES,
    DEFAULT_EXECUTORS,
    ApiKey,
    Role,
)
from cronwire_server.auth.principal import OPEN
from cronwire_server.core.errors import CronwireError, InvalidArgument, NotFound
from cronwire_server.core.model import Page

if TYPE_CHECKING:
    from cronwire_server.auth.manage import KeyManager


def add_keys_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from cronwire_server.config import add_database_flag

    keys = commands.add_parser("keys", help="create, list and revoke API keys (on the database directly)")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a key and print it (shown only this once)")
    create.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        required=True,
        metavar="NAMESPACE",
        help=f"a namespace the key may see; repeat for more; {ALL_NAMESPACES!r} is every namespace",
    )
    create.add_argument(
        "--role",
        required=True,
        choices=[r.name.lower() for r in Role],
        help="viewer: read and watch; editor: also change and run; admin: also manage keys; "
        "worker: take remote work of --queues (WorkerService) and nothing else",
    )
    create.add_argument(
        "--queues",
        type=_kinds,
        default=[],
        metavar="QUEUE[,QUEUE]",
        help="role worker: the queues its workers take work from (the jobs' queue parameter); "
        f"{ALL_QUEUES!r} is every queue",
    )
    create.add_argument(
        "--executors",
        type=_kinds,
        default=[],
        metavar="KIND[,KIND]",
        help="the executor kinds the key may create and change jobs with, e.g. shell,python; "
        f"{ALL_EXECUTORS!r} is every kind (default: {','.join(DEFAULT_EXECUTORS)}, whatever the role)",
    )
    create.add_argument("--description", default="", help="who or what uses the key")
    add_database_flag(create)
    listing = actions.add_parser("list", help="list keys, revoked ones included (never their secrets)")
    add_database_flag(listing)
    revoke = actions.add_parser("revoke", help="revoke a key (servers notice within --key-cache-seconds)")
    revoke.add_argument("key", metavar="ID", help="the key's id (or keys/ID)")
    add_database_flag(revoke)


def _kinds(value: str) -> list[str]:
    return [kind.strip() for kind in value.split(",") if kind.strip()]


def run_keys_command(args: argparse.Namespace) -> int:
    from cronwire_server.storage.migrate import upgrade

    upgrade(args.database_url)
    try:
        if args.keys_command == "create":
            return _run(args.database_url, lambda m: _create(m, args))
        if args.keys_command == "list":
            return _run(args.database_url, _list)
        return _run(args.database_url, lambda m: _revoke(m, args.key.removeprefix("keys/")))
    except InvalidArgument as error:
        print(f"cronwire-server keys {args.keys_command}: {error.message}", file=sys.stderr)
        return 2
    except CronwireError as error:
        print(f"cronwire-server keys {args.keys_command}: {error.message}", file=sys.stderr)
        return 1


def _run(url: str, work: Callable[[KeyManager], Awaitable[int]]) -> int:
    from cronwire_server.auth.manage import KeyManager
    from cronwire_server.storage.sql_engine import create_engine
    from cronwire_server.storage.sql_keys import KeyStore

    async def main() -> int:
        engine = create_engine(url, pool_size=1)
        try:
            return await work(KeyManager(KeyStore(engine)))
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def _create(keys: KeyManager, args: argparse.Namespace) -> int:
    key, token = await keys.create(
        Role.parse(args.role),
        args.namespaces,
        args.description,
        caller=OPEN,
        executors=args.executors,
        queues=args.queues,
    )
    # The token alone on stdout, for TOKEN=$(cronwire-server keys create ...).
    print(token)
    print(
        f"created key {key.name} (role {key.role.name.lower()}, namespaces {', '.join(key.namespaces)}, "
        + (f"queues {', '.join(key.queues)}); " if key.queues else f"executors {', '.join(key.executors)}); ")
        + "it is shown only this once",
        file=sys.stderr,
    )
    return 0


async def _list(keys: KeyManager) -> int:
    rows = [("ID", "ROLE", "NAMESPACES", "EXECUTORS", "CREATED", "REVOKED", "DESCRIPTION")]
    page = Page(size=1000)
    while True:
        listing = await keys.list_page(page, caller=OPEN)
        rows += [_row(k) for k in listing.items]
        if listing.next_after is None:
            break
        page = Page(size=1000, after=listing.next_after)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _row(key: ApiKey) -> tuple[str, str, str, str, str, str, str]:
    return (
        key.id,
        key.role.name.lower(),
        ",".join(key.namespaces),
        # A worker key creates no jobs: its queues are what it is scoped to.
        "queues:" + ",".join(key.queues) if key.role is Role.WORKER else ",".join(key.executors),
        _time(key.create_time),
        _time(key.revoke_time) or "-",
        key.description,
    )


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


async def _revoke(keys: KeyManager, key_id: str) -> int:
    try:
        key = await keys.revoke(key_id, caller=OPEN)
    except NotFound:
        print(f"cronwire-server keys revoke: there is no key {key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {key.name} at {_time(key.revoke_time)}")
    return 0
