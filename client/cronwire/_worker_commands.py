"""`cronwire worker run package.module:worker`: serve a `cronwire.Worker` until SIGTERM."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cronwire._cli_args import UsageError
from cronwire._commands import EXIT_OK, Context, _tls
from cronwire.worker import load

Leaf = Callable[..., argparse.ArgumentParser]


def add_worker_commands(top: argparse._SubParsersAction[argparse.ArgumentParser], leaf: Leaf) -> None:
    worker = top.add_parser("worker", help="run your own code as remote jobs").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = leaf(
        worker,
        "run",
        cmd_worker_run,
        "serve a cronwire.Worker until SIGTERM or SIGINT (then drain)",
        description="Import WORKER (`package.module:attribute`, the current directory on the path) and "
        "serve its tasks: the server pushes it the executions of remote jobs of its queues. --server, "
        "--token and the TLS flags (or CRONWIRE_SERVER, CRONWIRE_TOKEN) apply when the Worker names "
        "no target (or token) itself.",
    )
    p.add_argument("reference", metavar="WORKER", help="the Worker object, e.g. myapp.tasks:worker")
    p.add_argument("--concurrency", type=int, metavar="N", help="tasks run at once (default: the Worker's)")
    p.add_argument("--identity", metavar="NAME", help="how the worker is shown (default host:pid)")


def cmd_worker_run(ctx: Context) -> int:
    args = ctx.args
    try:
        worker = load(args.reference)
    except (ImportError, AttributeError, ValueError) as error:
        raise UsageError(f"cannot load {args.reference}: {error}") from None
    if not worker.target:
        worker.target = args.server
    if worker.token is None and args.token:
        worker.token = args.token
    if worker.tls is False:
        worker.tls = _tls(args)
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        worker.concurrency = args.concurrency
    if args.identity:
        worker.identity = args.identity
    ctx.note(f"cronwire worker {worker.identity}: queues {', '.join(worker.queues)} on {worker.target}")
    worker.run()
    return EXIT_OK
