"""Completion callbacks from the CLI and the SDK, against a real server: the flags, the views,
host names that resolve to refused addresses, and a failed delivery's reason."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import cronwire
from cronwire.cli import EXIT_USAGE
from tests.integration.client.conftest import ThreadedServer
from tests.integration.client.test_cli import Run, cli_against, cw  # noqa: F401  (the fixture)
from tests.support import wait_for

UNRESOLVABLE = "http://cronwire-callback.invalid/hook"  # .invalid never resolves (RFC 6761)


def test_callback_flags_are_stored_and_shown(cw: Run, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    created = cw(
        "jobs", "create", "hooked", "--shell-command", "true",
        "--callback", UNRESOLVABLE, "--callback-on", "failed,timed-out",
        "--callback-secret-ref", "HOOK_SECRET",
    )  # fmt: skip
    assert created.code == 0, created.err
    shown = f"{UNRESOLVABLE} on FAILED,TIMED_OUT (signed)"
    assert shown in created.out
    assert shown in cw("jobs", "get", "hooked").out
    assert shown in cw("jobs", "describe", "hooked").out
    stored = cw("jobs", "get", "hooked", "-o", "json").json()["callback"]
    assert stored["url"] == UNRESOLVABLE
    assert "s3cret" not in cw("jobs", "get", "hooked", "-o", "json").out

    # Update: the flags given change, the rest (the secret included) stays.
    updated = cw("jobs", "update", "hooked", "--callback-on", "succeeded")
    assert updated.code == 0, updated.err
    assert f"{UNRESOLVABLE} on SUCCEEDED (signed)" in cw("jobs", "get", "hooked").out
    assert cw("jobs", "update", "hooked", "--no-callback").code == 0
    assert cw("jobs", "get", "hooked", "-o", "json").json().get("callback") is None

    # Usage errors, before any call.
    monkeypatch.delenv("HOOK_SECRET")
    unset = cw("jobs", "create", "x", "--shell-command", "true", "--callback", UNRESOLVABLE,
               "--callback-secret-ref", "HOOK_SECRET")  # fmt: skip
    assert unset.code == EXIT_USAGE
    assert "HOOK_SECRET is not set" in unset.err
    orphan = cw("jobs", "create", "x", "--shell-command", "true", "--callback-on", "failed")
    assert orphan.code == EXIT_USAGE
    assert "--callback URL" in orphan.err
    not_an_end = cw("jobs", "create", "x", "--shell-command", "true", "--callback", UNRESOLVABLE,
                    "--callback-on", "running")  # fmt: skip
    assert not_an_end.code == EXIT_USAGE
    assert "not an end state" in not_an_end.err
    assert cw("jobs", "update", "hooked", "--callback-on", "failed").code == EXIT_USAGE  # it has none


def test_a_name_resolving_to_a_refused_address_is_refused_at_create_and_update(cw: Run) -> None:  # noqa: F811
    for url in ("http://localhost:8080/hook", "http://127.0.0.1/hook"):
        refused = cw("jobs", "create", "local", "--shell-command", "true", "--callback", url)
        assert refused.code != 0
        assert "job.callback.url" in refused.err, refused.err
        assert "loopback" in refused.err
    assert cw("jobs", "get", "local").code != 0  # nothing stored

    assert cw("jobs", "create", "far", "--shell-command", "true", "--callback", UNRESOLVABLE).code == 0
    refused = cw("jobs", "update", "far", "--callback", "http://localhost/hook")
    assert "job.callback.url" in refused.err, refused.err
    assert "localhost resolves to" in refused.err
    assert cw("jobs", "get", "far", "-o", "json").json()["callback"]["url"] == UNRESOLVABLE


def test_the_sdk_is_refused_a_callback_to_localhost(client: cronwire.Client) -> None:
    with pytest.raises(cronwire.InvalidArgument) as raised:
        client.create_job(
            "local",
            executor="shell",
            parameters={"argv": ["true"]},
            callback=cronwire.CompletionCallback("http://localhost:9/hook"),
        )
    assert "callback.url" in str(raised.value)
    assert "loopback" in str(raised.value)
    with pytest.raises(cronwire.NotFound):
        client.get_job("local")


class _Answers500(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(500)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"boom")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def failing_receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture
def private_cw(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Run]:
    """The CLI against a server started with --allow-private-networks."""
    server = ThreadedServer(sqlite_url, allow_private_networks=True)
    yield cli_against(server.target, monkeypatch, capsys)
    server.stop()


def test_a_failed_delivery_shows_its_reason(
    private_cw: Run, failing_receiver: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cronwire_server.callbacks")
    created = private_cw("jobs", "create", "fails", "--shell-command", "exit 3",
                         "--callback", failing_receiver, "--callback-on", "failed")  # fmt: skip
    assert created.code == 0, created.err
    name = private_cw("jobs", "run", "fails").out.split()[0]

    def attempted() -> dict[str, object] | None:
        delivery = private_cw("executions", "get", name, "-o", "json").json().get("callback_delivery")
        return delivery if delivery and delivery.get("attempts") else None

    delivery = wait_for(attempted, 30, "a callback attempt")
    assert delivery["http_status"] == 500
    assert not delivery.get("delivered")
    shown = private_cw("executions", "get", name).out
    assert "callback:      not delivered after" in shown, shown
    assert "unexpected HTTP status 500" in shown
    wait_for(
        lambda: any("not delivered: unexpected HTTP status 500" in r.getMessage() for r in caplog.records),
        10,
        "the server's log line",
    )
