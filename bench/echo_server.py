"""A bare grpc.aio server with one unary method that answers with its request bytes.

It measures the ceiling of Python gRPC on this machine: no protobuf, no
database, nothing but the transport and the event loop. Run as its own process:

    python bench/echo_server.py --listen 127.0.0.1:0 --port-file PATH [--event-loop auto]

`api_throughput.py` gives it the loop the cronwire server resolves to, so the
ceiling and the server it is compared with run on the same loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

import grpc

from cronwire_server.eventloop import EVENT_LOOPS
from cronwire_server.eventloop import run as run_on_loop

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def _handler() -> grpc.GenericRpcHandler[bytes, bytes]:
    echo = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=_identity, response_serializer=_identity
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Echo": echo})


def _write_port_file(path: Path, port: int) -> None:
    # Write then rename, so a reader never sees a partial number.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


async def serve(listen: str, port_file: Path) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(),))
    port = server.add_insecure_port(listen)
    await server.start()
    _write_port_file(port_file, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port; port 0 picks a free one")
    parser.add_argument("--port-file", type=Path, required=True, help="where to write the bound port")
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="auto: uvloop if installed (default %(default)s)",
    )
    args = parser.parse_args()
    # No roles: an echo server spawns no subprocesses, so uvloop is always allowed.
    run_on_loop(serve(args.listen, args.port_file), args.event_loop, roles=())


if __name__ == "__main__":
    main()
