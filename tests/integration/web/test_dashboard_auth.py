"""The dashboard behind the API's keys, in a real browser: a key entered once and kept in an
HttpOnly, SameSite=Strict cookie; viewers see and editors act, each within its namespaces; every
state change needs the page's CSRF token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from cronwire import Client
from tests.integration.web.helpers import WebServer, start_web_server

NS = "shop"


@dataclass
class Keys:
    admin: str
    editor: str
    viewer: str


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[WebServer, Keys]]:
    # On loopback the server is open until its first key: the jobs, then the keys, are made then.
    # The dashboard reads again at once whether keys exist (--key-cache-seconds 0).
    server = start_web_server(f"sqlite:///{tmp_path / 'cronwire.db'}", tmp_path, "--key-cache-seconds", "0")
    try:
        with Client(server.target, namespace=NS) as client:
            client.create_job("report", executor="shell", parameters={"argv": ["echo", "made"]})
            client.create_job(
                "secret-job", namespace="other", executor="shell", parameters={"argv": ["true"]}
            )
            admin = client.create_key(["*"], "admin", executors=["*"]).token
        with Client(server.target, namespace=NS, token=admin) as client:
            editor = client.create_key([NS], "editor", executors=["*"]).token
            viewer = client.create_key([NS], "viewer").token
        yield server, Keys(admin, editor, viewer)
    finally:
        server.stop()


def log_in(page: Page, web: WebServer, key: str) -> None:
    page.goto(web.url + "/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("#key", key)
    page.click("#login")
    expect(page.locator("h1")).to_have_text("Overview")


def test_a_key_is_asked_once_and_kept_in_a_strict_httponly_cookie(
    keyed: tuple[WebServer, Keys], page: Page, browser_context: BrowserContext, screenshots: Path
) -> None:
    web, keys = keyed
    page.goto(web.url + "/jobs")
    expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)jobs$"))
    page.screenshot(path=str(screenshots / "login.png"))
    page.fill("#key", "cwk_0123456789abcdef_wrong")
    page.click("#login")
    expect(page.locator("#error")).to_have_text("That key is not valid.")
    page.fill("#key", keys.viewer)
    page.click("#login")
    expect(page.locator("h1")).to_have_text("Jobs")  # back where the visitor was going
    (cookie,) = [c for c in browser_context.cookies() if c["name"] == "cronwire_session"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # no script of the page can read the key
    # Streams and pages without the cookie get nothing.
    assert httpx.get(f"{web.url}/stream/events", timeout=5.0).status_code == 401
    assert httpx.get(f"{web.url}/jobs/{NS}/report", timeout=5.0, follow_redirects=False).status_code == 303


def test_a_viewer_sees_its_namespaces_and_cannot_act(keyed: tuple[WebServer, Keys], page: Page) -> None:
    web, keys = keyed
    log_in(page, web, keys.viewer)
    page.goto(f"{web.url}/jobs")
    expect(page.locator("#jobs")).to_contain_text("shop/report")
    expect(page.locator("#jobs")).not_to_contain_text("secret-job")
    page.goto(f"{web.url}/jobs/{NS}/report")
    expect(page.locator("h1")).to_have_text("Job shop/report")
    assert page.locator("#run-now").count() == 0
    # Another namespace's job is not found, as through the API.
    response = page.goto(f"{web.url}/jobs/other/secret-job")
    assert response is not None
    assert response.status == 404
    assert page.request.get(f"{web.url}/stream/output/other/e0000000000000000000000").status == 404
    # Posting the form anyway (with a valid CSRF token) is refused.
    page.goto(f"{web.url}/jobs/{NS}/report")
    csrf = page.locator("form[action='/logout'] input[name=csrf]").get_attribute("value")
    refused = page.request.post(
        f"{web.url}/actions/run",
        form={"csrf": csrf or "", "name": f"namespaces/{NS}/jobs/report", "confirmed": "1"},
        headers={"Origin": web.url},
    )
    assert refused.status == 403
    assert "viewer" in refused.text()
    with Client(web.target, namespace=NS, token=keys.admin) as client:
        assert client.list_executions(job="report").items == []


def test_state_changes_need_the_pages_csrf_token(keyed: tuple[WebServer, Keys], page: Page) -> None:
    web, keys = keyed
    log_in(page, web, keys.editor)
    page.goto(f"{web.url}/jobs/{NS}/report")
    csrf = page.locator("form[action='/actions/run'] input[name=csrf]").get_attribute("value") or ""
    run = {"name": f"namespaces/{NS}/jobs/report", "confirmed": "1"}

    def post(form: dict[str, str], origin: str = web.url) -> int:
        return page.request.post(f"{web.url}/actions/run", form=form, headers={"Origin": origin}).status

    assert post(run) == 403  # no token
    assert post({**run, "csrf": "0" * 64}) == 403  # a made-up one
    assert post({**run, "csrf": csrf}, origin="http://attacker.example") == 403  # another site's form
    # Another visitor's token is not this visitor's, whoever they are.
    with httpx.Client(base_url=web.url) as stranger:
        login_form = stranger.get("/login").text
        assert stranger.post("/actions/run", data={**run, "csrf": csrf}).status_code == 401
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', login_form)
        assert found is not None
        logged_in = stranger.post("/login", data={"csrf": found.group(1), "key": keys.admin, "next": "/"})
        assert logged_in.status_code == 303
        assert stranger.post("/actions/run", data={**run, "csrf": csrf}).status_code == 403
    with Client(web.target, namespace=NS, token=keys.admin) as client:
        assert client.list_executions(job="report").items == []

    # The page's own form, confirmed: the run is made and shown.
    page.click("#run-now")
    page.click("#confirm-button")
    expect(page.locator("#outcome")).to_have_text("Run queued.")
    expect(page.locator("#execution-state")).to_have_text("succeeded")
    expect(page.locator("#output")).to_contain_text("made")
    with Client(web.target, namespace=NS, token=keys.admin) as client:
        (execution,) = client.list_executions(job="report").items
        assert execution.state.name == "SUCCEEDED"
