"""`Client` is generated from `AsyncClient` (tests/unit/test_generated_code.py checks the copy is fresh):
both offer the same methods with the same parameters, returning plain values where one awaits."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, cast

import pytest

from cronwire import AsyncClient, Client
from tests.support import REPO

ROOT = REPO
STREAMS = ("logs", "watch")


def _public(cls: type) -> list[str]:
    return sorted(name for name in vars(cls) if not name.startswith("_"))


def _function(cls: type, name: str) -> Callable[..., Any]:
    member = vars(cls)[name]
    if isinstance(member, property):
        assert member.fget is not None
        return member.fget
    return cast("Callable[..., Any]", member)


def _sync_return(annotation: str) -> str:
    """What the sync client returns where the async one's annotation is `annotation`."""
    generator = re.fullmatch(r"AsyncGenerator\[(.+), None\]", annotation)
    if generator:
        return f"Generator[{generator.group(1)}, None, None]"
    return re.sub(r"^AsyncIterator\[", "Iterator[", annotation)


def test_the_generated_file_says_so() -> None:
    first = (ROOT / "client" / "cronwire" / "client.py").read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# Generated from aio.py by `python scripts/gen_sync_client.py`"), first


def test_both_clients_have_the_same_public_names() -> None:
    assert _public(Client) == _public(AsyncClient)
    assert isinstance(vars(Client)["namespace"], property)
    assert isinstance(vars(AsyncClient)["namespace"], property)


@pytest.mark.parametrize("name", _public(AsyncClient))
def test_same_parameters_and_defaults(name: str) -> None:
    sync = inspect.signature(_function(Client, name))
    async_ = inspect.signature(_function(AsyncClient, name))
    describe = [(p.name, p.kind, p.default, p.annotation) for p in async_.parameters.values()]
    assert [(p.name, p.kind, p.default, p.annotation) for p in sync.parameters.values()] == describe


@pytest.mark.parametrize("name", _public(AsyncClient))
def test_returns_differ_only_by_awaiting(name: str) -> None:
    sync, async_ = _function(Client, name), _function(AsyncClient, name)
    sync_return = inspect.signature(sync).return_annotation
    async_return = inspect.signature(async_).return_annotation
    assert sync_return == _sync_return(async_return)
    assert not inspect.iscoroutinefunction(sync)
    assert not inspect.isasyncgenfunction(sync)
    if name in STREAMS:
        assert inspect.isasyncgenfunction(async_)
        assert inspect.isgeneratorfunction(sync)
    elif isinstance(async_return, str) and async_return.startswith("AsyncIterator["):
        # The iter_* methods return the paging iterator; they are not coroutines themselves.
        assert not inspect.iscoroutinefunction(async_)
    elif name != "namespace":
        assert inspect.iscoroutinefunction(async_)


def test_context_managers() -> None:
    assert {"__enter__", "__exit__"} <= set(vars(Client))
    assert {"__aenter__", "__aexit__"} <= set(vars(AsyncClient))
    assert not {"__aenter__", "__aexit__"} & set(vars(Client))
