"""The dashboard's live streams (server-sent events) are bounded per visitor, and carry changes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cronwire import Client
from cronwire_server.web.pages import MAX_STREAMS_PER_VISITOR
from tests.integration.web.helpers import DEADLINE, WebServer, start_web_server
from tests.support import wait_for


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    server = start_web_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_a_visitor_holds_a_bounded_number_of_streams(web: WebServer) -> None:
    limits = httpx.Limits(max_connections=MAX_STREAMS_PER_VISITOR + 4)
    with httpx.Client(base_url=web.url, timeout=10.0, limits=limits) as browser:
        browser.get("/")  # the session cookie
        with contextlib.ExitStack() as open_streams:
            for _ in range(MAX_STREAMS_PER_VISITOR):
                stream = open_streams.enter_context(browser.stream("GET", "/stream/events"))
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
            assert browser.get("/stream/events").status_code == 429

        def opens() -> bool:
            with browser.stream("GET", "/stream/events") as stream:
                return stream.status_code == 200

        # Closed streams are given back as soon as the server sees them closed.
        wait_for(opens, DEADLINE, "a stream slot given back")


def test_a_stream_tells_what_changed_without_snapshots(web: WebServer) -> None:
    with httpx.Client(base_url=web.url, timeout=20.0) as browser:
        browser.get("/")
        with browser.stream("GET", "/stream/events") as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: hello"
            with Client(web.target, namespace="feed") as client:
                client.create_job("noted", executor="shell", parameters={"argv": ["true"]})
            for line in lines:
                if line.startswith("data: ") and "job_created" in line:
                    change = json.loads(line.removeprefix("data: "))
                    break
    assert change["resource"] == "namespaces/feed/jobs/noted"
    assert change["namespace"] == "feed"
    assert "parameters" not in line  # what the job holds is read through the pages, not pushed


def test_the_output_of_an_execution_that_is_not_there_is_not_streamed(web: WebServer) -> None:
    with httpx.Client(base_url=web.url, timeout=10.0) as browser:
        browser.get("/")
        assert browser.get("/stream/output/feed/e0000000000000000000000").status_code == 404
