"""The HTTP listener: the dashboard, /metrics, /healthz and /readyz, on the gRPC server's event loop.

Served by aiohttp in the same process as gRPC, with the same TLS files. /metrics, /healthz and
/readyz are open (like gRPC health by default): load balancers and Prometheus carry no API key.
Everything else is the dashboard (pages.py), behind the API's keys when auth is on (auth.py).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from cronwire_server.config import host_and_port, is_loopback_address
from cronwire_server.metrics_endpoint import MetricsSource, render_metrics
from cronwire_server.tls import TlsFiles
from cronwire_server.web import HttpUnavailable
from cronwire_server.web.pages import Dashboard, add_dashboard_routes

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Requests are small forms; nothing larger is read.
MAX_REQUEST_BYTES = 64 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING

# No script but our own file, no inline script or style, nothing from elsewhere, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


# A check-in's ping by token and kind ("success", "start", "fail"): False for an unknown token.
Pinger = Callable[[str, str], Awaitable[bool]]


@dataclass
class HttpListener:
    """The running HTTP listener and what it reads."""

    port: int
    runner: web.AppRunner
    metrics: MetricsSource | None
    dashboard: Dashboard | None

    async def close(self) -> None:
        if self.dashboard is not None:
            self.dashboard.close()  # open streams end now, not after the grace period
        await self.runner.cleanup()
        if self.metrics is not None:
            self.metrics.close()


def ssl_context(files: TlsFiles) -> ssl.SSLContext | None:
    """The server side of the gRPC listener's TLS files: TLS 1.2 or later, client certificates
    required when a client CA is given."""
    if not files.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    if files.mutual:
        # Checked when presented; required of the dashboard by `client_certificates`, not of
        # /metrics and the health views (scrapers and load balancers rarely carry one).
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(files.client_ca)
    return context


# Served to any client the TLS handshake admits, as before the dashboard existed.
OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


@web.middleware
async def client_certificates(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With --tls-client-ca, the dashboard serves only clients whose certificate the CA signed,
    as gRPC does (mutual TLS)."""
    transport = request.transport
    if request.path not in OPEN_PATHS and transport is not None and not transport.get_extra_info("peercert"):
        return web.Response(
            status=403, text="a client certificate signed by the server's client CA is required\n"
        )
    return await handler(request)


def _host_of(header: str) -> str:
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def loopback_hosts_only() -> Any:
    """On a loopback listener, requests must name a loopback host: a page of another site whose
    name was pointed at 127.0.0.1 (DNS rebinding) is not answered."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _host_of(request.headers.get("Host", "")).lower() not in LOOPBACK_HOSTS:
            return web.Response(status=421, text="this server answers to localhost only\n")
        return await handler(request)

    return check


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response, errors and event streams included, just before its headers go out."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")


def health_routes(health: HealthServicer, problem: Callable[[], str]) -> list[web.RouteDef]:
    async def status() -> int:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), None)
        return int(reply.status)

    async def healthz(request: web.Request) -> web.Response:
        # Alive while the process answers: a restart would not bring the database back.
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(await status())
        return web.Response(text=f"{name}\n")

    async def readyz(request: web.Request) -> web.Response:
        code = await status()
        if code == SERVING:
            return web.Response(text="SERVING\n")
        why = problem() or "shutting down"
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(code)
        return web.Response(status=503, text=f"{name}: {why}\n")

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


async def metrics_view(request: web.Request) -> web.Response:
    body, content_type = await render_metrics(request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def ping_routes(ping: Pinger) -> list[web.RouteDef]:
    """`POST /ping/TOKEN` (a success), `/ping/TOKEN/start` and `/ping/TOKEN/fail`: a check-in's
    ping with its token alone, for hosts with curl and no API key. 404 for an unknown token."""

    async def view(request: web.Request) -> web.Response:
        kind = request.match_info.get("kind", "success")
        if not await ping(request.match_info["token"], kind):
            return web.Response(status=404, text="no check-in has this token\n")
        return web.Response(text="OK\n")

    return [web.post("/ping/{token}", view), web.post("/ping/{token}/{kind:start|fail}", view)]


async def serve_http(
    address: str,
    tls: TlsFiles,
    health: HealthServicer,
    problem: Callable[[], str],
    metrics: MetricsSource | None,
    dashboard: Dashboard | None,
    ping: Pinger | None = None,
) -> HttpListener:
    """Serve at `address` (port 0: a free one, see `.port`); HttpUnavailable if it cannot."""
    host, port = host_and_port(address)
    middlewares: list[Any] = []
    if is_loopback_address(address):
        middlewares.append(loopback_hosts_only())
    if tls.mutual:
        middlewares.append(client_certificates)
    app = web.Application(middlewares=middlewares, client_max_size=MAX_REQUEST_BYTES)
    app.on_response_prepare.append(security_headers)
    app.add_routes(health_routes(health, problem))
    app.add_routes([web.get("/metrics", metrics_view)])
    if ping is not None:
        app.add_routes(ping_routes(ping))
    if dashboard is not None:
        add_dashboard_routes(app, dashboard)
    # A handler whose client went away is cancelled: a closed tab gives its stream back at once.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=1.0, handler_cancellation=True
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context(tls), reuse_address=True)
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise HttpUnavailable(f"cannot serve HTTP on {address}: {error}") from error
    bound = runner.addresses[0][1]
    return HttpListener(bound, runner, metrics, dashboard)
