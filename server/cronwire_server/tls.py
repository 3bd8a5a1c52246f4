"""TLS on the gRPC port: server credentials from PEM files, optionally requiring client certificates.

`--tls-cert` and `--tls-key` (both or neither) serve TLS; `--tls-client-ca` also
requires every client to present a certificate signed by one of those CAs
(mutual TLS). The files are checked with the `ssl` module before gRPC sees them,
so that a wrong path, an unreadable file or a key that does not match its
certificate stops the server at start with a message naming the flag, rather
than surfacing as a failed handshake on the first call.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc

__all__ = ["TlsError", "TlsFiles", "server_credentials"]


class TlsError(ValueError):
    """The TLS settings cannot be used; the message names the flag at fault."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of PEM files; empty strings for those not given."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.client_ca)

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials | None:
    """The credentials for `add_secure_port`, or None for plaintext; TlsError if unusable."""
    if not files.enabled:
        return None
    if not (files.cert and files.key):
        if files.cert or files.key:
            raise TlsError("--tls-cert and --tls-key go together: give both to serve TLS")
        raise TlsError("--tls-client-ca needs --tls-cert and --tls-key (the server's own certificate)")
    cert = _read(files.cert, "--tls-cert")
    key = _read(files.key, "--tls-key")
    client_ca = _read(files.client_ca, "--tls-client-ca") if files.client_ca else None
    _check(files)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise TlsError(f"{flag} {path}: cannot read it: {error.strerror or error}") from None


def _no_password() -> bytes:
    # Without this, OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    raise TlsError("--tls-key: the key is encrypted; give it unencrypted (protect the file instead)")


def _check(files: TlsFiles) -> None:
    """Parse the files as OpenSSL will: the chain, its key, and the client CAs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key, password=_no_password)
    except ssl.SSLError as error:
        raise TlsError(
            f"--tls-cert {files.cert} / --tls-key {files.key}: not a PEM certificate chain and its "
            f"matching private key ({error.reason or error})"
        ) from None
    if files.client_ca:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except ssl.SSLError as error:
            raise TlsError(
                f"--tls-client-ca {files.client_ca}: not PEM CA certificates ({error.reason or error})"
            ) from None
