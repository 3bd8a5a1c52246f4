"""What the client's channel does on the wire: retries of reads only, the bearer token, TLS and mTLS.

The cronwire server cannot be made to answer UNAVAILABLE on demand, does not check tokens yet and
serves plaintext, so these tests run a small real gRPC server of their own: a JobService that
fails as told and records what it received. It is a real server on a real port, spoken to through
the same channel the SDK always builds.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

import cronwire
from cronwire.cli import main
from cronwire.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc


@dataclass
class Recorder(job_service_pb2_grpc.JobServiceServicer):
    """Answers UNAVAILABLE to the first `failures` calls of each method, then succeeds."""

    failures: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    metadata: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
            failing = self.calls[method] <= self.failures
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: grpc.ServicerContext
    ) -> job_service_pb2.GetJobResponse:
        self._enter("GetJob", context)
        return job_service_pb2.GetJobResponse(job=job_pb2.Job(name=request.name, executor="noop"))

    def CreateJob(
        self, request: job_service_pb2.CreateJobRequest, context: grpc.ServicerContext
    ) -> job_service_pb2.CreateJobResponse:
        self._enter("CreateJob", context)
        name = f"{request.parent}/jobs/{request.job_id}"
        return job_service_pb2.CreateJobResponse(job=job_pb2.Job(name=name, executor=request.job.executor))


@dataclass
class Certificates:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    directory: Path


def _serve(recorder: Recorder, credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    job_service_pb2_grpc.add_JobServiceServicer_to_server(recorder, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def plain_target(recorder: Recorder) -> Iterator[str]:
    server, port = _serve(recorder)
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_reads_are_retried_on_unavailable(recorder: Recorder, plain_target: str) -> None:
    recorder.failures = 2
    with cronwire.Client(plain_target) as client:
        job = client.get_job("backup")
    assert job.name == "namespaces/default/jobs/backup"
    assert recorder.calls["GetJob"] == 3


def test_writes_are_not_retried(recorder: Recorder, plain_target: str) -> None:
    recorder.failures = 1
    with cronwire.Client(plain_target) as client, pytest.raises(cronwire.Unavailable) as error:
        client.create_job("backup", executor="noop")
    assert error.value.message == "try again"
    assert recorder.calls["CreateJob"] == 1


def test_retries_can_be_turned_off(recorder: Recorder, plain_target: str) -> None:
    recorder.failures = 1
    with cronwire.Client(plain_target, retry_reads=False) as client, pytest.raises(cronwire.Unavailable):
        client.get_job("backup")
    assert recorder.calls["GetJob"] == 1


def test_token_is_sent_as_bearer_metadata(recorder: Recorder, plain_target: str) -> None:
    with cronwire.Client(plain_target, token="s3cret") as client:
        client.get_job("backup")
    with cronwire.Client(plain_target) as anonymous:
        anonymous.get_job("backup")
    assert recorder.metadata[0]["authorization"] == "Bearer s3cret"
    assert recorder.metadata[0]["user-agent"].startswith(f"cronwire-python/{cronwire.__version__}")
    assert "authorization" not in recorder.metadata[1]


def test_cli_sends_the_token_from_the_environment(
    recorder: Recorder, plain_target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRONWIRE_SERVER", plain_target)
    monkeypatch.setenv("CRONWIRE_TOKEN", "from-env")
    assert main(["jobs", "get", "backup", "-o", "json"]) == 0
    assert recorder.metadata[-1]["authorization"] == "Bearer from-env"
    assert main(["jobs", "get", "backup", "--token", "from-flag"]) == 0
    assert recorder.metadata[-1]["authorization"] == "Bearer from-flag"
    capsys.readouterr()


# TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("the TLS tests make their certificates with the openssl command")
    directory = tmp_path_factory.mktemp("tls")
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req",
        "-x509",
        *key,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        cwd=directory,
    )
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            *key,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=directory,
        )
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext", cwd=directory,
        )  # fmt: skip

    def read(name: str) -> bytes:
        return (directory / name).read_bytes()

    return Certificates(
        read("ca.pem"),
        read("server.pem"),
        read("server.key"),
        read("client.pem"),
        read("client.key"),
        directory,
    )


@pytest.fixture
def mtls_target(recorder: Recorder, certificates: Certificates) -> Iterator[str]:
    credentials = grpc.ssl_server_credentials(
        [(certificates.server_key, certificates.server_cert)],
        root_certificates=certificates.ca,
        require_client_auth=True,
    )
    server, port = _serve(recorder, credentials)
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_mutual_tls(recorder: Recorder, certificates: Certificates, mtls_target: str) -> None:
    tls = cronwire.TLSConfig(
        root_certificates=certificates.ca,
        client_certificate=certificates.client_cert,
        client_private_key=certificates.client_key,
        server_name="localhost",
    )
    with cronwire.Client(mtls_target, tls=tls, token="t") as client:
        assert client.get_job("backup").executor == "noop"
    assert recorder.metadata[-1]["authorization"] == "Bearer t"

    # Without a client certificate the handshake fails: nothing reaches the service.
    calls = dict(recorder.calls)
    no_cert = cronwire.TLSConfig(root_certificates=certificates.ca, server_name="localhost")
    with cronwire.Client(mtls_target, tls=no_cert, timeout=5) as client, pytest.raises(cronwire.Unavailable):
        client.get_job("backup")
    assert recorder.calls == calls


def test_tls_config_needs_both_halves_of_a_client_identity(certificates: Certificates) -> None:
    with pytest.raises(ValueError, match="both"):
        cronwire.Client("127.0.0.1:1", tls=cronwire.TLSConfig(client_certificate=certificates.client_cert))


def test_cli_tls_flags(
    certificates: Certificates, mtls_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = certificates.directory
    flags = ["--server", mtls_target, "--tls-server-name", "localhost", "--ca", str(directory / "ca.pem")]
    client_identity = ["--cert", str(directory / "client.pem"), "--key", str(directory / "client.key")]
    assert main(["jobs", "get", "backup", "-o", "json", *flags, *client_identity]) == 0
    assert '"executor": "noop"' in capsys.readouterr().out

    assert main(["jobs", "get", "backup", *flags, "--cert", str(directory / "client.pem")]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
