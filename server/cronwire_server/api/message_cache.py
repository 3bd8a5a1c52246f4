"""Converted messages kept by the version of what they were converted from.

A job's etag changes with every write to it (a new random value), so the message converted from
one (namespace, id, etag) stays right for as long as that version is read: a repeated GetJob or
ListJobs copies it instead of converting the job again. Bounded by the bytes of the messages
kept, not their number, since a job's parameters may be large; the oldest go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

# What the kept messages may take in all (their serialized size, about what they hold).
MAX_BYTES = 16 * 1024 * 1024


class MessageCache(Generic[M]):
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._kept: OrderedDict[Hashable, tuple[M, int]] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes

    def copy(self, version: Hashable, convert: Callable[[], M], into: M) -> None:
        """Copy the message of `version` into `into`, converting (and keeping) it if not kept."""
        kept = self._kept.get(version)
        if kept is None:
            message = convert()
            size = message.ByteSize()
            if size <= self._max_bytes:
                self._kept[version] = (message, size)
                self._bytes += size
                while self._bytes > self._max_bytes:
                    _, (_, dropped) = self._kept.popitem(last=False)
                    self._bytes -= dropped
        else:
            message = kept[0]
        into.CopyFrom(message)

    def __len__(self) -> int:
        return len(self._kept)
