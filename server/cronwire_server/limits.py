"""The server's limits, in one place: what each bounds, and the error a caller gets past it.

Every limit is a server flag; counts use 0 for "no limit". Callers past a limit
get RESOURCE_EXHAUSTED with a message naming the limit and the flag that sets it.

- `--max-message-bytes`: the largest request message; gRPC itself refuses a larger one.
- `--max-output-bytes`: output captured per execution; the rest is dropped and
  `output_truncated` set (see workers.py).
- `--max-jobs-per-namespace`, `--max-schedules-per-namespace`: checked by the store in the
  transaction that inserts (storage/sql_store.py), so concurrent creates cannot overshoot.
- `--max-running-per-namespace`: enforced in the claim query (storage/sql_executions.py), so it
  holds across replicas; executions past it stay QUEUED until a slot frees.
"""

from __future__ import annotations

from dataclasses import dataclass

from cronwire_server.config import Settings
from cronwire_server.errors import ResourceExhausted

__all__ = ["Limits", "NamespaceFull"]

# Responses may need more room than requests: an execution's output alone may reach
# --max-output-bytes, and event pages are cut at 1 MiB.
RESPONSE_HEADROOM = 1024 * 1024
MIN_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = Settings.max_message_bytes
    max_output_bytes: int = Settings.max_output_bytes
    max_jobs_per_namespace: int = 0
    max_schedules_per_namespace: int = 0
    max_running_per_namespace: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits `settings` set; ValueError for values the server cannot run with."""
        if settings.max_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(f"--max-message-bytes must be at least {MIN_MESSAGE_BYTES}")
        if settings.max_output_bytes < 0:
            raise ValueError("--max-output-bytes must not be negative")
        return cls(
            max_message_bytes=settings.max_message_bytes,
            max_output_bytes=settings.max_output_bytes,
            max_jobs_per_namespace=settings.max_jobs_per_namespace,
            max_schedules_per_namespace=settings.max_schedules_per_namespace,
            max_running_per_namespace=settings.max_running_per_namespace,
        )

    def grpc_options(self) -> list[tuple[str, int]]:
        send = max(self.max_message_bytes, self.max_output_bytes + RESPONSE_HEADROOM)
        return [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", send),
        ]


_FLAGS = {"job": "--max-jobs-per-namespace", "schedule": "--max-schedules-per-namespace"}


class NamespaceFull(ResourceExhausted):
    """A create that would take a namespace past its limit of jobs or schedules."""

    def __init__(self, kind: str, namespace: str, limit: int) -> None:
        super().__init__(
            f"namespace {namespace!r} already holds {limit} {kind}s, its limit "
            f"(the server's {_FLAGS[kind]}); delete some or ask the operator to raise it",
            reason=f"{kind.upper()}_LIMIT_REACHED",
        )
        self.kind = kind
        self.namespace = namespace
        self.limit = limit
