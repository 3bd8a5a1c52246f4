"""The HTTP listener (--http-address): /healthz, /readyz and /metrics beside the dashboard, on
the gRPC server's process, and where it listens by default."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from cronwire import Client
from cronwire_server.config import DEFAULT_HTTP_ADDRESS, add_server_flags, settings_from_args
from tests.integration.web.helpers import DEADLINE, WebServer, start_web_server
from tests.support import wait_for


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    server = start_web_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path)
    try:
        yield server
    finally:
        server.stop()


def settings_of(*argv: str, env: dict[str, str] | None = None) -> tuple[str, bool]:
    parser = argparse.ArgumentParser()
    add_server_flags(parser, env or {})
    settings = settings_from_args(parser.parse_args(list(argv)))
    return settings.http_address, settings.http_address_defaulted


def test_health_and_readiness_are_http_views_of_grpc_health(web: WebServer) -> None:
    healthz = httpx.get(f"{web.url}/healthz", timeout=5.0)
    readyz = httpx.get(f"{web.url}/readyz", timeout=5.0)
    assert (healthz.status_code, healthz.text) == (200, "SERVING\n")
    assert (readyz.status_code, readyz.text) == (200, "SERVING\n")


def test_metrics_are_served_on_the_http_listener(web: WebServer) -> None:
    with Client(web.target, namespace="web") as client:
        client.create_job("hello", executor="shell", parameters={"argv": ["true"]})
        client.get_job("hello")
    metrics = httpx.get(f"{web.url}/metrics", timeout=10.0)
    assert metrics.status_code == 200
    assert "cronwire_queue_depth" in metrics.text
    # RPCs are counted once the listener serves metrics.
    assert 'grpc_method="GetJob"' in metrics.text


def test_every_response_carries_the_security_headers(web: WebServer) -> None:
    for path in ("/", "/healthz", "/static/app.js", "/no-such-page"):
        response = httpx.get(f"{web.url}{path}", timeout=5.0)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy, path
        assert "unsafe-inline" not in policy, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"


def test_a_loopback_listener_answers_only_to_loopback_names(web: WebServer) -> None:
    """A site whose name resolves to 127.0.0.1 (DNS rebinding) gets nothing."""
    refused = httpx.get(f"{web.url}/", headers={"Host": "attacker.example"}, timeout=5.0)
    assert refused.status_code == 421
    assert httpx.get(f"http://localhost:{web.http_port}/healthz", timeout=5.0).status_code == 200


def test_the_default_address_follows_the_grpc_listener() -> None:
    assert settings_of() == ("127.0.0.1:8080", True)
    assert settings_of("--listen", "127.0.0.1:6000") == ("127.0.0.1:8080", True)
    assert settings_of("--listen", "0.0.0.0:50051") == ("", True)
    assert settings_of("--listen", "0.0.0.0:50051", "--http-address", "0.0.0.0:8443") == (
        "0.0.0.0:8443",
        False,
    )
    assert settings_of("--http-address", "") == ("", False)
    assert settings_of(env={"CRONWIRE_HTTP_ADDRESS": "127.0.0.1:9000"}) == ("127.0.0.1:9000", False)
    # The older name is an alias.
    assert settings_of("--metrics-address", "127.0.0.1:9464") == ("127.0.0.1:9464", False)
    assert settings_of(env={"CRONWIRE_METRICS_ADDRESS": "127.0.0.1:9464"}) == ("127.0.0.1:9464", False)
    with pytest.raises(SystemExit, match="older name"):
        settings_of("--metrics-address", "127.0.0.1:1", "--http-address", "127.0.0.1:2")


def test_an_address_asked_for_that_is_taken_stops_the_server(web: WebServer, tmp_path: Path) -> None:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "cronwire_server",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            f"sqlite:///{tmp_path / 'other.db'}",
            "--http-address",
            f"127.0.0.1:{web.http_port}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert f"cannot serve HTTP on 127.0.0.1:{web.http_port}" in finished.stderr


def test_the_listener_serves_https_with_the_grpc_tls_files_and_a_secure_cookie(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    web = start_web_server(
        f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)
    )
    try:
        url = f"https://127.0.0.1:{web.http_port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_file)), timeout=5.0) as client:
            assert client.get(f"{url}/readyz").text == "SERVING\n"
            # With TLS a key is needed even on loopback, as for gRPC.
            assert client.get(f"{url}/").headers["location"].startswith("/login")
            login = client.get(f"{url}/login")
            assert "secure" in login.headers["set-cookie"].lower()
            assert "samesite=strict" in login.headers["set-cookie"].lower()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{web.http_port}/readyz", timeout=5.0)
    finally:
        web.stop()


def test_beyond_loopback_the_listener_needs_keys_like_grpc(tmp_path: Path) -> None:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "cronwire_server",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            f"sqlite:///{tmp_path / 'cronwire.db'}",
            "--http-address",
            "0.0.0.0:0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert "refusing to serve on 0.0.0.0:0 without authentication" in finished.stderr


def test_with_a_client_ca_the_dashboard_needs_a_client_certificate_and_metrics_do_not(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    server_cert, client_cert = ca.issue_cert("127.0.0.1"), ca.issue_cert("ops@cronwire.test")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    tls = ("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(ca_file))
    web = start_web_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path, *tls)
    try:
        url = f"https://127.0.0.1:{web.http_port}"
        anonymous = ssl.create_default_context(cafile=str(ca_file))
        with httpx.Client(verify=anonymous, timeout=5.0) as client:
            assert client.get(f"{url}/metrics").status_code == 200
            assert client.get(f"{url}/readyz").status_code == 200
            assert client.get(f"{url}/").status_code == 403
            assert client.get(f"{url}/login").status_code == 403
        presenting = ssl.create_default_context(cafile=str(ca_file))
        client_cert.configure_cert(presenting)
        with httpx.Client(verify=presenting, timeout=5.0) as client:
            assert client.get(f"{url}/").headers["location"].startswith("/login")
    finally:
        web.stop()


def test_a_second_server_on_a_laptop_starts_without_the_default_listener(tmp_path: Path) -> None:
    """The default port taken (by an earlier server, or anything else): the server says so and
    serves gRPC; only an address asked for stops it."""
    host, port = DEFAULT_HTTP_ADDRESS.rsplit(":", 1)
    holder = socket.socket()
    with contextlib.suppress(OSError):  # taken already: all the same to the server
        holder.bind((host, int(port)))
        holder.listen()
    port_file, log = tmp_path / "port", tmp_path / "server.log"
    asked = ("CRONWIRE_HTTP_ADDRESS", "CRONWIRE_METRICS_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in asked}
    try:
        with log.open("w") as out:
            server = subprocess.Popen(
                [
                    *(sys.executable, "-m", "cronwire_server", "--listen", "127.0.0.1:0"),
                    *("--database-url", f"sqlite:///{tmp_path / 'cronwire.db'}"),
                    *("--port-file", str(port_file)),
                ],
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, "PYTHONUNBUFFERED": "1"},
            )
        try:
            wait_for(lambda: port_file.exists() or server.poll() is not None, DEADLINE, "the server to start")
            assert server.poll() is None, log.read_text()
            with Client(f"127.0.0.1:{int(port_file.read_text())}") as client:
                client.list_job_types()
        finally:
            server.terminate()
            server.wait(30)
    finally:
        holder.close()
    assert f"cannot serve HTTP on {DEFAULT_HTTP_ADDRESS}" in log.read_text()
    assert "the dashboard is off" in log.read_text()
