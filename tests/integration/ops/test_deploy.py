"""deploy/: the systemd unit and the example production settings, run as written.

The unit's ExecStartPre and ExecStart command lines run with the env file's variables; only paths
and addresses are swapped for a temporary database, free ports and test certificates. The server
must serve health over mutual TLS, answer a call made with an API key, serve metrics, and stop
cleanly on the unit's KillSignal within its TimeoutStopSec.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cronwire.v1 import cluster_service_pb2, cluster_service_pb2_grpc
from tests.support import REPO, wait_for

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "cronwire-server.service"
ENV_FILE = DEPLOY / "cronwire.env"
SERVER_BIN = Path(sys.executable).parent / "cronwire-server"
# How long after the grace the server's watchdog ends a hung shutdown (app.SHUTDOWN_WATCHDOG_MARGIN).
WATCHDOG_MARGIN = 20


def _unit() -> dict[str, list[str]]:
    """`Key=value` settings of the unit, every section together; a key may repeat."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _env_file() -> dict[str, str]:
    variables = {}
    for line in ENV_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            variables[key] = value
    return variables


def _one(unit: dict[str, list[str]], key: str) -> str:
    (value,) = unit[key]
    return value


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(line: str) -> list[str]:
    """A unit command line with the installed path of cronwire-server in place of the unit's."""
    argv = shlex.split(line)
    assert Path(argv[0]).name == "cronwire-server", line
    return [str(SERVER_BIN), *argv[1:]]


def test_the_unit_is_what_production_needs() -> None:
    unit = _unit()
    assert _one(unit, "Type") == "simple"
    # Root, with only what running jobs as another user takes; the jobs never as the server's user.
    assert "User" not in unit
    assert set(_one(unit, "CapabilityBoundingSet").split()) == {
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_KILL",
        "CAP_SYS_PTRACE",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_DAC_OVERRIDE",
    }
    assert _one(unit, "UMask") == "0077"
    assert _env_file()["CRONWIRE_RUN_AS"] == "cronwire-jobs"
    sysusers = (DEPLOY / "cronwire-jobs.sysusers.conf").read_text()
    assert any(line.split()[:2] == ["u", "cronwire-jobs"] for line in sysusers.splitlines())
    assert _one(unit, "EnvironmentFile") == "/etc/cronwire/cronwire.env"
    assert shlex.split(_one(unit, "ExecStartPre"))[1:] == ["migrate"]
    assert shlex.split(_one(unit, "ExecStart"))[1:] == []
    assert _one(unit, "Restart") == "on-failure"
    assert _one(unit, "KillSignal") == "SIGTERM"
    # Only the server gets SIGTERM: the jobs it runs are its to finish or stop.
    assert _one(unit, "KillMode") == "mixed"
    grace = float(_env_file()["CRONWIRE_SHUTDOWN_GRACE"])
    assert float(_one(unit, "TimeoutStopSec")) > grace + WATCHDOG_MARGIN
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert _one(unit, hardening) == "yes", hardening
    assert _one(unit, "ProtectSystem") == "strict"
    assert _one(unit, "WantedBy") == "multi-user.target"


def test_every_variable_of_the_env_file_is_a_server_setting() -> None:
    help_text = subprocess.run(
        [str(SERVER_BIN), "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    known = set(re.findall(r"\((CRONWIRE_[A-Z_]+)", help_text))
    unknown = sorted(set(_env_file()) - known)
    assert not unknown, f"not flags of cronwire-server serve: {unknown}"


def test_the_env_file_keeps_unauthenticated_metrics_off_public_interfaces() -> None:
    # /metrics takes no key: the shipped configuration serves it on loopback only.
    host = _env_file()["CRONWIRE_METRICS_ADDRESS"].rsplit(":", 1)[0]
    assert host in ("127.0.0.1", "[::1]", "localhost"), host


@pytest.mark.postgres
def test_the_unit_runs_as_written_with_the_env_file(
    tmp_path: Path, fresh_database_url: Callable[[str], str]
) -> None:
    unit = _unit()
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("ops@cronwire.test")
    tls = tmp_path / "tls"
    tls.mkdir()
    server_cert.cert_chain_pems[0].write_to_path(str(tls / "server.crt"))
    server_cert.private_key_pem.write_to_path(str(tls / "server.key"))
    ca.cert_pem.write_to_path(str(tls / "client-ca.crt"))

    grpc_port, metrics_port = _free_port(), _free_port()
    swapped = {
        "CRONWIRE_DATABASE_URL": fresh_database_url("postgres"),
        "CRONWIRE_LISTEN": f"127.0.0.1:{grpc_port}",
        "CRONWIRE_TLS_CERT": str(tls / "server.crt"),
        "CRONWIRE_TLS_KEY": str(tls / "server.key"),
        "CRONWIRE_TLS_CLIENT_CA": str(tls / "client-ca.crt"),
        "CRONWIRE_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        # This machine has no cronwire-jobs user (unless it runs as root: then its jobs' user).
        "CRONWIRE_RUN_AS": "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name,
        "CRONWIRE_SECRETS_FILE": str(tmp_path / "secrets.yaml"),
    }
    variables = _env_file()
    assert set(swapped) <= set(variables)
    # As systemd runs it: the env file's variables and little else.
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **variables, **swapped}
    workdir = tmp_path / "state"
    workdir.mkdir()

    migrated = subprocess.run(
        _command(_one(unit, "ExecStartPre")), env=env, cwd=workdir, capture_output=True, text=True
    )
    assert migrated.returncode == 0, migrated.stderr
    created = subprocess.run(
        [str(SERVER_BIN), "keys", "create", "--namespace", "*", "--role", "admin"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.split()[0]

    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            _command(_one(unit, "ExecStart")), env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
        )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client_cert.private_key_pem.bytes(),
        certificate_chain=client_cert.cert_chain_pems[0].bytes(),
    )
    channel = grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials)
    try:

        def serving() -> bool:
            assert server.poll() is None, log_path.read_text()
            try:
                health = health_pb2_grpc.HealthStub(channel)
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.RpcError:
                return False
            return response.status == health_pb2.HealthCheckResponse.SERVING

        wait_for(serving, 30, "the server to serve health over mutual TLS", interval=0.1)
        status = cluster_service_pb2_grpc.ClusterServiceStub(channel).GetClusterStatus(
            cluster_service_pb2.GetClusterStatusRequest(),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=10,
        )
        assert [r.pid for r in status.replicas] == [server.pid]
        # The HTTP listener serves TLS with the same files; /metrics needs no client certificate.
        scraper = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
        with urllib.request.urlopen(
            f"https://127.0.0.1:{metrics_port}/metrics", timeout=10, context=scraper
        ) as page:
            assert page.status == 200
        # JSON logs, one object per line.
        first = log_path.read_text().splitlines()[0]
        assert first.startswith("{"), first

        server.send_signal(getattr(signal, _one(unit, "KillSignal")))
        assert server.wait(timeout=float(_one(unit, "TimeoutStopSec"))) == 0, log_path.read_text()
    finally:
        channel.close()
        if server.poll() is None:
            server.kill()
            server.wait()
