"""The `http` executor: calls a webhook, after checking where the call would go.

Requests carry `X-Cronwire-Execution`, `X-Cronwire-Scheduled-Time` (ISO 8601),
`X-Cronwire-Attempt` and `X-Cronwire-Lease-Token`, which the job's headers cannot
override, so that a receiver can tell a retry from a new run and fence its writes
(an HTTP call has no process the fence could kill when its replica vanishes).
A dependent job's run also carries its parent's `X-Cronwire-Parent-Execution`,
`-Job`, `-State` and `-Exit-Code` (see `runtime.ParentRun`).
The run succeeds when the status is expected (`expected_status`, or any 2xx);
redirects are not followed, since the next location would go unchecked. The
response body, up to `capture_bytes`, is the output. `RunRequest.timeout` bounds
the whole call, name resolution included; connecting alone is bounded by
`CONNECT_TIMEOUT` too.

Server-side request forgery: a job could aim a webhook at the server's own
network (a database, a cloud metadata service at 169.254.169.254). Unless the
`HttpPolicy` allows them, addresses that are not public (loopback, link-local,
private, unspecified, multicast, other reserved ranges such as the deprecated
IPv4-compatible `::/96` and site-local `fec0::/10`, and IPv6 forms that embed
such an IPv4 address) are refused; a host's trailing dot (`127.0.0.1.`) does not
hide a literal address. The host is resolved once, every
address it resolves to is checked, and the request is sent to a checked
address: the URL's host is replaced by the address, while the `Host` header and,
for https, the TLS server name (SNI and certificate check, through httpcore's
`sni_hostname` extension) keep the original name. A name that resolves to a
public address at check time and to a private one at connect time (DNS
rebinding) therefore cannot get through, since nothing resolves it a second
time. Proxies from the environment are not used (`trust_env=False`): a proxy
would resolve the name itself.

A run's error never quotes a header value (it may be a secret, one that the
output's masking would not recognise once escaped): a value with a line break
or another control character is refused naming the header only, and any other
error that would quote a value has it masked.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
from ipaddress import ip_address
from typing import Any

import httpx

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.address_policy import HttpPolicy, IPAddress
from cronwire_server.executors.address_policy import literal_address as _literal_address
from cronwire_server.executors.runtime import (
    OutputCallback,
    RunOutcome,
    RunRequest,
    cancelled_outcome,
    parent_headers,
    race,
)
from cronwire_server.executors.shell import _Capture
from cronwire_server.secrets import Redactor

__all__ = ["CONNECT_TIMEOUT", "HttpPolicy", "HttpRunner", "check_url"]

# Seconds to connect (TCP and TLS) to one address, within the run's timeout.
CONNECT_TIMEOUT = 10.0


def check_url(url: str, policy: HttpPolicy | None = None) -> str | None:
    """Why `url` may not be called, or None: for validating a job before it runs.

    Checks the scheme and a host that is an IP address (in any of the forms a
    resolver reads as one: `127.1`, `0x7f000001`), resolving no names: a name
    is checked each time the job runs.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"invalid URL: {exc}"
    if parsed.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parsed.host:
        return "the URL has no host"
    address = _literal_address(parsed.host)
    if address is None:
        return None
    return (policy or HttpPolicy()).refusal(address)


class HttpRunner:
    """Runs `http` jobs under `policy` (by default, public addresses only).

    `ssl_context` verifies https servers; by default, against httpx's CA bundle (certifi).
    """

    def __init__(
        self,
        policy: HttpPolicy | None = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.policy = policy or HttpPolicy()
        self.connect_timeout = connect_timeout
        # The default is made on first use, off the event loop (it reads the CA bundle), then shared.
        self._ssl_context = ssl_context

    async def run(
        self,
        request: RunRequest,
        cancel: asyncio.Event,
        on_output: OutputCallback | None = None,
    ) -> RunOutcome:
        if cancel.is_set():
            return cancelled_outcome()
        exchange = _Exchange(request.capture_bytes, on_output)
        call = asyncio.ensure_future(self._call(request, exchange))

        async def stop() -> None:
            if not call.done():
                # Cancelling the call aborts the request and closes its connection.
                call.cancel()
                await asyncio.wait({call})

        async def abandon() -> None:
            call.cancel()
            await asyncio.wait({call}, timeout=1.0)

        stopped = await race(call, cancel, request.timeout, stop=stop, abandon=abandon)
        if stopped is not None:
            state, error = stopped
        else:
            failure = call.exception()
            # The call handles the errors a webhook meets; anything else still fails the run only.
            state, error = call.result() if failure is None else (ExecutionState.FAILED, _describe(failure))
        output, truncated = exchange.output()
        return RunOutcome(
            state, output=output, output_truncated=truncated, error=error, http_status=exchange.status
        )

    async def _call(self, request: RunRequest, exchange: _Exchange) -> tuple[ExecutionState, str]:
        parameters = request.parameters
        url = httpx.URL(parameters["url"])
        if url.scheme not in ("http", "https") or not url.host:
            return ExecutionState.FAILED, f"cannot call {parameters['url']}: not an http(s) URL with a host"
        host = url.raw_host.decode("ascii")
        try:
            addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80))
        except OSError as exc:
            return ExecutionState.FAILED, f"cannot resolve {host}: {exc.strerror or exc}"
        if not addresses:
            return ExecutionState.FAILED, f"cannot resolve {host}: no addresses"
        for address in addresses:
            refusal = self.policy.refusal(address)
            if refusal is not None:
                return ExecutionState.FAILED, refusal
        headers: dict[str, str] = parameters.get("headers", {})
        for name, value in headers.items():
            if _CONTROL.search(value):
                return (
                    ExecutionState.FAILED,
                    f"header {name}: its value holds a line break or control character",
                )

        if self._ssl_context is None:
            self._ssl_context = await asyncio.to_thread(httpx.create_ssl_context, trust_env=False)
        try:
            async with httpx.AsyncClient(
                verify=self._ssl_context,
                timeout=httpx.Timeout(None, connect=self.connect_timeout),
                follow_redirects=False,
                trust_env=False,
            ) as client:
                # Try the addresses in turn until one connects; nothing was sent to those that did not.
                for index, address in enumerate(addresses):
                    try:
                        await self._send(client, _pinned(client, request, url, address), exchange)
                        break
                    except (httpx.ConnectError, httpx.ConnectTimeout):
                        if index == len(addresses) - 1:
                            raise
        except Exception as exc:  # connection, protocol or decoding errors, a header httpx cannot send
            return ExecutionState.FAILED, Redactor(list(headers.values())).text(_describe(exc))

        expected = parameters.get("expected_status") or ()
        status = exchange.status
        assert status is not None
        if (status in expected) if expected else (200 <= status < 300):
            return ExecutionState.SUCCEEDED, ""
        return ExecutionState.FAILED, f"unexpected HTTP status {status}"

    @staticmethod
    async def _send(client: httpx.AsyncClient, request: httpx.Request, exchange: _Exchange) -> None:
        response = await client.send(request, stream=True)
        try:
            exchange.status = response.status_code
            async for chunk in response.aiter_bytes():
                # Past the bound the rest is not read: closing drops the connection.
                if not exchange.received(chunk):
                    break
        finally:
            await response.aclose()


def _pinned(
    client: httpx.AsyncClient, request: RunRequest, url: httpx.URL, address: IPAddress
) -> httpx.Request:
    """The job's request, sent to `address` while naming `url`'s host in Host and TLS."""
    parameters = request.parameters
    headers = httpx.Headers(parameters.get("headers", {}))
    headers.setdefault("Host", url.netloc.decode("ascii"))
    content: bytes | None = None
    if "json" in parameters:
        # Serialised here rather than by httpx, which sends no body for a JSON null.
        content = json.dumps(parameters["json"], ensure_ascii=False, separators=(",", ":")).encode()
        headers.setdefault("Content-Type", "application/json")
    elif "body" in parameters:
        content = parameters["body"].encode()
    headers["X-Cronwire-Execution"] = request.execution_name
    headers["X-Cronwire-Scheduled-Time"] = request.scheduled_time.isoformat()
    headers["X-Cronwire-Attempt"] = str(request.attempt)
    if request.lease_token:
        headers["X-Cronwire-Lease-Token"] = request.lease_token
    if request.parent is not None:
        headers.update(parent_headers(request.parent))
    extensions: dict[str, Any] = {}
    if url.scheme == "https" and _literal_address(url.host) is None:
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    return client.build_request(
        parameters.get("method", "POST"),
        url.copy_with(host=str(address)),
        headers=headers,
        content=content,
        extensions=extensions,
    )


class _Exchange:
    """What is known of the response so far, kept when the call fails or is stopped."""

    def __init__(self, limit: int, on_output: OutputCallback | None) -> None:
        self.status: int | None = None
        self._room = limit
        self._capture = _Capture(limit, on_output)

    def received(self, chunk: bytes) -> bool:
        """Record a chunk of the body; False once the bound is passed."""
        self._capture.data_received(chunk)
        self._room -= len(chunk)
        return self._room >= 0

    def output(self) -> tuple[str, bool]:
        self._capture.connection_lost(None)
        return self._capture.result()


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of `host`, in the resolver's order, without repeats."""
    literal = _literal_address(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


# In a header value: what would end the header line, or cannot be sent in one.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
