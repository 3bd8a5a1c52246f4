"""Sending one notification to one route: a signed webhook, a Slack-compatible incoming webhook,
PagerDuty Events API v2, or mail over SMTP. One attempt per call; `notifier` retries.

Where it may go: every HTTP destination is called through the `http` executor's runner, so the
server's address policy applies as to jobs and callbacks (names resolved once, every address
checked, the call pinned to a checked address, no redirects, no proxies); the SMTP server's
addresses are checked against the same policy and the connection is made to a checked address.
A refused address is a failed delivery, and nothing is sent.

What it may leak: secrets are resolved here, at send time, for the route's namespace only, and
every value resolved is masked (`***`) in the error recorded; the alert itself holds no secret.
Mail headers are built by `email.message.EmailMessage`, which refuses line breaks in them, from
addresses validated at create; the recipients are the route's, never the alert's.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from ipaddress import ip_address
from typing import Any

from cronwire_server.callbacks import SIGNATURE_HEADER, signature
from cronwire_server.core.alerts import (
    PAGERDUTY_EVENTS_URL,
    Delivery,
    EmailDestination,
    EmailSecurity,
    NotificationRoute,
    PagerDutyDestination,
    SlackDestination,
    WebhookDestination,
)
from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.http_runner import HttpRunner
from cronwire_server.executors.runtime import RunRequest
from cronwire_server.secrets import Redactor, SecretError, Secrets

TIMEOUT = timedelta(seconds=10)
RESPONSE_BYTES = 4096
USER_AGENT_SOURCE = "cronwire"


@dataclass(frozen=True)
class Sent:
    delivered: bool
    http_status: int | None = None
    error: str = ""
    # A retry cannot help (an address refused, a secret undefined, a 4xx other than 429).
    permanent: bool = False


def kind_of(route: NotificationRoute) -> str:
    d = route.destination
    if isinstance(d, WebhookDestination):
        return "webhook"
    if isinstance(d, SlackDestination):
        return "slack"
    if isinstance(d, PagerDutyDestination):
        return "pagerduty"
    return "email"


def webhook_body(alert: dict[str, Any]) -> dict[str, Any]:
    return {"type": "cronwire.alert", **alert}


def slack_body(alert: dict[str, Any]) -> dict[str, Any]:
    title = "Resolved" if alert["resolve"] else alert["kind"].replace("_", " ").title()
    fields = [
        {"title": label, "value": alert[key], "short": True}
        for label, key in (
            ("Job", "job"),
            ("Schedule", "schedule"),
            ("Execution", "execution"),
            ("Scheduled time", "scheduled_time"),
            ("Incident", "incident"),
            ("Rule", "rule"),
        )
        if alert.get(key)
    ]
    return {
        "text": f"cronwire {title}: {alert['summary']}",
        "attachments": [
            {
                "color": "good" if alert["resolve"] else "danger",
                "fallback": alert["summary"],
                "fields": fields,
            }
        ],
    }


def pagerduty_body(alert: dict[str, Any], routing_key: str) -> dict[str, Any]:
    if alert["resolve"]:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": alert["dedup_key"]}
    severity = "warning" if alert["kind"] in ("LATE", "TOO_LONG") else "error"
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": alert["dedup_key"],
        "client": "cronwire",
        "payload": {
            "summary": alert["summary"][:1024],
            "source": alert["schedule"] or alert["job"] or alert["namespace"],
            "severity": severity,
            "component": alert["job"],
            "group": alert["namespace"],
            "class": alert["kind"],
            "custom_details": {
                k: alert[k]
                for k in ("job", "schedule", "execution", "scheduled_time", "incident", "rule")
                if alert.get(k)
            },
        },
    }


def email_message(alert: dict[str, Any], destination: EmailDestination) -> EmailMessage:
    message = EmailMessage()
    title = "RESOLVED" if alert["resolve"] else alert["kind"]
    message["Subject"] = f"[cronwire] {title}: {alert['job'] or alert['namespace']}"
    message["From"] = destination.from_address
    message["To"] = ", ".join(destination.to_addresses)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="cronwire.invalid")
    lines = [alert["summary"], ""]
    for label, key in (
        ("Job", "job"),
        ("Schedule", "schedule"),
        ("Execution", "execution"),
        ("Scheduled time", "scheduled_time"),
        ("Incident", "incident"),
        ("Rule", "rule"),
    ):
        if alert.get(key):
            lines.append(f"{label}: {alert[key]}")
    message.set_content("\n".join(lines) + "\n")
    return message


class Sender:
    """Sends deliveries under the server's address policy, with its secrets."""

    def __init__(self, http: HttpRunner, secrets: Secrets, *, timeout: timedelta = TIMEOUT) -> None:
        self._http = http
        self._secrets = secrets
        self._timeout = timeout

    async def send(self, delivery: Delivery, route: NotificationRoute) -> Sent:
        revealed: list[str] = []
        try:
            return await self._send(delivery, route, revealed)
        except SecretError as error:
            return Sent(False, error=str(error), permanent=True)
        finally:
            revealed.clear()

    def _secret(self, name: str, namespace: str, revealed: list[str]) -> str:
        value = self._secrets.value(name, namespace)
        revealed.append(value)
        return value

    async def _send(self, delivery: Delivery, route: NotificationRoute, revealed: list[str]) -> Sent:
        d = route.destination
        alert = delivery.alert
        ns = route.namespace
        if isinstance(d, WebhookDestination):
            body = json.dumps(webhook_body(alert), separators=(",", ":"))
            headers = {"Content-Type": "application/json"}
            if d.signing_secret:
                headers[SIGNATURE_HEADER] = signature(
                    self._secret(d.signing_secret, ns, revealed), body.encode()
                )
            sent = await self._post(delivery, route, d.url, body, headers)
        elif isinstance(d, SlackDestination):
            url = self._secret(d.url_secret, ns, revealed)
            sent = await self._post(
                delivery, route, url, json.dumps(slack_body(alert)), {"Content-Type": "application/json"}
            )
        elif isinstance(d, PagerDutyDestination):
            key = self._secret(d.routing_key_secret, ns, revealed)
            body = json.dumps(pagerduty_body(alert, key))
            sent = await self._post(
                delivery,
                route,
                d.events_url or PAGERDUTY_EVENTS_URL,
                body,
                {"Content-Type": "application/json"},
            )
        else:
            password = self._secret(d.password_secret, ns, revealed) if d.password_secret else ""
            sent = await self._mail(alert, d, password)
        if sent.error and revealed:
            redactor = Redactor(revealed)
            sent = Sent(sent.delivered, sent.http_status, redactor.text(sent.error), sent.permanent)
        return sent

    async def _post(
        self, delivery: Delivery, route: NotificationRoute, url: str, body: str, headers: dict[str, str]
    ) -> Sent:
        request = RunRequest(
            execution_name=delivery.name,
            job_name=route.name,
            parameters={"url": url, "method": "POST", "headers": headers, "body": body},
            arguments={},
            scheduled_time=delivery.create_time,
            attempt=delivery.attempts + 1,
            timeout=self._timeout,
            capture_bytes=RESPONSE_BYTES,
        )
        outcome = await self._http.run(request, asyncio.Event())
        if outcome.state is ExecutionState.SUCCEEDED:
            return Sent(True, outcome.http_status)
        status = outcome.http_status
        permanent = outcome.error.startswith("refused") or (
            status is not None and 400 <= status < 500 and status not in (408, 429)
        )
        error = outcome.error or (f"HTTP {status}" if status is not None else "no answer")
        return Sent(False, status, error, permanent)

    async def _mail(self, alert: dict[str, Any], d: EmailDestination, password: str) -> Sent:
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(d.smtp_host, d.port, type=socket.SOCK_STREAM),
                self._timeout.total_seconds(),
            )
        except (OSError, TimeoutError) as error:
            return Sent(False, error=f"cannot resolve {d.smtp_host!r}: {error}")
        addresses = [str(info[4][0]) for info in infos]
        for address in addresses:
            refusal = self._http.policy.refusal(ip_address(address.split("%")[0]))
            if refusal is not None:
                return Sent(False, error=refusal, permanent=True)
        if not addresses:
            return Sent(False, error=f"{d.smtp_host!r} has no address")
        message = email_message(alert, d)
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._smtp, d, addresses[0], password, message),
                self._timeout.total_seconds() * 2,
            )
        except smtplib.SMTPRecipientsRefused as error:
            return Sent(False, error=f"recipients refused: {sorted(error.recipients)}", permanent=True)
        except smtplib.SMTPAuthenticationError as error:
            return Sent(False, error=f"login refused: {error.smtp_code}", permanent=True)
        except smtplib.SMTPNotSupportedError as error:
            return Sent(False, error=f"the server does not support it: {error}", permanent=True)
        except (smtplib.SMTPException, OSError, TimeoutError) as error:
            return Sent(False, error=f"{type(error).__name__}: {error}")
        return Sent(True)

    def _smtp(self, d: EmailDestination, address: str, password: str, message: EmailMessage) -> None:
        timeout = self._timeout.total_seconds()
        context = ssl.create_default_context()
        client: smtplib.SMTP
        if d.security is EmailSecurity.SMTPS:
            client = _PinnedSMTPS(d.smtp_host, context, timeout)
            client.connect(address, d.port)
        else:
            client = smtplib.SMTP(timeout=timeout)
            client.connect(address, d.port)
            # The checked address is connected to; TLS checks the certificate against the name.
            client._host = d.smtp_host  # type: ignore[attr-defined]
        with client:
            client.ehlo()
            if d.security is EmailSecurity.STARTTLS:
                if not client.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError(
                        "STARTTLS is required and the server does not offer it"
                    )
                client.starttls(context=context)
                client.ehlo()
            if d.username:
                client.login(d.username, password)
            client.send_message(message, from_addr=d.from_address, to_addrs=list(d.to_addresses))


class _PinnedSMTPS(smtplib.SMTP_SSL):
    """SMTPS to a checked address, the certificate checked against the host's name."""

    def __init__(self, server_name: str, context: ssl.SSLContext, timeout: float) -> None:
        self._server_name = server_name
        super().__init__(context=context, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> ssl.SSLSocket:
        sock = socket.create_connection((host, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=self._server_name)
