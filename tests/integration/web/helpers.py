"""Servers with the HTTP listener on a free port, and plain HTTP calls to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support import ServerProcess, start_server, wait_for

DEADLINE = 20.0


@dataclass
class WebServer:
    """A server process and the port of its HTTP listener."""

    process: ServerProcess
    http_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def target(self) -> str:
        return self.process.target

    def stop(self) -> int:
        return self.process.stop()


def start_web_server(database_url: str, workdir: Path, *extra: str) -> WebServer:
    """A server whose HTTP listener is on a free loopback port (never the shared default)."""
    port_file = workdir / "http-port"
    process = start_server(
        database_url,
        workdir,
        "--http-address",
        "127.0.0.1:0",
        "--http-port-file",
        str(port_file),
        *extra,
    )
    port = wait_for(lambda: port_file.exists() and int(port_file.read_text()), DEADLINE, "the HTTP port file")
    return WebServer(process, port)
