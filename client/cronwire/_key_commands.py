"""`cronwire keys create|list|get|revoke`: API keys over KeyService (an admin key is needed)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from cronwire._commands import EXIT_OK, Context
from cronwire._documents import to_document
from cronwire._keys import Key, Role
from cronwire._output import dump, table

Leaf = Callable[..., argparse.ArgumentParser]


def add_key_commands(top: argparse._SubParsersAction[argparse.ArgumentParser], leaf: Leaf) -> None:
    keys = top.add_parser("keys", help="API keys (with an admin key)").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = leaf(keys, "create", cmd_keys_create, "create an API key; its token is printed only this once")
    p.add_argument(
        "--scope",
        dest="namespaces",
        action="append",
        required=True,
        metavar="NAMESPACE",
        help="a namespace the key may see; repeat for more; '*' is every namespace",
    )
    p.add_argument(
        "--role", required=True, choices=[r.name.lower() for r in Role], help="what the key may do"
    )
    p.add_argument(
        "--executors",
        type=lambda value: [kind.strip() for kind in value.split(",") if kind.strip()],
        default=[],
        metavar="KIND[,KIND]",
        help="the executor kinds the key may create and change jobs with, e.g. shell,python; "
        "'*' is every kind (default: http,noop)",
    )
    p.add_argument(
        "--queues",
        type=lambda value: [queue.strip() for queue in value.split(",") if queue.strip()],
        default=[],
        metavar="QUEUE[,QUEUE]",
        help="role worker: the queues its workers take work from; '*' is every queue",
    )
    p.add_argument("--description", default="", help="who or what uses the key")
    leaf(keys, "list", cmd_keys_list, "list API keys, revoked ones included (never their secrets)")
    p = leaf(keys, "get", cmd_keys_get, "show an API key")
    p.add_argument("key_ref", metavar="KEY", help="the key's id (or keys/ID)")
    p = leaf(keys, "revoke", cmd_keys_revoke, "revoke an API key")
    p.add_argument("key_ref", metavar="KEY", help="the key's id (or keys/ID)")


def _rows(keys: list[Key]) -> str:
    return table(
        ["ID", "ROLE", "NAMESPACES", "EXECUTORS", "CREATED", "REVOKED", "DESCRIPTION"],
        [
            [
                k.id,
                k.role.name.lower(),
                ",".join(k.namespaces),
                ",".join(k.executors),
                k.create_time,
                k.revoke_time,
                k.description,
            ]
            for k in keys
        ],
    )


def cmd_keys_create(ctx: Context) -> int:
    args = ctx.args
    created = ctx.client.create_key(
        args.namespaces, args.role, description=args.description, executors=args.executors, queues=args.queues
    )
    if ctx.fmt == "table":
        # The token alone on stdout, for TOKEN=$(cronwire keys create ...).
        ctx.print(created.token + "\n")
        scope = (
            f"queues {','.join(created.key.queues)}"
            if created.key.queues
            else f"executors {','.join(created.key.executors)}"
        )
        ctx.note(
            f"created key {created.key.name} (role {args.role}, {scope}); the token is shown only this once"
        )
    else:
        document: dict[str, Any] = {"key": to_document(created.key), "token": created.token}
        ctx.print(dump(document, ctx.fmt))
    return EXIT_OK


def cmd_keys_list(ctx: Context) -> int:
    keys = list(ctx.client.iter_keys(page_size=1000))
    ctx.show(keys, lambda: _rows(keys))
    return EXIT_OK


def cmd_keys_get(ctx: Context) -> int:
    key = ctx.client.get_key(ctx.args.key_ref)
    ctx.show(key, lambda: _rows([key]))
    return EXIT_OK


def cmd_keys_revoke(ctx: Context) -> int:
    key = ctx.client.revoke_key(ctx.args.key_ref)
    ctx.show(key, lambda: f"revoked {key.name}\n")
    return EXIT_OK
