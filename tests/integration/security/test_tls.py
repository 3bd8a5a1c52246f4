"""TLS and mutual TLS: real `cronwire-server` processes with certificates made by trustme, reached by
the sync and async SDK and by the CLI; plaintext, untrusted and certificate-less clients are refused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

import cronwire
from cronwire.cli import main
from tests.support import ServerProcess, start_server

# The server's certificate names only this host: every client must say so (server name override).
SERVER_NAME = "cronwire.test"


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # issued by another CA
    stranger_key: Path

    def read(self, path: Path) -> bytes:
        return path.read_bytes()

    def tls(self, *, client: bool = True, stranger: bool = False) -> cronwire.TLSConfig:
        cert, key = (
            (self.stranger_cert, self.stranger_key) if stranger else (self.client_cert, self.client_key)
        )
        return cronwire.TLSConfig(
            root_certificates=self.ca.read_bytes(),
            client_certificate=cert.read_bytes() if client else None,
            client_private_key=key.read_bytes() if client else None,
            server_name=SERVER_NAME,
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert(SERVER_NAME)
    client = ca.issue_cert("client@cronwire.test")
    stranger = other_ca.issue_cert("stranger@cronwire.test")
    files = {
        "ca.pem": ca.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
        "stranger.pem": stranger.cert_chain_pems[0],
        "stranger.key": stranger.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(directory / name))
    return Pki(
        directory,
        *(directory / name for name in files),
    )


def _server(tmp_path_factory: pytest.TempPathFactory, name: str, *flags: str) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp(name)
    # These tests are about the transport: TLS turns auth on, even on loopback, unless --insecure.
    running = start_server(f"sqlite:///{workdir / 'cronwire.db'}", workdir, *flags, "--insecure")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(
        tmp_path_factory, "tls", "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)
    )


@pytest.fixture(scope="module")
def mtls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _server(
        tmp_path_factory,
        "mtls",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    )


def test_sync_client_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    with cronwire.Client(tls_server.target, tls=pki.tls(client=False), namespace="tls") as client:
        client.create_job("hello", executor="noop")
        assert client.get_job("hello").name == "namespaces/tls/jobs/hello"
    assert "(TLS)" in tls_server.log()


async def test_async_client_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    async with cronwire.AsyncClient(
        tls_server.target, tls=pki.tls(client=False), namespace="tls-aio"
    ) as client:
        await client.create_job("hello", executor="noop")
        assert (await client.get_job("hello")).name == "namespaces/tls-aio/jobs/hello"


def test_tls_turns_auth_on_even_on_loopback(pki: Pki, tmp_path: Path) -> None:
    flags = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    running = start_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path, *flags)
    try:
        with (
            cronwire.Client(running.target, tls=pki.tls(client=False), namespace="tls") as client,
            pytest.raises(cronwire.Unauthenticated),
        ):
            client.list_jobs()
        assert "no API key yet" in running.log()
    finally:
        running.stop()


def test_plaintext_client_is_refused(tls_server: ServerProcess) -> None:
    with cronwire.Client(tls_server.target, timeout=5) as client, pytest.raises(cronwire.Unavailable):
        client.list_jobs()


def test_client_that_does_not_trust_the_ca_is_refused(tls_server: ServerProcess) -> None:
    # The system's CAs do not know the test CA.
    untrusting = cronwire.TLSConfig(server_name=SERVER_NAME)
    with (
        cronwire.Client(tls_server.target, tls=untrusting, timeout=5) as client,
        pytest.raises(cronwire.Unavailable),
    ):
        client.list_jobs()


def test_a_server_name_other_than_the_certificates_is_refused(tls_server: ServerProcess, pki: Pki) -> None:
    # Without the override the client checks 127.0.0.1, which the certificate does not name.
    no_override = cronwire.TLSConfig(root_certificates=pki.ca.read_bytes())
    with (
        cronwire.Client(tls_server.target, tls=no_override, timeout=5) as client,
        pytest.raises(cronwire.Unavailable),
    ):
        client.list_jobs()


def test_mutual_tls_accepts_a_client_certificate_of_its_ca(mtls_server: ServerProcess, pki: Pki) -> None:
    with cronwire.Client(mtls_server.target, tls=pki.tls(), namespace="mtls") as client:
        client.create_job("hello", executor="noop")
        assert [job.name for job in client.list_jobs().items] == ["namespaces/mtls/jobs/hello"]
    assert "(mutual TLS)" in mtls_server.log()


async def test_mutual_tls_accepts_the_async_client(mtls_server: ServerProcess, pki: Pki) -> None:
    async with cronwire.AsyncClient(mtls_server.target, tls=pki.tls(), namespace="mtls-aio") as client:
        assert (await client.list_jobs()).items == []


@pytest.mark.parametrize("client", ["none", "another CA's"])
def test_mutual_tls_refuses_other_clients(mtls_server: ServerProcess, pki: Pki, client: str) -> None:
    tls = pki.tls(client=False) if client == "none" else pki.tls(stranger=True)
    with cronwire.Client(mtls_server.target, tls=tls, timeout=5) as sdk, pytest.raises(cronwire.Unavailable):
        sdk.list_jobs()


def test_cli_over_mutual_tls(
    mtls_server: ServerProcess, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = ["--server", mtls_server.target, "--tls-server-name", SERVER_NAME, "--tls-ca", str(pki.ca)]
    identity = ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    assert main(["-n", "cli", "jobs", "create", "backup", "--executor", "noop", *flags, *identity]) == 0
    capsys.readouterr()
    # The same through the environment.
    monkeypatch.setenv("CRONWIRE_SERVER", mtls_server.target)
    monkeypatch.setenv("CRONWIRE_TLS_CA", str(pki.ca))
    monkeypatch.setenv("CRONWIRE_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("CRONWIRE_TLS_KEY", str(pki.client_key))
    monkeypatch.setenv("CRONWIRE_TLS_SERVER_NAME", SERVER_NAME)
    assert main(["-n", "cli", "jobs", "get", "backup", "-o", "json"]) == 0
    assert '"namespaces/cli/jobs/backup"' in capsys.readouterr().out
    # Without a client certificate the server refuses the handshake.
    monkeypatch.delenv("CRONWIRE_TLS_CERT")
    monkeypatch.delenv("CRONWIRE_TLS_KEY")
    assert main(["-n", "cli", "jobs", "get", "backup", "--deadline", "5"]) != 0
    assert "unavailable" in capsys.readouterr().err.lower()


def _start_refused(tmp_path: Path, *flags: str) -> str:
    """Start the server with `flags`; it must exit at once with an error; its stderr."""
    finished = subprocess.run(
        [sys.executable, "-m", "cronwire_server", "--listen", "127.0.0.1:0", *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert not (tmp_path / "cronwire.db").exists(), "refused settings must not touch the database"
    return finished.stderr


def test_server_refuses_a_certificate_without_its_key(tmp_path: Path, pki: Pki) -> None:
    stderr = _start_refused(tmp_path, "--tls-cert", str(pki.server_cert))
    assert "--tls-cert and --tls-key go together" in stderr


def test_server_refuses_a_client_ca_without_its_own_certificate(tmp_path: Path, pki: Pki) -> None:
    stderr = _start_refused(tmp_path, "--tls-client-ca", str(pki.ca))
    assert "--tls-client-ca needs --tls-cert and --tls-key" in stderr


def test_server_names_a_missing_file(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "nowhere.key"
    stderr = _start_refused(tmp_path, "--tls-cert", str(pki.server_cert), "--tls-key", str(missing))
    assert f"--tls-key {missing}: cannot read it: No such file or directory" in stderr


def test_server_refuses_a_key_that_is_not_the_certificates(tmp_path: Path, pki: Pki) -> None:
    stderr = _start_refused(tmp_path, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.client_key))
    assert "not a PEM certificate chain and its matching private key" in stderr


def test_server_refuses_a_client_ca_that_is_not_pem(tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    stderr = _start_refused(
        tmp_path,
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(junk),
    )
    assert f"--tls-client-ca {junk}: not PEM CA certificates" in stderr
