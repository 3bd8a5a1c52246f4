"""Channel set-up shared by the sync and async clients: TLS, auth metadata, retries, deadlines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc

from cronwire._convert import to_seconds

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_NAMESPACE = "default"
DEFAULT_TIMEOUT = timedelta(seconds=30)
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
# gRPC's default reconnect backoff grows to 120 s; a server back after a restart is found sooner.
MAX_RECONNECT_BACKOFF_MS = 5000

# The calls that only read: retried on UNAVAILABLE by the channel itself. Writes are never
# retried behind the caller's back (a create without request_id could run twice).
SAFE_METHODS: dict[str, tuple[str, ...]] = {
    "cronwire.v1.JobService": ("GetJob", "ListJobs", "ListJobTypes"),
    "cronwire.v1.ScheduleService": ("GetSchedule", "ListSchedules", "PreviewSchedule"),
    "cronwire.v1.ExecutionService": ("GetExecution", "ListExecutions", "StreamExecutionLogs"),
    "cronwire.v1.EventService": ("ListEvents", "WatchEvents"),
    "cronwire.v1.ClusterService": ("GetClusterStatus",),
}


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the channel. Every field is PEM bytes and optional.

    Attributes:
        root_certificates: the CAs to trust; None uses the system's.
        client_certificate: the client's certificate chain, for mutual TLS.
        client_private_key: the client's private key, for mutual TLS.
        server_name: the name to check the server's certificate against, when it differs
            from the target's host.
    """

    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_private_key: bytes | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials for this configuration."""
        if (self.client_certificate is None) != (self.client_private_key is None):
            raise ValueError("mutual TLS needs both client_certificate and client_private_key")
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_private_key,
            certificate_chain=self.client_certificate,
        )


def service_config(max_attempts: int) -> str:
    """A gRPC service config that retries the read calls on UNAVAILABLE."""
    names = [
        {"service": service, "method": method}
        for service, methods in SAFE_METHODS.items()
        for method in methods
    ]
    config: dict[str, Any] = {
        "methodConfig": [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    return json.dumps(config)


def channel_options(
    *,
    user_agent: str,
    retry_reads: bool,
    tls: TLSConfig | None,
    extra: Sequence[tuple[str, Any]],
) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.primary_user_agent", user_agent),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.enable_retries", 1 if retry_reads else 0),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if retry_reads:
        options.append(("grpc.service_config", service_config(max_attempts=5)))
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    options.extend(extra)
    return options


def tls_config(tls: bool | TLSConfig) -> TLSConfig | None:
    if isinstance(tls, TLSConfig):
        return tls
    return TLSConfig() if tls else None


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    if not token:
        return ()
    return (("authorization", f"Bearer {token}"),)


def deadline(timeout: timedelta | float | None) -> float | None:
    seconds = to_seconds(timeout)
    if seconds is not None and seconds <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    return seconds
