"""Alerts against a real server and database, with real local receivers: a signed webhook that
gets one alert per incident and its resolution, Slack and PagerDuty payloads, mail received by an
SMTP server over STARTTLS and over implicit TLS (SMTPS), LATE while every worker slot is busy and
while no worker runs, and nothing sent to an address the server refuses."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult
from google.protobuf import duration_pb2, field_mask_pb2

import cronwire
from cronwire.v1 import (
    checkin_pb2,
    checkin_service_pb2,
    checkin_service_pb2_grpc,
    event_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
    execution_pb2,
    execution_service_pb2,
    execution_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    notification_pb2,
    notification_service_pb2,
    notification_service_pb2_grpc,
    schedule_pb2,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
)
from cronwire_server.app import RunningServer, create_server
from cronwire_server.config import Settings
from cronwire_server.storage import sql_notifications
from tests.support import eventually

NS = "namespaces/alerts"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP server that records every POST and answers 200 (202 under /pd)."""

    port: int = 0
    got: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            found.got.append(Received(self.path, dict(self.headers.items()), body))
            self.send_response(202 if self.path.startswith("/pd") else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.port = http.server_address[1]
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield found
    http.shutdown()
    http.server_close()


@dataclass
class Api:
    jobs: job_service_pb2_grpc.JobServiceStub
    schedules: schedule_service_pb2_grpc.ScheduleServiceStub
    executions: execution_service_pb2_grpc.ExecutionServiceStub
    events: event_service_pb2_grpc.EventServiceStub
    alerts: notification_service_pb2_grpc.NotificationServiceStub
    check_ins: checkin_service_pb2_grpc.CheckInServiceStub


async def _serve(database_url: str, **settings: Any) -> RunningServer:
    return await create_server(
        Settings(listen="127.0.0.1:0", database_url=database_url, allow_root_jobs=True, **settings)
    )


@pytest.fixture
async def api_of(fresh_database_url: Any) -> AsyncIterator[Any]:
    """Start servers with given settings; stubs on them. They stop before the test's databases
    are dropped (hence the fixture it depends on): a server whose database went away first
    spends its shutdown retrying to put its running executions back."""
    started: list[tuple[RunningServer, grpc.aio.Channel]] = []
    servers: list[RunningServer] = []

    async def start(database_url: str, **settings: Any) -> Api:
        running = await _serve(database_url, **settings)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        started.append((running, channel))
        servers.append(running)
        return Api(
            job_service_pb2_grpc.JobServiceStub(channel),
            schedule_service_pb2_grpc.ScheduleServiceStub(channel),
            execution_service_pb2_grpc.ExecutionServiceStub(channel),
            event_service_pb2_grpc.EventServiceStub(channel),
            notification_service_pb2_grpc.NotificationServiceStub(channel),
            checkin_service_pb2_grpc.CheckInServiceStub(channel),
        )

    start.started = servers  # type: ignore[attr-defined]
    yield start
    for running, channel in started:
        await channel.close()
        await running.stop(grace=0)


async def _route(api: Api, route_id: str, **destination: Any) -> notification_pb2.NotificationRoute:
    created = await api.alerts.CreateNotificationRoute(
        notification_service_pb2.CreateNotificationRouteRequest(
            parent=NS, route_id=route_id, route=notification_pb2.NotificationRoute(**destination)
        )
    )
    return created.route


async def _rule(api: Api, rule_id: str, route: str, kinds: list[int], **select: Any) -> None:
    await api.alerts.CreateNotificationRule(
        notification_service_pb2.CreateNotificationRuleRequest(
            parent=NS,
            rule_id=rule_id,
            rule=notification_pb2.NotificationRule(route=route, kinds=kinds, **select),
        )
    )


async def _shell_job(api: Api, job_id: str, argv: list[str], **extra: Any) -> None:
    job = job_pb2.Job(executor="shell", **extra)
    job.parameters.update({"argv": argv})
    await api.jobs.CreateJob(job_service_pb2.CreateJobRequest(parent=NS, job_id=job_id, job=job))


async def _run_to_end(api: Api, job_id: str) -> execution_pb2.Execution:
    run = await api.jobs.RunJob(job_service_pb2.RunJobRequest(name=f"{NS}/jobs/{job_id}"))

    async def ended() -> execution_pb2.Execution | None:
        got = await api.executions.GetExecution(
            execution_service_pb2.GetExecutionRequest(name=run.execution.name)
        )
        done = got.execution.state not in (
            execution_pb2.EXECUTION_STATE_QUEUED,
            execution_pb2.EXECUTION_STATE_RUNNING,
        )
        return got.execution if done else None

    return await eventually(ended, 30, f"the run of {job_id} to end")


async def _deliveries(api: Api) -> list[notification_pb2.NotificationDelivery]:
    listed = await api.alerts.ListNotificationDeliveries(
        notification_service_pb2.ListNotificationDeliveriesRequest(parent=NS)
    )
    return list(listed.deliveries)


async def _states(api: Api, wanted: list[int]) -> bool:
    return [d.state for d in await _deliveries(api)] == wanted


async def test_one_signed_alert_per_incident_and_its_resolution(
    api_of: Any, database_url: str, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONWIRE_SECRET_HOOK_KEY", "hook-signing-key")
    api = await api_of(database_url, allow_private_networks=True)
    route = await _route(
        api,
        "ops-hook",
        webhook=notification_pb2.WebhookDestination(url=receiver.url("/hook"), signing_secret="HOOK_KEY"),
    )
    assert "hook-signing-key" not in str(route)
    await _rule(
        api,
        "flaky-failures",
        route.name,
        [notification_pb2.ALERT_KIND_FAILED, notification_pb2.ALERT_KIND_RECOVERED],
        job=f"{NS}/jobs/flaky",
    )
    flag = tmp_path / "ok"
    await _shell_job(api, "flaky", ["test", "-f", str(flag)])
    for _ in range(5):
        failed = await _run_to_end(api, "flaky")
        assert failed.state == execution_pb2.EXECUTION_STATE_FAILED
    first = await eventually(lambda: receiver.on("/hook"), 20, "the failure alert")
    flag.write_text("")
    assert (await _run_to_end(api, "flaky")).state == execution_pb2.EXECUTION_STATE_SUCCEEDED
    await eventually(lambda: len(receiver.on("/hook")) >= 2, 20, "the resolution")

    sent = receiver.on("/hook")
    assert len(sent) == 2, [r.json() for r in sent]  # five failures, one alert; one resolution
    trigger, resolution = sent[0].json(), sent[1].json()
    assert first[0].json() == trigger
    assert trigger["kind"] == "FAILED"
    assert trigger["resolve"] is False
    assert trigger["job"] == f"{NS}/jobs/flaky"
    assert resolution["kind"] == "RECOVERED"
    assert resolution["resolve"] is True
    assert resolution["incident"] == trigger["incident"]
    for request in sent:
        expected = "sha256=" + hmac.new(b"hook-signing-key", request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Cronwire-Signature"] == expected
        assert b"hook-signing-key" not in request.body

    incidents = (
        await api.alerts.ListIncidents(notification_service_pb2.ListIncidentsRequest(parent=NS))
    ).incidents
    assert len(incidents) == 1
    assert incidents[0].alerts == 5
    assert incidents[0].HasField("resolve_time")
    await eventually(
        lambda: _states(api, [notification_pb2.DELIVERY_STATE_DELIVERED] * 2), 10, "both recorded delivered"
    )
    deliveries = await _deliveries(api)
    assert [d.kind for d in deliveries] == [
        notification_pb2.ALERT_KIND_RECOVERED,
        notification_pb2.ALERT_KIND_FAILED,
    ]
    assert all(d.http_status == 200 for d in deliveries)


async def test_slack_and_pagerduty_payloads(
    api_of: Any, database_url: str, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONWIRE_SECRET_SLACK_URL", receiver.url("/slack/T000/B000/XXXX"))
    monkeypatch.setenv("CRONWIRE_SECRET_PD_KEY", "R0UTINGKEY")
    api = await api_of(database_url, allow_private_networks=True)
    slack = await _route(api, "chat", slack=notification_pb2.SlackDestination(url_secret="SLACK_URL"))
    pager = await _route(
        api,
        "pager",
        pagerduty=notification_pb2.PagerDutyDestination(
            routing_key_secret="PD_KEY", events_url=receiver.url("/pd")
        ),
    )
    for route in (slack, pager):
        await _rule(
            api,
            f"{route.name.rsplit('/', 1)[1]}-rule",
            route.name,
            [notification_pb2.ALERT_KIND_FAILED],
            labels={"team": "data"},
        )
    flag = tmp_path / "ok"
    await _shell_job(api, "etl", ["test", "-f", str(flag)], labels={"team": "data"})
    await _shell_job(api, "other", ["false"])  # no label: no rule selects it
    await _run_to_end(api, "other")
    await _run_to_end(api, "etl")
    await eventually(lambda: receiver.on("/pd") and receiver.on("/slack/T000/B000/XXXX"), 20, "both alerts")
    flag.write_text("")
    await _run_to_end(api, "etl")
    await eventually(lambda: len(receiver.on("/pd")) >= 2, 20, "the PagerDuty resolve")

    posted = receiver.on("/slack/T000/B000/XXXX")
    assert len(posted) == 1  # RECOVERED is not among the Slack rule's kinds
    message = posted[0].json()
    assert message["text"].startswith("cronwire Failed: ")
    fields = {f["title"]: f["value"] for f in message["attachments"][0]["fields"]}
    assert fields["Job"] == f"{NS}/jobs/etl"
    assert fields["Execution"].startswith(f"{NS}/executions/")

    trigger, resolve = (r.json() for r in receiver.on("/pd"))
    assert trigger["routing_key"] == "R0UTINGKEY"
    assert trigger["event_action"] == "trigger"
    assert trigger["payload"]["severity"] == "error"
    assert trigger["payload"]["class"] == "FAILED"
    assert trigger["payload"]["component"] == f"{NS}/jobs/etl"
    assert resolve == {
        "routing_key": "R0UTINGKEY",
        "event_action": "resolve",
        "dedup_key": trigger["dedup_key"],
    }
    assert all("other" not in r.body.decode() for r in receiver.got)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Mailbox:
    messages: list[Any] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)
    logins: list[tuple[str, str, bool]] = field(default_factory=list)

    # Set: the answer to the message instead of accepting it.
    refusal: str = ""

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((login, password, _over_tls(server, session)))
        return AuthResult(success=(login, password) == ("cronwire", "smtp-pass"))

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refusal:
            return self.refusal
        self.messages.append(envelope)
        self.tls.append(_over_tls(server, session))
        return "250 OK"


class _SessionsSMTP(SMTP):
    """aiosmtpd's server, telling its controller which connections are still open."""

    def __init__(self, controller: _MailServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._controller = controller

    def connection_made(self, transport: Any) -> None:
        self._controller.open_sessions.add(self)  # called again after STARTTLS: a set
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self._controller.open_sessions.discard(self)


class _MailServer(Controller):
    """A threaded aiosmtpd server whose test waits for its connections to close before stopping
    it: stopped with a connection still closing, aiosmtpd leaves the plain transport under a
    STARTTLS session unclosed, and its ResourceWarning fails whichever test the collector runs in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_sessions: set[SMTP] = set()

    def factory(self) -> SMTP:
        return _SessionsSMTP(self, self.handler, **self.SMTP_kwargs)

    async def closed(self) -> None:
        await eventually(lambda: not self.open_sessions, 10, "the SMTP connections closed")


def _over_tls(server: Any, session: Any) -> bool:
    """After STARTTLS (the session's `ssl`) or on an implicit TLS connection (its transport's)."""
    return session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None


def _trusted_tls_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A server TLS context for 127.0.0.1, its certificate issued by a test CA that the server's
    SMTP client trusts (SSL_CERT_FILE)."""
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    return server_context


async def test_mail_over_starttls_reaches_a_real_smtp_server(
    api_of: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_context = _trusted_tls_context(tmp_path, monkeypatch)
    monkeypatch.setenv("CRONWIRE_SECRET_SMTP_PASSWORD", "smtp-pass")
    mailbox = Mailbox()
    port = _free_port()
    smtp = _MailServer(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_context,
        require_starttls=True,
        auth_required=True,
        authenticator=mailbox.authenticate,
    )
    smtp.start()
    try:
        api = await api_of(database_url, allow_private_networks=True)
        mail = await _route(
            api,
            "mail",
            email=notification_pb2.EmailDestination(
                smtp_host="127.0.0.1",
                smtp_port=port,
                security=notification_pb2.EMAIL_SECURITY_STARTTLS,
                username="cronwire",
                password_secret="SMTP_PASSWORD",
                from_address="cronwire@example.com",
                to_addresses=["oncall@example.com"],
            ),
        )
        await _rule(api, "mail-failures", mail.name, [notification_pb2.ALERT_KIND_FAILED])
        await _shell_job(api, "nightly", ["sh", "-c", "echo boom >&2; exit 3"])
        await _run_to_end(api, "nightly")
        await eventually(lambda: mailbox.messages, 20, "the mail")
        await smtp.closed()
    finally:
        smtp.stop()
    envelope = mailbox.messages[0]
    assert mailbox.tls == [True]
    assert mailbox.logins == [("cronwire", "smtp-pass", True)]
    assert envelope.mail_from == "cronwire@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com"]
    text = envelope.content.decode()
    assert f"Subject: [cronwire] FAILED: {NS}/jobs/nightly" in text
    assert "exit code 3" in text
    await eventually(
        lambda: _states(api, [notification_pb2.DELIVERY_STATE_DELIVERED]), 10, "the mail recorded delivered"
    )


def _smtps_route(port: int) -> notification_pb2.EmailDestination:
    return notification_pb2.EmailDestination(
        smtp_host="127.0.0.1",
        smtp_port=port,
        security=notification_pb2.EMAIL_SECURITY_SMTPS,
        username="cronwire",
        password_secret="SMTP_PASSWORD",
        from_address="cronwire@example.com",
        to_addresses=["oncall@example.com", "backup@example.com"],
    )


def _smtps_server(mailbox: Mailbox, tls: ssl.SSLContext) -> _MailServer:
    """An SMTP server that speaks TLS from the first byte (SMTPS, port 465 style): no STARTTLS
    offered, the login taken over the implicit TLS connection only."""
    return _MailServer(
        mailbox,
        hostname="127.0.0.1",
        port=_free_port(),
        ssl_context=tls,
        # AUTH offered on this connection (aiosmtpd counts STARTTLS only as TLS; this connection
        # is TLS from its first byte): the test checks that the client logs in, and over TLS.
        auth_require_tls=False,
        authenticator=mailbox.authenticate,
    )


async def test_mail_over_smtps_reaches_a_real_smtp_server(
    api_of: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = _trusted_tls_context(tmp_path, monkeypatch)
    monkeypatch.setenv("CRONWIRE_SECRET_SMTP_PASSWORD", "smtp-pass")
    mailbox = Mailbox()
    smtp = _smtps_server(mailbox, tls)
    smtp.start()
    try:
        api = await api_of(database_url, allow_private_networks=True)
        mail = await _route(api, "mail", email=_smtps_route(smtp.port))
        assert mail.email.security == notification_pb2.EMAIL_SECURITY_SMTPS
        await _rule(api, "mail-failures", mail.name, [notification_pb2.ALERT_KIND_FAILED])
        await _shell_job(api, "nightly", ["sh", "-c", "echo boom >&2; exit 3"])
        await _run_to_end(api, "nightly")
        await eventually(lambda: mailbox.messages, 20, "the mail")
        delivered = await eventually(
            lambda: _states(api, [notification_pb2.DELIVERY_STATE_DELIVERED]), 10, "the mail recorded"
        )
        assert delivered
        record = (await _deliveries(api))[0]
        await smtp.closed()
    finally:
        smtp.stop()
    assert mailbox.tls == [True]
    # The password is the secret's value, sent once, over TLS.
    assert mailbox.logins == [("cronwire", "smtp-pass", True)]
    envelope = mailbox.messages[0]
    assert envelope.mail_from == "cronwire@example.com"
    assert envelope.rcpt_tos == ["oncall@example.com", "backup@example.com"]
    text = envelope.content.decode()
    assert f"Subject: [cronwire] FAILED: {NS}/jobs/nightly" in text
    assert "exit code 3" in text
    assert "smtp-pass" not in text
    assert record.attempts == 1
    assert "smtp-pass" not in str(record)


async def test_an_smtp_password_quoted_by_the_server_is_masked_in_the_delivery(
    api_of: Any, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server takes the login, then refuses the message with a reply that quotes the password:
    # the error recorded is the reply with the secret's value masked, and the send is retried.
    tls = _trusted_tls_context(tmp_path, monkeypatch)
    monkeypatch.setenv("CRONWIRE_SECRET_SMTP_PASSWORD", "smtp-pass")
    mailbox = Mailbox(refusal="451 4.7.0 try again later, user cronwire password smtp-pass")
    smtp = _smtps_server(mailbox, tls)
    smtp.start()
    try:
        api = await api_of(database_url, allow_private_networks=True)
        mail = await _route(api, "mail", email=_smtps_route(smtp.port))
        await _rule(api, "mail-failures", mail.name, [notification_pb2.ALERT_KIND_FAILED])
        await _shell_job(api, "nightly", ["false"])
        await _run_to_end(api, "nightly")

        async def attempted() -> notification_pb2.NotificationDelivery | None:
            found = await _deliveries(api)
            return found[0] if found and found[0].attempts >= 1 else None

        delivery = await eventually(attempted, 20, "a refused attempt")
        await smtp.closed()
    finally:
        smtp.stop()
    assert mailbox.logins == [("cronwire", "smtp-pass", True)]
    assert mailbox.messages == []
    assert delivery.state == notification_pb2.DELIVERY_STATE_PENDING  # a 4xx reply is retried
    assert "try again later, user cronwire password ***" in delivery.error
    assert "smtp-pass" not in str(delivery)


async def test_no_mail_and_no_password_without_the_starttls_the_route_requires(
    api_of: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONWIRE_SECRET_SMTP_PASSWORD", "smtp-pass")
    mailbox = Mailbox()
    port = _free_port()
    smtp = _MailServer(mailbox, hostname="127.0.0.1", port=port, auth_require_tls=False)  # no TLS offered
    smtp.start()
    try:
        api = await api_of(database_url, allow_private_networks=True)
        mail = await _route(
            api,
            "mail",
            email=notification_pb2.EmailDestination(
                smtp_host="127.0.0.1",
                smtp_port=port,
                username="cronwire",
                password_secret="SMTP_PASSWORD",
                from_address="cronwire@example.com",
                to_addresses=["oncall@example.com"],
            ),
        )
        await _rule(api, "mail-failures", mail.name, [notification_pb2.ALERT_KIND_FAILED])
        await _shell_job(api, "nightly", ["false"])
        await _run_to_end(api, "nightly")

        async def given_up() -> notification_pb2.NotificationDelivery | None:
            found = await _deliveries(api)
            return found[0] if found and found[0].state == notification_pb2.DELIVERY_STATE_FAILED else None

        failed = await eventually(given_up, 20, "the delivery given up")
        await smtp.closed()
    finally:
        smtp.stop()
    assert "STARTTLS is required" in failed.error
    assert failed.attempts == 1
    assert mailbox.messages == []
    assert mailbox.logins == []  # the password never went over the plain connection
    assert "smtp-pass" not in failed.error


async def test_nothing_is_sent_to_a_refused_address(
    api_of: Any, database_url: str, receiver: Receiver
) -> None:
    api = await api_of(database_url)  # private addresses not allowed
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _route(api, "direct", webhook=notification_pb2.WebhookDestination(url=receiver.url("/x")))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "loopback" in (refused.value.details() or "")
    # A name is resolved when sending: refused then, recorded, nothing sent.
    route = await _route(
        api, "by-name", webhook=notification_pb2.WebhookDestination(url=f"http://localhost:{receiver.port}/x")
    )
    await _rule(api, "all-failures", route.name, [notification_pb2.ALERT_KIND_FAILED])
    await _shell_job(api, "broken", ["false"])
    await _run_to_end(api, "broken")

    async def given_up() -> list[notification_pb2.NotificationDelivery] | None:
        found = await _deliveries(api)
        return found if found and found[0].state == notification_pb2.DELIVERY_STATE_FAILED else None

    failed = (await eventually(given_up, 20, "the refused delivery"))[0]
    assert "refused" in failed.error
    assert "loopback" in failed.error
    assert failed.attempts == 1  # a refusal is not retried
    assert receiver.got == []


def _deadline_schedule(schedule_id: str, job_id: str) -> schedule_pb2.Schedule:
    schedule = schedule_pb2.Schedule(job=f"{NS}/jobs/{job_id}")
    schedule.trigger.interval.every.FromSeconds(2)
    schedule.deadlines.start_within.CopyFrom(duration_pb2.Duration(seconds=1))
    schedule.deadlines.max_duration.CopyFrom(duration_pb2.Duration(seconds=60))
    return schedule


async def _late_alert(api: Api, receiver: Receiver, job_id: str, **job: Any) -> None:
    route = await _route(api, "hook", webhook=notification_pb2.WebhookDestination(url=receiver.url("/late")))
    await _rule(
        api, "late", route.name, [notification_pb2.ALERT_KIND_LATE], schedule=f"{NS}/schedules/every-2s"
    )
    await _shell_job(api, job_id, ["true"], **job)
    created = await api.schedules.CreateSchedule(
        schedule_service_pb2.CreateScheduleRequest(
            parent=NS, schedule_id="every-2s", schedule=_deadline_schedule("every-2s", job_id)
        )
    )
    assert created.schedule.deadlines.start_within.seconds == 1
    alert = (await eventually(lambda: receiver.on("/late"), 30, "the LATE alert"))[0].json()
    assert alert["kind"] == "LATE"
    assert alert["schedule"] == f"{NS}/schedules/every-2s"
    missed = await api.events.ListEvents(
        event_service_pb2.ListEventsRequest(parent=NS, event_types=[event_pb2.EVENT_TYPE_DEADLINE_MISSED])
    )
    assert missed.events
    event = missed.events[0]
    assert event.resource == f"{NS}/schedules/every-2s"
    assert event.deadline_miss.kind == event_pb2.DEADLINE_KIND_START_WITHIN
    assert event.deadline_miss.deadline.ToSeconds() == event.deadline_miss.scheduled_time.ToSeconds() + 1
    got = await api.schedules.GetSchedule(
        schedule_service_pb2.GetScheduleRequest(name=f"{NS}/schedules/every-2s")
    )
    assert got.schedule.stats.deadlines_missed >= 1  # counted in the schedule's statistics
    await eventually(lambda: len(receiver.on("/late")) >= 1, 5, "at least one")
    # Late again and again: one incident, one notification.
    assert len(receiver.on("/late")) == 1


async def test_late_when_every_worker_slot_is_busy(
    api_of: Any, database_url: str, receiver: Receiver
) -> None:
    api = await api_of(database_url, allow_private_networks=True, worker_slots=1)
    await _shell_job(api, "hog", ["sleep", "60"])
    await api.jobs.RunJob(job_service_pb2.RunJobRequest(name=f"{NS}/jobs/hog"))
    # A job with a concurrency limit: its ticks wait QUEUED for a slot (ticks the local pool takes
    # ahead of their time are recorded RUNNING while they wait, and cannot be told late).
    await _late_alert(api, receiver, "report", max_concurrency=1)


async def test_late_when_no_worker_runs(api_of: Any, database_url: str, receiver: Receiver) -> None:
    api = await api_of(database_url, allow_private_networks=True, roles=frozenset({"api", "dispatcher"}))
    await _late_alert(api, receiver, "report")
    # The SDK reads the miss off the event.
    async with cronwire.AsyncClient(f"127.0.0.1:{api_of.started[-1].port}", namespace="alerts") as client:
        page = await client.list_events(event_types=[cronwire.EventType.DEADLINE_MISSED])
    miss = page.items[0].deadline_miss
    assert miss is not None
    assert miss.kind is cronwire.DeadlineKind.START_WITHIN
    assert miss.execution.startswith(f"{NS}/executions/")
    assert miss.deadline is not None
    assert miss.scheduled_time is not None
    assert (miss.deadline - miss.scheduled_time).total_seconds() == 1


async def test_a_missed_check_in_alerts_once_and_a_ping_resolves_it(
    api_of: Any, database_url: str, receiver: Receiver
) -> None:
    api = await api_of(database_url, allow_private_networks=True)
    check_ins = api.check_ins
    route = await _route(api, "hook", webhook=notification_pb2.WebhookDestination(url=receiver.url("/ci")))
    await _rule(
        api,
        "nightly-etl",
        route.name,
        [notification_pb2.ALERT_KIND_CHECKIN_MISSED, notification_pb2.ALERT_KIND_RECOVERED],
        labels={"team": "data"},
    )
    check_in = checkin_pb2.CheckIn(labels={"team": "data"})
    check_in.trigger.interval.every.FromSeconds(1)
    check_in.grace.FromSeconds(1)
    created = await check_ins.CreateCheckIn(
        checkin_service_pb2.CreateCheckInRequest(parent=NS, check_in_id="etl", check_in=check_in)
    )
    token = created.token
    assert token
    assert created.check_in.HasField("next_expected_time")

    alert = (await eventually(lambda: receiver.on("/ci"), 20, "the CHECKIN_MISSED alert"))[0].json()
    assert alert["kind"] == "CHECKIN_MISSED"
    assert alert["check_in"] == f"{NS}/checkIns/etl"
    missed = await api.events.ListEvents(
        event_service_pb2.ListEventsRequest(parent=NS, event_types=[event_pb2.EVENT_TYPE_CHECKIN_MISSED])
    )
    assert missed.events[0].resource == f"{NS}/checkIns/etl"
    assert missed.events[0].deadline_miss.kind == event_pb2.DEADLINE_KIND_CHECK_IN_GRACE

    started = await check_ins.CheckIn(
        checkin_service_pb2.CheckInRequest(token=token, kind=checkin_pb2.CHECK_IN_PING_KIND_START)
    )
    assert started.check_in.last_ping_kind == checkin_pb2.CHECK_IN_PING_KIND_START
    ended = await check_ins.CheckIn(checkin_service_pb2.CheckInRequest(token=token))
    assert ended.check_in.last_ping_kind == checkin_pb2.CHECK_IN_PING_KIND_SUCCESS
    assert ended.check_in.HasField("last_duration")
    assert ended.check_in.missed >= 1
    resolved = await eventually(
        lambda: [r for r in receiver.on("/ci") if r.json()["resolve"]], 20, "the resolve"
    )
    assert resolved[0].json()["incident"] == alert["incident"]
    # Missed again and again before the ping: one incident, one alert.
    assert len([r for r in receiver.on("/ci") if not r.json()["resolve"]]) == 1

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await check_ins.CheckIn(checkin_service_pb2.CheckInRequest(token="ci_not-a-token"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_check_in_pinged_over_http_with_its_token_alone(api_of: Any, database_url: str) -> None:
    api = await api_of(database_url, http_address="127.0.0.1:0")
    check_in = checkin_pb2.CheckIn()
    check_in.trigger.cron.expression = "0 2 * * *"
    created = await api.check_ins.CreateCheckIn(
        checkin_service_pb2.CreateCheckInRequest(parent=NS, check_in_id="backup", check_in=check_in)
    )
    running = api_of.started[-1]
    base = f"http://127.0.0.1:{running.http.port}/ping"
    async with httpx.AsyncClient(timeout=10.0) as http:
        assert (await http.post(f"{base}/{created.token}/start")).status_code == 200
        ended = await http.post(f"{base}/{created.token}")
        assert (ended.status_code, ended.text) == (200, "OK\n")
        assert (await http.post(f"{base}/ci_not-a-token")).status_code == 404
        assert (await http.get(f"{base}/{created.token}")).status_code == 405  # a ping is a POST
    got = await api.check_ins.GetCheckIn(checkin_service_pb2.GetCheckInRequest(name=f"{NS}/checkIns/backup"))
    assert got.check_in.last_ping_kind == checkin_pb2.CHECK_IN_PING_KIND_SUCCESS
    assert got.check_in.HasField("last_duration")


async def test_a_schedule_too_long_tick_after_tick_is_one_incident_until_a_tick_keeps_its_deadline(
    api_of: Any, database_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    api = await api_of(database_url, allow_private_networks=True)
    route = await _route(api, "hook", webhook=notification_pb2.WebhookDestination(url=receiver.url("/slow")))
    await _rule(
        api,
        "slow",
        route.name,
        [notification_pb2.ALERT_KIND_TOO_LONG, notification_pb2.ALERT_KIND_RECOVERED],
        schedule=f"{NS}/schedules/slow",
    )
    fast = tmp_path / "fast"
    await _shell_job(api, "etl", ["sh", "-c", f"test -f {fast} || sleep 4"])
    schedule = schedule_pb2.Schedule(job=f"{NS}/jobs/etl")
    schedule.trigger.interval.every.FromSeconds(1)
    schedule.deadlines.max_duration.FromSeconds(1)
    await api.schedules.CreateSchedule(
        schedule_service_pb2.CreateScheduleRequest(parent=NS, schedule_id="slow", schedule=schedule)
    )

    async def misses(count: int) -> bool:
        listed = await api.events.ListEvents(
            event_service_pb2.ListEventsRequest(parent=NS, event_types=[event_pb2.EVENT_TYPE_DEADLINE_MISSED])
        )
        return len(listed.events) >= count

    await eventually(lambda: misses(3), 30, "three ticks too long")
    # Each late run ended SUCCEEDED, and none of them resolved the incident.
    await eventually(lambda: receiver.on("/slow"), 10, "the TOO_LONG alert")
    incidents = (
        await api.alerts.ListIncidents(notification_service_pb2.ListIncidentsRequest(parent=NS))
    ).incidents
    assert len(incidents) == 1
    assert not incidents[0].HasField("resolve_time")
    assert incidents[0].alerts >= 2
    fast.write_text("")
    resolved = await eventually(
        lambda: [r for r in receiver.on("/slow") if r.json()["resolve"]], 30, "the resolve by a tick in time"
    )
    assert resolved[0].json()["kind"] == "RECOVERED"
    assert [r.json()["kind"] for r in receiver.on("/slow")][:1] == ["TOO_LONG"]
    assert len([r for r in receiver.on("/slow") if not r.json()["resolve"]]) == 1


async def test_a_route_update_masked_into_its_destination_keeps_the_rest(
    api_of: Any, database_url: str
) -> None:
    api = await api_of(database_url)
    mail = await _route(
        api,
        "mail",
        email=notification_pb2.EmailDestination(
            smtp_host="smtp.example.com",
            username="cronwire",
            password_secret="SMTP_PASSWORD",
            from_address="cronwire@example.com",
            to_addresses=["oncall@example.com"],
        ),
    )

    async def update(
        route: notification_pb2.NotificationRoute, *paths: str
    ) -> notification_pb2.NotificationRoute:
        request = notification_service_pb2.UpdateNotificationRouteRequest(
            route=route, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
        )
        return (await api.alerts.UpdateNotificationRoute(request)).route

    # A path into the destination held changes that field only (AIP-161).
    rotated = await update(
        notification_pb2.NotificationRoute(
            name=mail.name, email=notification_pb2.EmailDestination(password_secret="SMTP_PASSWORD_2")
        ),
        "email.password_secret",
    )
    assert rotated.email.password_secret == "SMTP_PASSWORD_2"
    assert (rotated.email.smtp_host, rotated.email.username) == ("smtp.example.com", "cronwire")
    assert list(rotated.email.to_addresses) == ["oncall@example.com"]
    # The destination named whole replaces it, of the same kind or another.
    whole = await update(
        notification_pb2.NotificationRoute(
            name=mail.name,
            email=notification_pb2.EmailDestination(
                smtp_host="mail.example.com", from_address="a@example.com", to_addresses=["b@example.com"]
            ),
        ),
        "email",
    )
    assert (whole.email.smtp_host, whole.email.username, whole.email.password_secret) == (
        "mail.example.com",
        "",
        "",
    )
    paged = await update(
        notification_pb2.NotificationRoute(
            name=mail.name, pagerduty=notification_pb2.PagerDutyDestination(routing_key_secret="PD_KEY")
        ),
        "pagerduty",
    )
    assert paged.WhichOneof("destination") == "pagerduty"
    # A path into another kind of destination starts that destination empty: refused, nothing stored.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await update(
            notification_pb2.NotificationRoute(
                name=mail.name, email=notification_pb2.EmailDestination(password_secret="SMTP_PASSWORD")
            ),
            "email.password_secret",
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = await api.alerts.GetNotificationRoute(
        notification_service_pb2.GetNotificationRouteRequest(name=mail.name)
    )
    assert got.route == paged


async def test_a_namespace_holds_a_bounded_number_of_routes(
    api_of: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_notifications, "MAX_PER_NAMESPACE", 2)
    api = await api_of(database_url)
    for route_id in ("one", "two"):
        await _route(api, route_id, slack=notification_pb2.SlackDestination(url_secret="SLACK_URL"))
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await _route(api, "three", slack=notification_pb2.SlackDestination(url_secret="SLACK_URL"))
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ROUTE_LIMIT_REACHED" in str(full.value.trailing_metadata())


@pytest.mark.postgres
async def test_two_replicas_alert_once(api_of: Any, fresh_database_url: Any, receiver: Receiver) -> None:
    # Both replicas run the notifier, the sender and the deadline watch on one database; no
    # worker runs anywhere, so every tick is late.
    url = fresh_database_url("postgres")
    roles = frozenset({"api", "dispatcher"})
    first = await api_of(url, allow_private_networks=True, roles=roles)
    second = await api_of(url, allow_private_networks=True, roles=roles)
    route = await _route(first, "hook", webhook=notification_pb2.WebhookDestination(url=receiver.url("/r")))
    await _rule(second, "late", route.name, [notification_pb2.ALERT_KIND_LATE])
    await _shell_job(first, "report", ["true"])
    schedule = schedule_pb2.Schedule(job=f"{NS}/jobs/report")
    schedule.trigger.interval.every.FromSeconds(1)
    schedule.deadlines.start_within.FromSeconds(1)
    schedule.overlap_policy = schedule_pb2.OVERLAP_POLICY_ALLOW_ALL  # every tick queued, every one late
    await second.schedules.CreateSchedule(
        schedule_service_pb2.CreateScheduleRequest(parent=NS, schedule_id="often", schedule=schedule)
    )

    async def late_ticks(count: int) -> list[event_pb2.Event] | None:
        listed = await first.events.ListEvents(
            event_service_pb2.ListEventsRequest(parent=NS, event_types=[event_pb2.EVENT_TYPE_DEADLINE_MISSED])
        )
        return list(listed.events) if len(listed.events) >= count else None

    missed = await eventually(lambda: late_ticks(4), 30, "four late ticks")
    await eventually(lambda: receiver.on("/r"), 10, "the LATE alert")
    # Each late tick recorded once, by whichever replica saw it first.
    ticks = [e.deadline_miss.scheduled_time.ToDatetime() for e in missed]
    assert len(ticks) == len(set(ticks))
    # And one incident, one notification, however many replicas read the events.
    await eventually(lambda: late_ticks(6), 30, "more late ticks")
    assert len(receiver.on("/r")) == 1
    incidents = (
        await first.alerts.ListIncidents(notification_service_pb2.ListIncidentsRequest(parent=NS))
    ).incidents
    assert len(incidents) == 1
    assert incidents[0].alerts >= 4


async def test_a_secret_url_never_shows_in_a_delivery_error(
    api_of: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Slack URL is a credential: when the call fails with an error that quotes the URL (here:
    # not an http URL; a local address, so no name is looked up), the recorded error has it masked.
    monkeypatch.setenv("CRONWIRE_SECRET_SLACK_URL", "ftp://127.0.0.1/services/T0/B0/S3CRETPATH")
    api = await api_of(database_url, allow_private_networks=True)
    route = await _route(api, "chat", slack=notification_pb2.SlackDestination(url_secret="SLACK_URL"))
    await _rule(api, "all", route.name, [notification_pb2.ALERT_KIND_FAILED])
    await _shell_job(api, "broken", ["false"])
    await _run_to_end(api, "broken")

    async def attempted() -> notification_pb2.NotificationDelivery | None:
        found = await _deliveries(api)
        return found[0] if found and found[0].attempts >= 1 else None

    delivery = await eventually(attempted, 20, "a failed attempt")
    assert delivery.state == notification_pb2.DELIVERY_STATE_PENDING  # retried with backoff
    assert delivery.HasField("next_attempt_time")
    assert "cannot call ***" in delivery.error
    assert "S3CRETPATH" not in delivery.error


async def _incidents(api: Api) -> list[notification_pb2.Incident]:
    listed = await api.alerts.ListIncidents(notification_service_pb2.ListIncidentsRequest(parent=NS))
    return list(listed.incidents)


async def _passed(api: Api, receiver: Receiver, marker: str) -> None:
    """Wait until the notifier has read every event so far: a job failing now is read after
    them, and its alert (to a route of its own) is sent once the events before it were read."""
    route = await _route(
        api, marker, webhook=notification_pb2.WebhookDestination(url=receiver.url(f"/{marker}"))
    )
    await _rule(api, marker, route.name, [notification_pb2.ALERT_KIND_FAILED], job=f"{NS}/jobs/{marker}")
    await _shell_job(api, marker, ["false"])
    await _run_to_end(api, marker)
    await eventually(lambda: receiver.on(f"/{marker}"), 20, "the marker's alert")


async def _all_delivered(api: Api) -> list[notification_pb2.NotificationDelivery]:
    async def done() -> list[notification_pb2.NotificationDelivery] | None:
        found = await _deliveries(api)
        return found if all(d.state == notification_pb2.DELIVERY_STATE_DELIVERED for d in found) else None

    return await eventually(done, 20, "every delivery recorded delivered")


async def _job_failing_to_three_routes(api: Api, receiver: Receiver, job_id: str) -> dict[str, Any]:
    """A failing job, a rule for it to a webhook that takes RECOVERED, one to PagerDuty, one to a
    webhook that does not; the job fails once; the three triggers."""
    hook = await _route(api, "hook", webhook=notification_pb2.WebhookDestination(url=receiver.url("/hook")))
    quiet = await _route(
        api, "quiet", webhook=notification_pb2.WebhookDestination(url=receiver.url("/quiet"))
    )
    pager = await _route(
        api,
        "pager",
        pagerduty=notification_pb2.PagerDutyDestination(
            routing_key_secret="PD_KEY", events_url=receiver.url("/pd")
        ),
    )
    job = f"{NS}/jobs/{job_id}"
    failed, recovered = notification_pb2.ALERT_KIND_FAILED, notification_pb2.ALERT_KIND_RECOVERED
    await _rule(api, "to-hook", hook.name, [failed, recovered], job=job)
    await _rule(api, "to-pager", pager.name, [failed], job=job)
    await _rule(api, "to-quiet", quiet.name, [failed], job=job)
    await _shell_job(api, job_id, ["false"])
    assert (await _run_to_end(api, job_id)).state == execution_pb2.EXECUTION_STATE_FAILED
    await eventually(
        lambda: receiver.on("/hook") and receiver.on("/pd") and receiver.on("/quiet"), 20, "the three alerts"
    )
    assert [i.resolve_reason for i in await _incidents(api)] == ["", "", ""]
    return {path: receiver.on(path)[0].json() for path in ("/hook", "/pd", "/quiet")}


async def test_deleting_a_job_resolves_its_open_incidents_once(
    api_of: Any, database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONWIRE_SECRET_PD_KEY", "R0UTINGKEY")
    api = await api_of(database_url, allow_private_networks=True)
    triggers = await _job_failing_to_three_routes(api, receiver, "doomed")

    await api.jobs.DeleteJob(job_service_pb2.DeleteJobRequest(name=f"{NS}/jobs/doomed"))
    await eventually(
        lambda: len(receiver.on("/hook")) >= 2 and len(receiver.on("/pd")) >= 2, 20, "the resolves"
    )
    await _passed(api, receiver, "marker")

    resolved = receiver.on("/hook")[1].json()
    assert (resolved["kind"], resolved["resolve"]) == ("RECOVERED", True)
    assert resolved["incident"] == triggers["/hook"]["incident"]
    assert resolved["summary"] == f"resolved: {NS}/jobs/doomed was deleted after 1 alert(s)"
    assert resolved["job"] == f"{NS}/jobs/doomed"
    assert [r.json() for r in receiver.on("/pd")][1] == {
        "routing_key": "R0UTINGKEY",
        "event_action": "resolve",
        "dedup_key": triggers["/pd"]["dedup_key"],
    }
    # Once each, and a route whose rule does not take RECOVERED gets no resolve (as on a success).
    assert (len(receiver.on("/hook")), len(receiver.on("/pd")), len(receiver.on("/quiet"))) == (2, 2, 1)
    incidents = [i for i in await _incidents(api) if i.job == f"{NS}/jobs/doomed"]
    assert len(incidents) == 3
    assert all(i.HasField("resolve_time") for i in incidents)
    assert {i.resolve_reason for i in incidents} == {f"{NS}/jobs/doomed was deleted"}
    deliveries = await _all_delivered(api)
    assert sorted(d.kind for d in deliveries if d.route.endswith(("/hook", "/pager"))) == sorted(
        [notification_pb2.ALERT_KIND_FAILED, notification_pb2.ALERT_KIND_RECOVERED] * 2
    )

    # A job of the same name created again starts with no open incident.
    await _shell_job(api, "doomed", ["true"])
    assert not (
        await api.alerts.ListIncidents(
            notification_service_pb2.ListIncidentsRequest(parent=NS, job=f"{NS}/jobs/doomed", open_only=True)
        )
    ).incidents


async def test_deleting_a_schedule_resolves_its_incidents_and_not_its_jobs_others(
    api_of: Any, database_url: str, receiver: Receiver
) -> None:
    api = await api_of(database_url, allow_private_networks=True)
    route = await _route(api, "hook", webhook=notification_pb2.WebhookDestination(url=receiver.url("/hook")))
    await _rule(
        api,
        "etl",
        route.name,
        [notification_pb2.ALERT_KIND_FAILED, notification_pb2.ALERT_KIND_RECOVERED],
        job=f"{NS}/jobs/etl",
    )
    await _shell_job(api, "etl", ["false"])
    await _run_to_end(api, "etl")  # run now: an incident of the job and no schedule
    schedule = schedule_pb2.Schedule(job=f"{NS}/jobs/etl")
    schedule.trigger.interval.every.FromSeconds(1)
    await api.schedules.CreateSchedule(
        schedule_service_pb2.CreateScheduleRequest(parent=NS, schedule_id="often", schedule=schedule)
    )
    await eventually(
        lambda: [r for r in receiver.on("/hook") if r.json()["schedule"] == f"{NS}/schedules/often"],
        20,
        "the alert of a tick",
    )

    await api.schedules.DeleteSchedule(
        schedule_service_pb2.DeleteScheduleRequest(name=f"{NS}/schedules/often")
    )
    resolve = await eventually(
        lambda: [r.json() for r in receiver.on("/hook") if r.json()["resolve"]], 20, "the resolve"
    )
    # Ticks still running when it went fail after it: they open no incident that nothing resolves.
    await _passed(api, receiver, "marker")
    assert len(resolve) == 1
    assert resolve[0]["schedule"] == f"{NS}/schedules/often"
    assert resolve[0]["summary"].startswith(f"resolved: {NS}/schedules/often was deleted after ")
    by_schedule = {i.schedule: i for i in await _incidents(api) if i.job == f"{NS}/jobs/etl"}
    assert set(by_schedule) == {"", f"{NS}/schedules/often"}
    assert by_schedule[f"{NS}/schedules/often"].resolve_reason == f"{NS}/schedules/often was deleted"
    assert not by_schedule[""].HasField("resolve_time")  # the job's run-now failures go on
    assert len([r for r in receiver.on("/hook") if r.json()["resolve"]]) == 1


async def test_deleting_a_check_in_resolves_its_incident(
    api_of: Any, database_url: str, receiver: Receiver
) -> None:
    api = await api_of(database_url, allow_private_networks=True)
    route = await _route(api, "hook", webhook=notification_pb2.WebhookDestination(url=receiver.url("/ci")))
    await _rule(
        api,
        "backups",
        route.name,
        [notification_pb2.ALERT_KIND_CHECKIN_MISSED, notification_pb2.ALERT_KIND_RECOVERED],
    )
    check_in = checkin_pb2.CheckIn()
    check_in.trigger.interval.every.FromSeconds(1)
    check_in.grace.FromSeconds(1)
    await api.check_ins.CreateCheckIn(
        checkin_service_pb2.CreateCheckInRequest(parent=NS, check_in_id="backup", check_in=check_in)
    )
    alert = (await eventually(lambda: receiver.on("/ci"), 20, "the CHECKIN_MISSED alert"))[0].json()

    await api.check_ins.DeleteCheckIn(checkin_service_pb2.DeleteCheckInRequest(name=f"{NS}/checkIns/backup"))
    resolve = (await eventually(lambda: receiver.on("/ci")[1:], 20, "the resolve"))[0].json()
    await _passed(api, receiver, "marker")
    assert len(receiver.on("/ci")) == 2
    assert (resolve["resolve"], resolve["incident"]) == (True, alert["incident"])
    assert resolve["check_in"] == f"{NS}/checkIns/backup"
    assert resolve["summary"].startswith(f"resolved: {NS}/checkIns/backup was deleted after ")
    (incident,) = [i for i in await _incidents(api) if i.check_in]
    assert incident.resolve_reason == f"{NS}/checkIns/backup was deleted"
    deleted = await api.events.ListEvents(
        event_service_pb2.ListEventsRequest(parent=NS, event_types=[event_pb2.EVENT_TYPE_CHECKIN_DELETED])
    )
    assert [e.resource for e in deleted.events] == [f"{NS}/checkIns/backup"]


async def test_two_replicas_resolve_a_deleted_jobs_incident_once(
    api_of: Any, fresh_database_url: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONWIRE_SECRET_PD_KEY", "R0UTINGKEY")
    url = fresh_database_url("postgres")
    first = await api_of(url, allow_private_networks=True)
    second = await api_of(url, allow_private_networks=True)
    triggers = await _job_failing_to_three_routes(first, receiver, "doomed")
    await second.jobs.DeleteJob(job_service_pb2.DeleteJobRequest(name=f"{NS}/jobs/doomed"))
    await eventually(lambda: len(receiver.on("/pd")) >= 2, 20, "the PagerDuty resolve")
    await _passed(second, receiver, "marker")
    await _all_delivered(first)
    assert (len(receiver.on("/hook")), len(receiver.on("/pd")), len(receiver.on("/quiet"))) == (2, 2, 1)
    assert receiver.on("/pd")[1].json()["dedup_key"] == triggers["/pd"]["dedup_key"]


async def test_a_resolve_goes_to_the_route_the_incident_was_sent_to_after_its_rule_moved(
    api_of: Any, database_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    api = await api_of(database_url, allow_private_networks=True)
    first = await _route(
        api, "first", webhook=notification_pb2.WebhookDestination(url=receiver.url("/first"))
    )
    second = await _route(
        api, "second", webhook=notification_pb2.WebhookDestination(url=receiver.url("/second"))
    )
    failed, recovered = notification_pb2.ALERT_KIND_FAILED, notification_pb2.ALERT_KIND_RECOVERED
    await _rule(api, "flaky", first.name, [failed, recovered], job=f"{NS}/jobs/flaky")
    flag = tmp_path / "ok"
    await _shell_job(api, "flaky", ["test", "-f", str(flag)])
    await _run_to_end(api, "flaky")
    trigger = (await eventually(lambda: receiver.on("/first"), 20, "the failure alert"))[0].json()

    # The rule moves to the other route while its incident is open.
    await api.alerts.UpdateNotificationRule(
        notification_service_pb2.UpdateNotificationRuleRequest(
            rule=notification_pb2.NotificationRule(name=f"{NS}/notificationRules/flaky", route=second.name),
            update_mask=field_mask_pb2.FieldMask(paths=["route"]),
        )
    )
    flag.write_text("")
    await _run_to_end(api, "flaky")
    resolution = (await eventually(lambda: receiver.on("/first")[1:], 20, "the resolution"))[0].json()
    assert (resolution["kind"], resolution["resolve"]) == ("RECOVERED", True)
    assert resolution["incident"] == trigger["incident"]
    await _passed(api, receiver, "marker")
    assert receiver.on("/second") == []


async def test_deleting_a_rule_resolves_its_open_incidents_with_their_resolves(
    api_of: Any, database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRONWIRE_SECRET_PD_KEY", "R0UTINGKEY")
    api = await api_of(database_url, allow_private_networks=True)
    triggers = await _job_failing_to_three_routes(api, receiver, "watched")

    for rule in ("to-hook", "to-pager", "to-quiet"):
        await api.alerts.DeleteNotificationRule(
            notification_service_pb2.DeleteNotificationRuleRequest(name=f"{NS}/notificationRules/{rule}")
        )
    await eventually(
        lambda: len(receiver.on("/hook")) >= 2 and len(receiver.on("/pd")) >= 2, 20, "the resolves"
    )
    resolved = receiver.on("/hook")[1].json()
    assert (resolved["kind"], resolved["resolve"]) == ("RECOVERED", True)
    assert resolved["incident"] == triggers["/hook"]["incident"]
    assert resolved["summary"] == f"resolved: {NS}/notificationRules/to-hook was deleted after 1 alert(s)"
    assert receiver.on("/pd")[1].json() == {
        "routing_key": "R0UTINGKEY",
        "event_action": "resolve",
        "dedup_key": triggers["/pd"]["dedup_key"],
    }
    await _passed(api, receiver, "marker")
    # Once each; the route whose rule did not take RECOVERED gets none, as on a success.
    assert (len(receiver.on("/hook")), len(receiver.on("/pd")), len(receiver.on("/quiet"))) == (2, 2, 1)
    incidents = [i for i in await _incidents(api) if i.job == f"{NS}/jobs/watched"]
    assert {i.resolve_reason for i in incidents} == {
        f"{NS}/notificationRules/{rule} was deleted" for rule in ("to-hook", "to-pager", "to-quiet")
    }
