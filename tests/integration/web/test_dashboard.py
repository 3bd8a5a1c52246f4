"""The dashboard in a real browser (headless Chromium): what an operator sees and does, updating
live from the event stream without reloads."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from cronwire import Client, CronTrigger
from tests.integration.web.helpers import WebServer, start_web_server

NS = "shop"
# Loaded pages mark their window; a reload would lose the mark.
MARK = "window.__notReloaded = true"
NOT_RELOADED = "window.__notReloaded === true"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    # One slot: a run waits QUEUED while another holds it.
    server = start_web_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path, "--worker-slots", "1")
    try:
        yield server
    finally:
        server.stop()


def waits_for(path: Path) -> list[str]:
    """A shell job that goes on once `path` exists (the test creates it when it has seen enough)."""
    return ["sh", "-c", f'while [ ! -e "{path}" ]; do sleep 0.05; done']


def confirm(page: Page) -> None:
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-button")


def test_run_now_goes_queued_running_succeeded_live(
    web: WebServer, page: Page, tmp_path: Path, screenshots: Path
) -> None:
    hold, finish = tmp_path / "hold-released", tmp_path / "report-may-finish"
    with Client(web.target, namespace=NS) as client:
        client.create_job("blocker", executor="shell", parameters={"argv": waits_for(hold)})
        client.create_job(
            "nightly-report",
            executor="shell",
            description="Sales report for the <b>board</b>",
            labels={"team": "finance"},
            parameters={
                "argv": ["sh", "-c", f'echo "<b>step one</b>"; {" ".join(waits_for(finish)[2:])}; echo done']
            },
        )
        client.create_schedule("nightly", job="nightly-report", trigger=CronTrigger("0 2 * * *"))
        client.create_job(
            "cleanup",
            executor="shell",
            description="Removes exports older than a week",
            labels={"team": "ops"},
            parameters={"argv": ["sh", "-c", "echo removed 42 old exports"]},
        )
        client.create_schedule("hourly", job="cleanup", trigger=CronTrigger("0 * * * *"))
        blocker = client.run_job("blocker")

    page.goto(web.url + "/")
    page.evaluate(MARK)
    expect(page.locator("#job-count")).to_have_text("3")
    expect(page.locator("#next-runs")).to_contain_text("nightly-report")
    expect(page.locator("#next-runs")).to_contain_text("cleanup")
    expect(page.locator("#live")).to_have_text(re.compile("live"))
    page.screenshot(path=str(screenshots / "overview.png"))

    page.click("text=Jobs")
    expect(page.locator("#jobs")).to_contain_text("nightly-report")
    page.screenshot(path=str(screenshots / "jobs.png"))

    page.click("a:has-text('shop/nightly-report')")
    expect(page.locator("h1")).to_have_text("Job shop/nightly-report")
    expect(page.locator("#schedules")).to_contain_text("nightly")
    page.click("#run-now")
    confirm(page)

    # The execution page: QUEUED behind the blocker, then RUNNING, then SUCCEEDED, no reload.
    expect(page.locator("#outcome")).to_have_text("Run queued.")
    page.evaluate(MARK)
    state = page.locator("#execution-state")
    expect(state).to_have_text("queued")
    hold.touch()
    expect(state).to_have_text("running")
    output = page.locator("#output")
    expect(output).to_contain_text("<b>step one</b>")  # HTML in output is text
    assert page.locator("#output b").count() == 0
    page.screenshot(path=str(screenshots / "execution-running.png"))
    finish.touch()
    expect(state).to_have_text("succeeded")
    expect(output).to_contain_text("done")
    assert page.evaluate(NOT_RELOADED), "the page was reloaded"
    page.screenshot(path=str(screenshots / "execution.png"))

    with Client(web.target, namespace=NS) as client:
        assert client.get_execution(blocker.name).state.name == "SUCCEEDED"

    page.click("a:has-text('shop/nightly-report')")
    expect(page.locator("#executions")).to_contain_text("succeeded")

    page.click("text=Events")
    page.evaluate(MARK)
    with Client(web.target, namespace=NS) as client:
        client.run_job("cleanup")
    expect(page.locator("#feed-rows")).to_contain_text("execution_succeeded")
    assert page.evaluate(NOT_RELOADED)
    page.screenshot(path=str(screenshots / "events.png"))

    page.goto(f"{web.url}/jobs/{NS}/cleanup")
    expect(page.locator("#executions")).to_contain_text("succeeded")
    page.screenshot(path=str(screenshots / "job.png"), full_page=True)


def test_pausing_a_schedule_takes_its_next_run_away(web: WebServer, page: Page) -> None:
    with Client(web.target, namespace=NS) as client:
        client.create_job("backup", executor="shell", parameters={"argv": ["true"]})
        client.create_schedule("daily", job="backup", trigger=CronTrigger("30 3 * * *"))

    page.goto(web.url + "/")
    expect(page.locator("#next-runs")).to_contain_text("backup")
    page.goto(f"{web.url}/jobs/{NS}/backup")
    schedule = page.locator("#schedule-daily")
    expect(schedule.locator(".fire-times li")).to_have_count(5)
    schedule.locator("button.pause").click()
    confirm(page)
    expect(page.locator("#outcome")).to_have_text("Schedule paused.")
    expect(schedule.locator(".schedule-state")).to_contain_text("paused")
    expect(schedule.locator(".fire-times")).to_contain_text("none while paused")
    expect(page.locator("#job-next-run")).to_have_text("—")

    page.goto(web.url + "/")
    page.evaluate(MARK)
    expect(page.locator("#next-runs")).not_to_contain_text("backup")
    # Resumed elsewhere (the CLI, the API): the overview shows it again without a reload.
    with Client(web.target, namespace=NS) as client:
        client.resume_schedule("daily")
    expect(page.locator("#next-runs")).to_contain_text("backup")
    assert page.evaluate(NOT_RELOADED)


def test_what_jobs_hold_renders_as_text(web: WebServer, page: Page) -> None:
    hostile = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
    with Client(web.target, namespace=NS) as client:
        client.create_job(
            "hostile",
            executor="shell",
            description=hostile,
            labels={"owner": "<script>x</script>"},
            parameters={"argv": ["sh", "-c", f"echo '{hostile}'"]},
        )
        run = client.run_job("hostile")
        client.wait_for_execution(run.name, wait_timeout=20)

    page.goto(f"{web.url}/jobs/{NS}/hostile")
    expect(page.locator("#job-description")).to_have_text(hostile)
    expect(page.locator("#definition")).to_contain_text("<script>x</script>")
    page.goto(f"{web.url}/jobs")
    expect(page.locator("#jobs")).to_contain_text(hostile)
    page.goto(f"{web.url}/executions/{NS}/{run.name.rsplit('/', 1)[1]}")
    expect(page.locator("#output")).to_contain_text(hostile)
    assert page.locator("main script, main img").count() == 0
    assert page.evaluate("window.__xss === undefined")


def test_a_form_being_filled_in_is_not_redrawn_by_live_updates(web: WebServer, page: Page) -> None:
    with Client(web.target, namespace=NS) as client:
        client.create_job("sync", executor="shell", parameters={"argv": ["true"]})
        client.create_schedule("hourly", job="sync", trigger=CronTrigger("0 * * * *"))
        page.goto(f"{web.url}/jobs/{NS}/sync")
        page.evaluate(MARK)
        expect(page.locator("#live")).to_have_text("● live")
        backfill = page.locator("#schedule-hourly form.backfill")
        backfill.locator("input[name=start]").fill("2026-01-01T00:30")
        backfill.locator("input[name=end]").fill("2026-01-01T02:30")
        page.locator("h1").first.click()  # the visitor looks elsewhere: no field has the focus
        # An event about the job: the page would redraw its main part, and the form with it.
        client.wait_for_execution(client.run_job("sync").name, wait_timeout=20)
    expect(page.locator("#live")).to_have_text(re.compile("not redrawn while a form is being filled in"))
    expect(backfill.locator("input[name=start]")).to_have_value("2026-01-01T00:30")
    expect(backfill.locator("input[name=end]")).to_have_value("2026-01-01T02:30")
    assert page.evaluate(NOT_RELOADED)
    # Sent, the form leaves the page; back on it, the page shows the run it had held back.
    backfill.locator("button").click()
    expect(page.locator("#preview li")).to_have_count(2)
    page.goto(f"{web.url}/jobs/{NS}/sync")
    expect(page.locator("#live")).to_have_text("● live")
    expect(page.locator("#executions .execution-row")).to_have_count(1)


def test_backfill_previews_its_ticks_and_cancel_stops_a_run(
    web: WebServer, page: Page, tmp_path: Path, screenshots: Path
) -> None:
    with Client(web.target, namespace=NS) as client:
        client.create_job("sync", executor="shell", parameters={"argv": ["true"]})
        client.create_schedule("hourly", job="sync", trigger=CronTrigger("0 * * * *"))
        client.create_job("stuck", executor="shell", parameters={"argv": waits_for(tmp_path / "never")})
        stuck = client.run_job("stuck")
    # Two whole hours ago, from half past: exactly two ticks.
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=30, second=0, microsecond=0)
    end = start + timedelta(hours=2)

    page.goto(f"{web.url}/jobs/{NS}/sync")
    backfill = page.locator("#schedule-hourly form.backfill")
    backfill.locator("input[name=start]").fill(start.strftime("%Y-%m-%dT%H:%M"))
    backfill.locator("input[name=end]").fill(end.strftime("%Y-%m-%dT%H:%M"))
    backfill.locator("button").click()
    preview = page.locator("#preview li")
    expect(preview).to_have_count(2)
    expect(preview.first).to_have_text((start + timedelta(minutes=30)).strftime("%Y-%m-%d %H:%M:%S"))
    page.screenshot(path=str(screenshots / "backfill-preview.png"))
    with Client(web.target, namespace=NS) as client:
        assert client.list_executions(job="sync").items == []  # a dry run ran nothing
    page.click("#confirm-button")
    expect(page.locator("#outcome")).to_have_text("Backfill queued.")
    expect(page.locator("#executions .execution-row")).to_have_count(2)
    expect(page.locator("#executions")).to_contain_text("backfill")

    page.goto(f"{web.url}/executions/{NS}/{stuck.name.rsplit('/', 1)[1]}")
    expect(page.locator("#execution-state")).to_have_text("running")
    page.click("#cancel")
    confirm(page)
    expect(page.locator("#outcome")).to_have_text("Cancellation requested.")
    expect(page.locator("#execution-state")).to_have_text("cancelled")
    assert page.locator("#cancel").count() == 0
