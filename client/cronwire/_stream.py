"""Resuming server streams: where a broken log or event stream picks up again."""

from __future__ import annotations

from cronwire._errors import Conflict, CronwireError, ResourceExhausted, Unavailable
from cronwire._types import Event, LogChunk
from cronwire.v1 import event_service_pb2, execution_service_pb2

# The server cuts off a watcher that fell too far behind with this reason, asking it to resume.
WATCHER_TOO_SLOW = "WATCHER_TOO_SLOW"


def resumable(error: CronwireError) -> bool:
    """Whether a stream that ended with `error` should be opened again where it stopped.

    The connection broke or the server went away (UNAVAILABLE, e.g. a replica shutting down),
    the server asked for a retry (ABORTED), or it cut off a watcher that fell behind.
    """
    if isinstance(error, Unavailable | Conflict):
        return True
    return isinstance(error, ResourceExhausted) and error.reason == WATCHER_TOO_SLOW


class LogCursor:
    """The position in an execution's output: the byte offset after the last chunk received."""

    def __init__(self, name: str, follow: bool, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        self.name = name
        self.follow = follow
        self.offset = offset
        self.finished = False

    def request(self) -> execution_service_pb2.StreamExecutionLogsRequest:
        return execution_service_pb2.StreamExecutionLogsRequest(
            name=self.name, follow=self.follow, offset=self.offset
        )

    def advance(self, chunk: LogChunk) -> None:
        self.offset = max(self.offset, chunk.offset + len(chunk.data.encode()))
        if chunk.final_state is not None:
            self.finished = True

    @property
    def complete(self) -> bool:
        """True when a stream that ended normally has said all it will say."""
        return self.finished or not self.follow


class WatchCursor:
    """The last sequence a watcher has seen, so a reconnect neither misses nor repeats events."""

    def __init__(self, first: event_service_pb2.WatchEventsRequest) -> None:
        self._request = first
        self.last_sequence = first.after_sequence

    def request(self) -> event_service_pb2.WatchEventsRequest:
        request = event_service_pb2.WatchEventsRequest()
        request.CopyFrom(self._request)
        request.after_sequence = self.last_sequence
        return request

    def accept(self, response: event_service_pb2.WatchEventsResponse) -> list[Event]:
        """The new events of a response (any already seen are dropped); moves the bookmark."""
        fresh = [Event._from_proto(e) for e in response.events if e.sequence > self.last_sequence]
        if fresh:
            self.last_sequence = fresh[-1].sequence
        # A heartbeat's bookmark: every matching event up to it has been sent.
        self.last_sequence = max(self.last_sequence, response.latest_sequence)
        return fresh
