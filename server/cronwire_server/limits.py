"""The server's limits, in one place: what each bounds, and the error a caller gets past it.

Every limit is a server flag; counts use 0 for "no limit". Callers past a limit
get RESOURCE_EXHAUSTED with a message naming the limit and the flag that sets it.

- `--max-message-bytes`: the largest request message; gRPC itself refuses a larger one.
- `--max-output-bytes`: output captured per execution; the rest is dropped and
  `output_truncated` set (see workers.py).
- `--max-jobs-per-namespace`, `--max-schedules-per-namespace`: checked by the store against the
  namespace's counter row, locked in the transaction that inserts (storage/sql_creates.py), so
  concurrent creates cannot overshoot, on any replicas.
- `--max-running-per-namespace`: enforced in the claim query (storage/sql_queue.py), so it
  holds across replicas; executions past it stay QUEUED until a slot frees.
- `--max-parameters-bytes`, `--max-arguments-bytes`, `--max-labels-bytes`: the free-form
  documents of a request, checked before any service sees it (`DocumentSizes`). Everything that
  copies them (rows, event snapshots, watchers' pages, the conversion cache) is bounded by them;
  a document past its limit is INVALID_ARGUMENT naming the field, as a malformed one is.
- `--max-streams-per-key`, `--max-streams-per-replica`: server streams open at once in this
  replica (`StreamCaps`); one more is RESOURCE_EXHAUSTED before it starts.
- `--max-fan-out`: executions one run of a job may lead to through its dependents (every path
  counted), checked at CreateJob/UpdateJob for the job and every job that reaches it
  (jobs.py `_refuse_fan_out`): INVALID_ARGUMENT naming `dependents`, as a cycle is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from cronwire_server.api.handlers import Rewrapped, behaviour_of, with_behaviour
from cronwire_server.api.status import abort
from cronwire_server.auth import principal
from cronwire_server.config import Settings
from cronwire_server.core.errors import FieldViolation, InvalidArgument, ResourceExhausted

__all__ = ["DocumentSizes", "Limits", "NamespaceFull", "StreamCaps"]

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
    max_parameters_bytes: int = Settings.max_parameters_bytes
    max_arguments_bytes: int = Settings.max_arguments_bytes
    max_labels_bytes: int = Settings.max_labels_bytes
    max_streams_per_key: int = Settings.max_streams_per_key
    max_streams_per_replica: int = Settings.max_streams_per_replica
    max_fan_out: int = Settings.max_fan_out

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
            max_parameters_bytes=settings.max_parameters_bytes,
            max_arguments_bytes=settings.max_arguments_bytes,
            max_labels_bytes=settings.max_labels_bytes,
            max_streams_per_key=settings.max_streams_per_key,
            max_streams_per_replica=settings.max_streams_per_replica,
            max_fan_out=settings.max_fan_out,
        )

    def document_limits(self) -> dict[str, tuple[int, str]]:
        """Field name -> (its byte limit, the flag that sets it), for the documents with one."""
        limits = {
            "parameters": (self.max_parameters_bytes, "--max-parameters-bytes"),
            "arguments": (self.max_arguments_bytes, "--max-arguments-bytes"),
            "labels": (self.max_labels_bytes, "--max-labels-bytes"),
            "arguments_schema": (self.max_parameters_bytes, "--max-parameters-bytes"),
        }
        return {name: limit for name, limit in limits.items() if limit[0] > 0}

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


def _document_size(message: Message, name: str) -> int:
    value = getattr(message, name)
    if isinstance(value, Message):
        return value.ByteSize()
    # A map<string, string>: its keys and values as UTF-8.
    return sum(len(k.encode()) + len(v.encode()) for k, v in value.items())


def _documents(message: Message, names: frozenset[str], prefix: str = "") -> Iterator[tuple[str, Message]]:
    """(path, holder) for each field in `names` that `message` or a message field of it holds."""
    for descriptor, value in message.ListFields():
        path = f"{prefix}{descriptor.name}"
        if descriptor.name in names:
            yield path, message
        elif not prefix and descriptor.message_type is not None and isinstance(value, Message):
            yield from _documents(value, names, f"{path}.")


def oversized_documents(request: Message, limits: dict[str, tuple[int, str]]) -> list[FieldViolation]:
    """A violation for each free-form document of `request` (or of a message in it) past its limit."""
    violations = []
    for path, holder in _documents(request, frozenset(limits)):
        name = path.rpartition(".")[2]
        size, (limit, flag) = _document_size(holder, name), limits[name]
        if size > limit:
            violations.append(
                FieldViolation(path, f"is {size} bytes; at most {limit} are accepted (the server's {flag})")
            )
    return violations


def _may_hold(deserializer: Any, names: frozenset[str]) -> bool:
    """Whether requests `deserializer` decodes can hold a field in `names` where
    `oversized_documents` looks (the request's fields, and those of its message fields); True
    when the request's type cannot be told."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    if descriptor is None or not hasattr(descriptor, "fields"):
        return True
    for field in descriptor.fields:
        if field.name in names:
            return True
        if field.message_type is not None and any(inner.name in names for inner in field.message_type.fields):
            return True
    return False


class DocumentSizes(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses a request whose parameters, arguments or labels exceed their limits, before any
    service (and any copy the service would make) sees it. Methods whose requests cannot hold
    such a document are served as they are."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits.document_limits()
        self._wrapped = Rewrapped(self._checking)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or not self._limits:
            return handler
        return self._wrapped(handler_call_details.method, handler)

    def _checking(self, method: str, handler: Any) -> Any:
        limits = self._limits
        if not _may_hold(handler.request_deserializer, frozenset(limits)):
            return handler
        behaviour = behaviour_of(handler)

        async def check(request: Any, context: Any) -> None:
            if isinstance(request, Message) and (violations := oversized_documents(request, limits)):
                await abort(context, InvalidArgument(violations))

        if not handler.response_streaming:

            async def respond(request: Any, context: Any) -> Any:
                await check(request, context)
                return await behaviour(request, context)

            return with_behaviour(handler, respond)

        async def respond_streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            await check(request, context)
            async for response in behaviour(request, context):
                yield response

        return with_behaviour(handler, respond_streaming)


class TooManyStreams(ResourceExhausted):
    reason = "TOO_MANY_STREAMS"


class StreamCaps(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts the server streams open in this replica, per key and in all, and refuses one past
    either limit. Installed after auth, which names the key (none with auth off)."""

    def __init__(self, limits: Limits) -> None:
        self._per_key = limits.max_streams_per_key
        self._per_replica = limits.max_streams_per_replica
        self._by_key: dict[str, int] = {}
        self.open = 0
        self._wrapped = Rewrapped(self._counting)

    def _take(self, key: str) -> None:
        if self._per_replica and self.open >= self._per_replica:
            raise TooManyStreams(
                f"this replica already serves {self._per_replica} streams, its limit (the server's "
                "--max-streams-per-replica); retry later or on another replica"
            )
        held = self._by_key.get(key, 0)
        if key and self._per_key and held >= self._per_key:
            raise TooManyStreams(
                f"key {key} already has {self._per_key} streams open on this replica, its limit (the "
                "server's --max-streams-per-key); close some first"
            )
        self._by_key[key] = held + 1
        self.open += 1

    def _give_back(self, key: str) -> None:
        self.open -= 1
        held = self._by_key.pop(key) - 1
        if held:
            self._by_key[key] = held

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or not handler.response_streaming or not (self._per_key or self._per_replica):
            return handler
        return self._wrapped(handler_call_details.method, handler)

    def _counting(self, method: str, handler: Any) -> Any:
        behaviour = behaviour_of(handler)

        async def respond_streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            caller = principal.current().key
            key = caller.name if caller else ""
            try:
                self._take(key)
            except TooManyStreams as error:
                await abort(context, error)
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                self._give_back(key)

        return with_behaviour(handler, respond_streaming)
