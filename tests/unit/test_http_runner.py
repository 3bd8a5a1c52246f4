"""The http executor against a real local server: status checks, headers, bodies, timeouts, the SSRF guard."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.http_runner import HttpPolicy, HttpRunner, check_url
from cronwire_server.executors.runners import runner_for
from cronwire_server.executors.runtime import RunOutcome, RunRequest
from tests.support import eventually

SCHEDULED = datetime(2025, 3, 30, 1, 30, tzinfo=UTC)
# Every run is bounded, so a broken runner fails the test instead of hanging it.
BOUND = 5.0
LOOPBACK = HttpPolicy(allowed_networks=(ip_network("127.0.0.0/8"),))


class Server:
    """A local HTTP server in a thread that records the requests it gets.

    `/status/<n>` answers n, `/echo` answers 200 with the request as JSON, `/big`
    10,000 bytes, and `/stall` never answers: it waits for the client to hang up.
    """

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.server_names: list[str | None] = []  # the TLS server names (SNI) clients sent
        self.stalled = threading.Event()  # a request reached /stall
        self.hung_up = threading.Event()  # and its client closed the connection
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.handle_any()

            do_POST = do_PUT = do_DELETE = do_GET

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                record = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": body,
                }
                server.requests.append(record)
                if self.path == "/stall":
                    server.stalled.set()
                    self.connection.settimeout(BOUND)
                    try:
                        self.rfile.read(1)  # returns at EOF, once the client has hung up
                    except OSError:
                        return
                    server.hung_up.set()
                    return
                if self.path == "/echo":
                    self.answer(200, json.dumps(record).encode(), "application/json")
                elif self.path == "/big":
                    self.answer(200, b"x" * 10_000)
                elif self.path.startswith("/status/"):
                    status = int(self.path.removeprefix("/status/"))
                    self.answer(status, f"status {status}".encode())
                else:
                    self.answer(404, b"not found")

            def answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda _socket, name, _context: self.server_names.append(name)
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.httpd.server_address[1]
        # A short poll interval: shutdown() waits for the loop to notice.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    yield server
    server.close()


def request(
    url: str, *, timeout: float | None = None, capture_bytes: int = 1024, **parameters: Any
) -> RunRequest:
    return RunRequest(
        execution_name="namespaces/ops/executions/e-1",
        job_name="namespaces/ops/jobs/hook",
        parameters={"url": url, **parameters},
        arguments={},
        scheduled_time=SCHEDULED,
        attempt=2,
        timeout=timedelta(seconds=timeout) if timeout is not None else None,
        capture_bytes=capture_bytes,
        lease_token="lease-1",
    )


async def run(
    req: RunRequest, cancel: asyncio.Event | None = None, runner: HttpRunner | None = None
) -> RunOutcome:
    runner = runner or HttpRunner(LOOPBACK)
    return await asyncio.wait_for(runner.run(req, cancel or asyncio.Event()), BOUND)


async def wait_for(event: threading.Event) -> None:
    await eventually(event.is_set, BOUND, "the server to see the request")


def test_runner_for_http_refuses_non_public_addresses() -> None:
    runner = runner_for("http")
    assert isinstance(runner, HttpRunner)
    assert runner.policy == HttpPolicy()


async def test_a_2xx_succeeds_with_its_status_and_body(server: Server) -> None:
    chunks: list[str] = []
    outcome = await HttpRunner(LOOPBACK).run(
        request(server.url("/status/200"), method="GET"), asyncio.Event(), chunks.append
    )
    assert outcome == RunOutcome(ExecutionState.SUCCEEDED, output="status 200", http_status=200)
    assert "".join(chunks) == "status 200"
    assert server.requests[0]["method"] == "GET"


async def test_the_body_is_bounded(server: Server) -> None:
    outcome = await run(request(server.url("/big"), capture_bytes=100))
    assert (outcome.state, outcome.output, outcome.output_truncated) == (
        ExecutionState.SUCCEEDED,
        "x" * 100,
        True,
    )


async def test_expected_status_decides_success(server: Server) -> None:
    outcome = await run(request(server.url("/status/200"), expected_status=[201]))
    assert (outcome.state, outcome.error, outcome.http_status) == (
        ExecutionState.FAILED,
        "unexpected HTTP status 200",
        200,
    )
    outcome = await run(request(server.url("/status/201"), expected_status=[201]))
    assert (outcome.state, outcome.http_status) == (ExecutionState.SUCCEEDED, 201)


async def test_a_500_fails_and_keeps_the_body(server: Server) -> None:
    outcome = await run(request(server.url("/status/500")))
    assert outcome == RunOutcome(
        ExecutionState.FAILED, output="status 500", error="unexpected HTTP status 500", http_status=500
    )


async def test_cronwire_headers_are_sent_and_cannot_be_overridden(server: Server) -> None:
    headers = {"Authorization": "Bearer t0ken", "X-Cronwire-Attempt": "99", "X-Cronwire-Lease-Token": "x"}
    outcome = await run(request(server.url("/echo"), headers=headers))
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    received = server.requests[0]["headers"]
    assert received["Authorization"] == "Bearer t0ken"
    assert received["X-Cronwire-Execution"] == "namespaces/ops/executions/e-1"
    assert received["X-Cronwire-Scheduled-Time"] == "2025-03-30T01:30:00+00:00"
    assert received["X-Cronwire-Attempt"] == "2"
    assert received["X-Cronwire-Lease-Token"] == "lease-1"
    assert received["Host"] == f"127.0.0.1:{server.port}"
    assert server.requests[0]["method"] == "POST"


async def test_json_is_sent_as_json(server: Server) -> None:
    outcome = await run(request(server.url("/echo"), json={"report": "daily", "days": [1, 2]}))
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    sent = server.requests[0]
    assert json.loads(sent["body"]) == {"report": "daily", "days": [1, 2]}
    assert sent["headers"]["Content-Type"] == "application/json"
    assert json.loads(outcome.output)["body"] == sent["body"]


async def test_a_body_is_sent_as_is(server: Server) -> None:
    outcome = await run(request(server.url("/echo"), method="PUT", body="a=1&b=2"))
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    assert (server.requests[0]["method"], server.requests[0]["body"]) == ("PUT", "a=1&b=2")


async def test_a_stalling_server_times_the_run_out(server: Server) -> None:
    async def timed_out_while_held() -> bool:
        outcome = await run(request(server.url("/stall"), timeout=0.3))
        assert outcome == RunOutcome(ExecutionState.TIMED_OUT, error="timed out after 0.3s")
        return server.stalled.is_set()

    # On a loaded machine the timeout may pass before the request is even sent: the run times out
    # all the same, and the runs go on until one's request reached the server, to see it hang up.
    await eventually(timed_out_while_held, BOUND, "a run whose request reached the server")
    await wait_for(server.hung_up)


async def test_cancel_aborts_the_request(server: Server) -> None:
    cancel = asyncio.Event()
    running = asyncio.ensure_future(run(request(server.url("/stall")), cancel))
    await wait_for(server.stalled)
    cancel.set()
    outcome = await running
    assert outcome == RunOutcome(ExecutionState.CANCELLED, error="cancelled")
    await wait_for(server.hung_up)


async def test_a_refused_connection_fails_with_the_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once the socket is closed
    outcome = await run(request(f"http://127.0.0.1:{port}/"))
    assert outcome.state is ExecutionState.FAILED
    assert outcome.error.startswith("ConnectError: "), outcome.error
    assert outcome.http_status is None


@pytest.mark.parametrize("value", ["Bearer tok-4e1f\n", "Bearer tok-4e1f\r\nX-Evil: 1", "tok\x00-4e1f"])
async def test_an_error_never_quotes_a_header_value(server: Server, value: str) -> None:
    outcome = await run(
        request(server.url("/status/200"), headers={"Authorization": value, "X-Other": "plain"})
    )
    assert outcome.state is ExecutionState.FAILED
    assert outcome.error == "header Authorization: its value holds a line break or control character"
    assert server.requests == []


async def test_loopback_is_refused_by_default(server: Server) -> None:
    outcome = await run(request(server.url("/status/200")), runner=HttpRunner())
    assert outcome.state is ExecutionState.FAILED
    assert outcome.error.startswith("refused: 127.0.0.1 is a loopback address (allow it with "), outcome.error
    assert server.requests == []


async def test_a_name_resolving_to_loopback_is_refused_at_send(server: Server) -> None:
    outcome = await run(request(server.url("/status/200", host="localhost")), runner=HttpRunner())
    assert outcome.state is ExecutionState.FAILED
    assert outcome.error.startswith("refused: "), outcome.error
    assert "is a loopback address" in outcome.error
    assert server.requests == []


async def test_an_allowed_name_is_called_at_its_checked_address_under_its_own_name(server: Server) -> None:
    # localhost may resolve to ::1 too, where nothing listens: the next address is tried.
    policy = HttpPolicy(allowed_networks=(ip_network("127.0.0.0/8"), ip_network("::1/128")))
    outcome = await run(request(server.url("/echo", host="localhost")), runner=HttpRunner(policy))
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    assert server.requests[0]["headers"]["Host"] == f"localhost:{server.port}"


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("http://10.1.2.3/hook", "10.1.2.3 is a private address"),
        ("https://172.16.0.1/", "172.16.0.1 is a private address"),
        ("http://192.168.1.1:8080/", "192.168.1.1 is a private address"),
        ("http://[fd00::1]/", "fd00::1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[fe80::1]/", "fe80::1 is a link-local address"),
        ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
        ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
        ("http://100.100.100.200/", "100.100.100.200 is a reserved (non-public) address"),
        # Forms that reach an IPv4 address all the same.
        ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1 is a loopback address"),
        ("http://[64:ff9b::a00:1]/", "64:ff9b::a00:1 is a private address"),
        ("http://127.1/", "127.0.0.1 is a loopback address"),
        ("http://2130706433/", "127.0.0.1 is a loopback address"),
        # A trailing dot names the same address to a resolver.
        ("http://127.0.0.1./", "127.0.0.1 is a loopback address"),
        ("http://0x7f000001./", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254./", "169.254.169.254 is a link-local address"),
        # Reserved ranges this Python's is_global does not know: IPv4-compatible IPv6 (::/96),
        # local-use NAT64, site-local, documentation, SRv6, IETF protocol assignments, 6to4 relays.
        ("http://[::127.0.0.1]/", "::7f00:1 is a reserved (non-public) address"),
        ("http://[::a9fe:a9fe]/", "::a9fe:a9fe is a reserved (non-public) address"),
        ("http://[::8.8.8.8]/", "::808:808 is a reserved (non-public) address"),
        ("http://[64:ff9b:1::a00:1]/", "64:ff9b:1::a00:1 is a reserved (non-public) address"),
        ("http://[fec0::1]/", "fec0::1 is a reserved (non-public) address"),
        ("http://[3fff::1]/", "3fff::1 is a reserved (non-public) address"),
        ("http://[5f00::1]/", "5f00::1 is a reserved (non-public) address"),
        ("http://192.0.0.9/", "192.0.0.9 is a reserved (non-public) address"),
        ("http://192.88.99.1/", "192.88.99.1 is a reserved (non-public) address"),
    ],
)
def test_check_url_refuses_non_public_literal_addresses(url: str, refusal: str) -> None:
    message = check_url(url, HttpPolicy())
    assert message is not None
    assert message.startswith(f"refused: {refusal} (allow it with "), message


def test_check_url_accepts_public_addresses_and_names_and_what_the_policy_allows() -> None:
    assert check_url("https://93.184.215.14/hook", HttpPolicy()) is None
    assert check_url("https://[2606:4700::1111]/", HttpPolicy()) is None
    # Names are checked when the job runs, not before.
    assert check_url("https://hooks.example.com/daily", HttpPolicy()) is None
    assert check_url("http://localhost/", HttpPolicy()) is None
    assert check_url("http://10.1.2.3/", HttpPolicy(allowed_networks=(ip_network("10.1.0.0/16"),))) is None
    assert (
        check_url("http://10.2.0.1/", HttpPolicy(allowed_networks=(ip_network("10.1.0.0/16"),))) is not None
    )
    assert check_url("http://169.254.169.254/", HttpPolicy(allow_private=True)) is None


def test_check_url_refuses_other_schemes() -> None:
    assert check_url("ftp://files.example.com/", HttpPolicy()) == "must be an http:// or https:// URL"
    assert check_url("file:///etc/passwd", HttpPolicy()) == "must be an http:// or https:// URL"


def test_the_hint_names_the_servers_setting() -> None:
    policy = HttpPolicy(hint="allow it with --http-allow-network")
    assert policy.refusal(ip_address("10.0.0.1")) == (
        "refused: 10.0.0.1 is a private address (allow it with --http-allow-network)"
    )
    assert policy.refusal(ip_address("8.8.8.8")) is None


@pytest.fixture
def localhost_cert(tmp_path: Path) -> Path:
    """A self-signed certificate for `localhost`, its key in the same file."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    pem = tmp_path / "localhost.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-keyout", str(pem), "-out", str(pem), "-days", "1", "-subj", "/CN=localhost"]
    argv += ["-addext", "subjectAltName=DNS:localhost"]
    subprocess.run(argv, check=True, capture_output=True)
    return pem


@pytest.fixture
def tls_server(localhost_cert: Path) -> Iterator[Server]:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(localhost_cert)
    server = Server(tls)
    yield server
    server.close()


async def test_https_to_a_name_goes_to_its_checked_address_and_verifies_the_name(
    tls_server: Server, localhost_cert: Path
) -> None:
    policy = HttpPolicy(allowed_networks=(ip_network("127.0.0.0/8"), ip_network("::1/128")))
    runner = HttpRunner(policy, ssl_context=ssl.create_default_context(cafile=str(localhost_cert)))
    outcome = await run(request(tls_server.url("/echo", host="localhost")), runner=runner)
    assert outcome.state is ExecutionState.SUCCEEDED, outcome
    assert tls_server.requests[0]["headers"]["Host"] == f"localhost:{tls_server.port}"
    assert tls_server.server_names == ["localhost"]
    # The certificate is for localhost, not for the address: verification goes by the name.
    outcome = await run(request(tls_server.url("/echo")), runner=runner)
    assert outcome.state is ExecutionState.FAILED
    assert "certificate is not valid for '127.0.0.1'" in outcome.error, outcome.error
