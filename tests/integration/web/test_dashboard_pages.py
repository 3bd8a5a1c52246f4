"""What the dashboard's pages show, read over plain HTTP: the jobs list's filters, an execution's
attempts, and the lag plot's arithmetic."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cronwire import Client, RetryPolicy
from cronwire_server.core.model import Execution, ExecutionState, ExecutionTrigger
from cronwire_server.web.views import PLOT_BUCKETS, lag_plot, percentile
from tests.integration.web.helpers import DEADLINE, WebServer, start_web_server


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    server = start_web_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path)
    try:
        yield server
    finally:
        server.stop()


def rows(html: str) -> list[str]:
    return re.findall(r'data-job="([^"]+)"', html)


def test_jobs_filter_by_namespace_label_and_last_state(web: WebServer) -> None:
    with Client(web.target, namespace="data") as client:
        client.create_job("load", executor="shell", labels={"team": "data"}, parameters={"argv": ["true"]})
        client.create_job("broken", executor="shell", labels={"team": "data"}, parameters={"argv": ["false"]})
        client.create_job("audit", namespace="ops", executor="shell", parameters={"argv": ["true"]})
        for job in ("load", "broken"):
            client.wait_for_execution(client.run_job(job).name, wait_timeout=DEADLINE)
    with httpx.Client(base_url=web.url, timeout=10.0) as browser:
        assert rows(browser.get("/jobs").text) == ["data/broken", "data/load", "ops/audit"]
        assert rows(browser.get("/jobs", params={"namespace": "ops"}).text) == ["ops/audit"]
        assert rows(browser.get("/jobs", params={"label": "team=data"}).text) == ["data/broken", "data/load"]
        assert rows(browser.get("/jobs", params={"label": "team"}).text) == ["data/broken", "data/load"]
        assert rows(browser.get("/jobs", params={"state": "failed"}).text) == ["data/broken"]
        assert rows(browser.get("/jobs", params={"state": "never"}).text) == ["ops/audit"]
        # A filter is shown back as text.
        echoed = browser.get("/jobs", params={"label": '"><script>x</script>'}).text
        assert "<script>x</script>" not in echoed
        assert "&lt;script&gt;x&lt;/script&gt;" in echoed


def test_an_execution_links_its_attempts(web: WebServer) -> None:
    with Client(web.target, namespace="data") as client:
        client.create_job(
            "flaky",
            executor="shell",
            retry_policy=RetryPolicy(max_attempts=2, initial_backoff=timedelta(milliseconds=10)),
            parameters={"argv": ["sh", "-c", "echo trying; exit 3"]},
        )
        first = client.run_job("flaky")
        last = client.wait_for_execution(first.name, wait_timeout=DEADLINE)
    assert last.attempt == 2
    first_id, last_id = first.name.rsplit("/", 1)[1], last.name.rsplit("/", 1)[1]
    with httpx.Client(base_url=web.url, timeout=10.0) as browser:
        page = browser.get(f"/executions/data/{last_id}").text
    assert f'href="/executions/data/{first_id}">attempt 1</a>' in page
    assert "<strong>attempt 2</strong>" in page
    assert re.search(r'id="exit-code">3<', page)
    assert "trying" in page


def execution(scheduled: datetime, lag: float, trigger: ExecutionTrigger) -> Execution:
    return Execution(
        namespace="n",
        id="e",
        job_id="j",
        state=ExecutionState.SUCCEEDED,
        trigger=trigger,
        scheduled_time=scheduled,
        start_time=scheduled + timedelta(seconds=lag),
    )


def test_the_lag_plot_has_a_p50_and_p99_per_five_minutes() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    recent = now - timedelta(minutes=2)
    runs = [execution(recent, lag, ExecutionTrigger.SCHEDULE) for lag in (0.1, 0.2, 0.3, 5.0)]
    runs.append(execution(recent, 100.0, ExecutionTrigger.BACKFILL))  # not scheduling lag
    runs.append(execution(now - timedelta(hours=2), 50.0, ExecutionTrigger.SCHEDULE))  # before the hour
    plot = lag_plot(runs, now)
    assert len(plot.points) == PLOT_BUCKETS
    last = plot.points[-1]
    assert (last.samples, last.p50, last.p99) == (4, 0.2, 5.0)
    assert all(point.samples == 0 for point in plot.points[:-1])
    assert plot.p99_path.startswith("M0.0,160.0")
    assert percentile([], 0.5) == 0.0
