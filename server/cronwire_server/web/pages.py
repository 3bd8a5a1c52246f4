"""The dashboard: pages, actions and live streams (server-sent events).

Pages are rendered on the server by Jinja2 with autoescaping (every value a job, a schedule or an
output holds is text), and updated live by static/app.js: it follows /stream/events and fetches
the page's main part again when something it shows changed. Actions (run now, pause, resume,
cancel, backfill) are forms posted with a CSRF token, confirmed on a page of their own, and done
through the same managers, with the same role table, as the gRPC API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from cronwire_server.api import scope
from cronwire_server.auth import principal
from cronwire_server.core import names
from cronwire_server.core.errors import (
    AlreadyExists,
    CronwireError,
    DeadlineExceeded,
    EtagMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RateLimited,
    ResourceExhausted,
    StorageUnavailable,
    Unauthenticated,
)
from cronwire_server.core.model import Event, EventFilter, Execution, Page
from cronwire_server.events import EventManager
from cronwire_server.web import views
from cronwire_server.web.auth import COOKIE, Visitor, WebAuth

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Live streams (events, output): at most this many open per replica and per key (or, with auth
# off, per client address); each ends after STREAM_LIFETIME and the browser reconnects.
MAX_STREAMS = 256
MAX_STREAMS_PER_VISITOR = 8
STREAM_LIFETIME = 15 * 60.0
# An open stream's key is checked again this often: revoking it ends the stream.
STREAM_RECHECK_SECONDS = 5.0
# What a stream's watcher may fall behind before it is cut off (the browser then reconnects).
STREAM_BUFFER_BATCHES = 32
STREAM_BUFFER_BYTES = 1024 * 1024
STREAM_HEARTBEAT_SECONDS = 5.0
EVENTS_ON_FEED = 100
FRAGMENT_HEADER = "X-Cronwire-Fragment"

# The gRPC method whose role each action needs (auth/roles.py: one table for both).
ACTIONS = {
    "run": ("/cronwire.v1.JobService/RunJob", "job"),
    "pause": ("/cronwire.v1.ScheduleService/PauseSchedule", "schedule"),
    "resume": ("/cronwire.v1.ScheduleService/ResumeSchedule", "schedule"),
    "cancel": ("/cronwire.v1.ExecutionService/CancelExecution", "execution"),
    "backfill": ("/cronwire.v1.ScheduleService/BackfillSchedule", "schedule"),
}
OUTCOMES = {
    "run": "Run queued.",
    "pause": "Schedule paused.",
    "resume": "Schedule resumed.",
    "cancel": "Cancellation requested.",
    "backfill": "Backfill queued.",
}
HTTP_STATUS: list[tuple[type[CronwireError], int]] = [
    (InvalidArgument, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (AlreadyExists, 409),
    (EtagMismatch, 409),
    (FailedPrecondition, 409),
    (OutOfRange, 409),
    (RateLimited, 429),
    (ResourceExhausted, 429),
    (StorageUnavailable, 503),
    (DeadlineExceeded, 504),
]


def http_status(error: CronwireError) -> int:
    return next((status for kind, status in HTTP_STATUS if isinstance(error, kind)), 500)


@dataclass
class StreamSlots:
    """Counts the open live streams, in all and per visitor."""

    total: int = 0
    per_visitor: dict[str, int] = field(default_factory=dict)

    def take(self, who: str) -> bool:
        if self.total >= MAX_STREAMS or self.per_visitor.get(who, 0) >= MAX_STREAMS_PER_VISITOR:
            return False
        self.total += 1
        self.per_visitor[who] = self.per_visitor.get(who, 0) + 1
        return True

    def give_back(self, who: str) -> None:
        self.total -= 1
        left = self.per_visitor[who] - 1
        if left:
            self.per_visitor[who] = left
        else:
            del self.per_visitor[who]


def _time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | timedelta | None) -> str:
    if value is None:
        return "—"
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _duration(execution: Execution) -> str:
    if execution.start_time is None:
        return "—"
    return _seconds((execution.end_time or datetime.now(UTC)) - execution.start_time)


def templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cronwire_server.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["time"] = _time
    environment.filters["seconds"] = _seconds
    environment.filters["duration"] = _duration
    environment.globals["job_path"] = lambda ns, job: f"/jobs/{quote(ns)}/{quote(job)}"
    environment.globals["execution_path"] = lambda ns, ex: f"/executions/{quote(ns)}/{quote(ex)}"
    return environment


def _static(name: str) -> bytes:
    return resources.files("cronwire_server.web").joinpath("static").joinpath(name).read_bytes()


@dataclass
class Dashboard:
    """What the pages read through and who may see them."""

    readers: views.Readers
    events: EventManager
    auth: WebAuth
    streams: StreamSlots = field(default_factory=StreamSlots)
    env: jinja2.Environment = field(default_factory=templates)
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.files = {
            "app.js": (_static("app.js"), "text/javascript; charset=utf-8"),
            "app.css": (_static("app.css"), "text/css; charset=utf-8"),
        }

    def close(self) -> None:
        """Nothing to release: streams end when the listener is cleaned up."""


# Who is asking.


def _peer(request: web.Request) -> str:
    return request.remote or "unknown"


def _safe_next(value: str) -> str:
    """A path on this site to go back to after logging in; never another site."""
    parts = urlsplit(value)
    if not value.startswith("/") or value.startswith("//") or parts.scheme or parts.netloc or "\\" in value:
        return "/"
    return value


def _set_session(response: web.StreamResponse, auth: WebAuth, value: str) -> None:
    response.set_cookie(COOKIE, value, httponly=True, secure=auth.secure, samesite="Strict", path="/")


async def _visitor(request: web.Request, dashboard: Dashboard) -> Visitor | None:
    """The request's visitor, with the principal set for the reads that follow; None when a key
    is needed and the request has no valid one. An open dashboard's first request gets an
    anonymous session (what its CSRF tokens are bound to)."""
    auth = dashboard.auth
    cookie = request.cookies.get(COOKIE, "")
    visitor = await auth.visitor(cookie, _peer(request))
    if visitor is None and not await auth.needs_key():
        visitor = Visitor(principal.OPEN, auth.new_anonymous_session())
        request["new_session"] = visitor.session
    if visitor is not None:
        principal.set_current(visitor.principal)
    return visitor


def _stream_owner(visitor: Visitor, request: web.Request) -> str:
    key = visitor.principal.key
    return f"key:{key.id}" if key is not None else f"peer:{_peer(request)}"


# Rendering.


def _render(
    request: web.Request,
    dashboard: Dashboard,
    template: str,
    visitor: Visitor | None,
    status: int = 200,
    **values: Any,
) -> web.Response:
    auth = dashboard.auth
    session = visitor.session if visitor else ""
    values.setdefault("page", template.removesuffix(".html"))
    body = dashboard.env.get_template(template).render(
        fragment=request.headers.get(FRAGMENT_HEADER) == "1",
        csrf=auth.csrf_token(session) if session else "",
        visitor=visitor,
        key=visitor.principal.key if visitor else None,
        can_act=bool(visitor) and all(visitor.may(method) for method, _ in ACTIONS.values()),  # type: ignore[union-attr]
        auth_enabled=auth.enabled,
        outcome=OUTCOMES.get(request.query.get("outcome", ""), ""),
        page_path=request.path_qs,
        **values,
    )
    response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
    if "new_session" in request:
        _set_session(response, auth, request["new_session"])
    return response


def _error(
    request: web.Request, dashboard: Dashboard, visitor: Visitor | None, error: CronwireError
) -> web.Response:
    return _render(request, dashboard, "error.html", visitor, status=http_status(error), message=str(error))


def page(template: str) -> Callable[[Callable[..., Awaitable[dict[str, Any]]]], Callable[..., Any]]:
    """A dashboard page: the visitor checked (else to the login page), `read` run under their
    principal, `template` rendered with what it returned; errors shown as the API would say them."""

    def decorate(read: Callable[..., Awaitable[dict[str, Any]]]) -> Callable[..., Any]:
        async def handle(dashboard: Dashboard, request: web.Request) -> web.StreamResponse:
            try:
                visitor = await _visitor(request, dashboard)
            except CronwireError as error:  # over its rate, or keys cannot be read now
                return _error(request, dashboard, None, error)
            if visitor is None:
                raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")
            try:
                values = await read(dashboard, request)
            except CronwireError as error:
                return _error(request, dashboard, visitor, error)
            return _render(request, dashboard, template, visitor, **values)

        return handle

    return decorate


# Pages.


@page("overview.html")
async def overview_page(dashboard: Dashboard, request: web.Request) -> dict[str, Any]:
    return {"page": "overview", "view": await views.overview(dashboard.readers)}


@page("jobs.html")
async def jobs_page(dashboard: Dashboard, request: web.Request) -> dict[str, Any]:
    query = request.query
    listed = await views.job_list(
        dashboard.readers,
        query.get("namespace", "")[:100],
        query.get("label", "")[:200],
        query.get("state", "")[:20],
    )
    return {"page": "jobs", "view": listed}


@page("job.html")
async def job_detail_page(dashboard: Dashboard, request: web.Request) -> dict[str, Any]:
    name = scope.name(
        names.format_name("job", request.match_info["namespace"], request.match_info["job"]), "job"
    )
    return {"page": "job", "view": await views.job_page(dashboard.readers, name.namespace, name.id)}


@page("execution.html")
async def execution_detail_page(dashboard: Dashboard, request: web.Request) -> dict[str, Any]:
    name = scope.name(
        names.format_name("execution", request.match_info["namespace"], request.match_info["execution"]),
        "execution",
    )
    view = await views.execution_page(dashboard.readers, name.namespace, name.id)
    return {"page": "execution", "view": view}


@page("events.html")
async def events_page(dashboard: Dashboard, request: web.Request) -> dict[str, Any]:
    where = EventFilter(namespaces=principal.visible_namespaces())
    latest = await dashboard.readers.store.latest_event_sequence()
    listing = await dashboard.events.list_page(where, Page(1000), max(0, latest - 10 * EVENTS_ON_FEED))
    shown = list(reversed(listing.items[-EVENTS_ON_FEED:]))
    return {"page": "events", "events": [event_json(e) for e in shown]}


# Logging in and out.


async def login_page(dashboard: Dashboard, request: web.Request) -> web.StreamResponse:
    if not dashboard.auth.enabled:
        raise web.HTTPSeeOther("/")
    session = request.cookies.get(COOKIE, "")
    visitor = Visitor(principal.OPEN, session) if session else None
    if visitor is None:
        request["new_session"] = dashboard.auth.new_anonymous_session()
        visitor = Visitor(principal.OPEN, request["new_session"])
    return _render(
        request,
        dashboard,
        "login.html",
        visitor,
        page="login",
        next=_safe_next(request.query.get("next", "/")),
        message="",
        logged_in=False,
    )


async def login(dashboard: Dashboard, request: web.Request) -> web.StreamResponse:
    auth = dashboard.auth
    form = await request.post()
    session = request.cookies.get(COOKIE, "")
    target = _safe_next(str(form.get("next", "/")))
    if not _same_origin(request) or not auth.csrf_ok(session, str(form.get("csrf", ""))):
        return web.Response(status=403, text="the form's CSRF token is missing or wrong: reload the page\n")
    visitor = Visitor(principal.OPEN, session)
    try:
        key = await auth.authenticate(str(form.get("key", "")), _peer(request))
    except CronwireError as error:
        message = "That key is not valid." if isinstance(error, Unauthenticated) else str(error)
        return _render(
            request,
            dashboard,
            "login.html",
            visitor,
            status=http_status(error),
            page="login",
            next=target,
            message=message,
            logged_in=False,
        )
    log.info("dashboard: %s logged in from %s", key.name, _peer(request))
    response = web.HTTPSeeOther(target)
    _set_session(response, auth, str(form.get("key", "")).strip())
    raise response


async def logout(dashboard: Dashboard, request: web.Request) -> web.StreamResponse:
    form = await request.post()
    session = request.cookies.get(COOKIE, "")
    if not _same_origin(request) or not dashboard.auth.csrf_ok(session, str(form.get("csrf", ""))):
        return web.Response(status=403, text="the form's CSRF token is missing or wrong: reload the page\n")
    response = web.HTTPSeeOther("/login" if dashboard.auth.enabled else "/")
    _set_session(response, dashboard.auth, dashboard.auth.new_anonymous_session())
    raise response


def _same_origin(request: web.Request) -> bool:
    """A browser's form post names where it comes from: it must be this site."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser that says; the CSRF token still has to match
    return origin != "null" and urlsplit(origin).netloc == request.host


# Actions.


async def action(dashboard: Dashboard, request: web.Request) -> web.StreamResponse:
    kind = request.match_info["action"]
    if kind not in ACTIONS:
        raise web.HTTPNotFound()
    try:
        visitor = await _visitor(request, dashboard)
    except CronwireError as error:
        return _error(request, dashboard, None, error)
    if visitor is None:
        return _error(request, dashboard, None, Unauthenticated("log in with an API key first"))
    form = await request.post()
    if not _same_origin(request) or not dashboard.auth.csrf_ok(visitor.session, str(form.get("csrf", ""))):
        return web.Response(status=403, text="the form's CSRF token is missing or wrong: reload the page\n")
    method, resource = ACTIONS[kind]
    try:
        if not visitor.may(method):
            key = visitor.principal.key
            raise PermissionDenied(
                f"key {key.name if key else ''} has role {visitor.role.name.lower()}; "
                f"{method} needs a higher one"
            )
        target = scope.name(str(form.get("name", "")), resource)
        if form.get("confirmed") != "1":
            return await _confirm(dashboard, request, visitor, kind, target, form)
        location = await _do(dashboard, kind, target, form)
    except CronwireError as error:
        return _error(request, dashboard, visitor, error)
    raise web.HTTPSeeOther(f"{location}?outcome={kind}")


def _form_time(form: Any, field_name: str) -> datetime:
    raw = str(form.get(field_name, "")).strip()
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidArgument.field(field_name, "must be a date and time (YYYY-MM-DDTHH:MM, UTC)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _confirm(
    dashboard: Dashboard,
    request: web.Request,
    visitor: Visitor,
    kind: str,
    target: names.ResourceName,
    form: Any,
) -> web.Response:
    readers = dashboard.readers
    values: dict[str, Any] = {
        "page": "confirm",
        "kind": kind,
        "name": str(form.get("name")),
        "target": target,
        "request_id": secrets.token_hex(16),
        "preview": None,
        "start": "",
        "end": "",
    }
    if kind in ("pause", "resume", "backfill"):
        values["schedule"] = await readers.schedules.get(target.namespace, target.id)
    if kind == "cancel":
        values["execution"] = await readers.executions.get(target.namespace, target.id)
    if kind == "run":
        values["job"] = await readers.jobs.get(target.namespace, target.id)
    if kind == "backfill":
        start, end = _form_time(form, "start"), _form_time(form, "end")
        times, _ = await readers.schedules.backfill(
            target.namespace,
            target.id,
            start,
            end,
            overlap_policy=values["schedule"].overlap_policy,
            max_concurrency=0,
            dry_run=True,
        )
        values.update(preview=times, start=str(form.get("start")), end=str(form.get("end")))
    return _render(request, dashboard, "confirm.html", visitor, **values)


async def _do(dashboard: Dashboard, kind: str, target: names.ResourceName, form: Any) -> str:
    """Does the action; the path of the page that shows its outcome."""
    readers = dashboard.readers
    ns, rid = target.namespace, target.id
    if kind == "run":
        request_id = str(form.get("request_id", ""))[:64]
        execution = await readers.executions.run_job(ns, rid, {}, request_id=request_id)
        return f"/executions/{quote(ns)}/{quote(execution.id)}"
    if kind == "cancel":
        await readers.executions.cancel(ns, rid, "cancelled from the dashboard")
        return f"/executions/{quote(ns)}/{quote(rid)}"
    schedule = await readers.schedules.get(ns, rid)
    if kind == "pause":
        await readers.schedules.pause(ns, rid, "paused from the dashboard")
    elif kind == "resume":
        await readers.schedules.resume(ns, rid)
    elif kind == "backfill":
        await readers.schedules.backfill(
            ns,
            rid,
            _form_time(form, "start"),
            _form_time(form, "end"),
            overlap_policy=schedule.overlap_policy,
            max_concurrency=0,
            dry_run=False,
            request_id=str(form.get("request_id", ""))[:64],
        )
    return f"/jobs/{quote(ns)}/{quote(schedule.job_id)}"


# Live streams.


def event_json(event: Event) -> dict[str, Any]:
    """What a browser is told of an event: where it happened and what changed, no snapshot."""
    snapshot = event.snapshot
    return {
        "seq": event.sequence,
        "type": event.type.value,
        "namespace": event.namespace,
        "resource": event.resource,
        "job": event.job_id,
        "schedule": event.schedule_id,
        "time": _time(event.time),
        "actor": event.actor,
        "state": snapshot.state.value if isinstance(snapshot, Execution) else "",
        "execution": snapshot.id if isinstance(snapshot, Execution) else "",
    }


class _Stream:
    """One server-sent-events response, counted against the stream limits while open."""

    def __init__(self, dashboard: Dashboard, request: web.Request, visitor: Visitor) -> None:
        self.dashboard = dashboard
        self.request = request
        self.visitor = visitor
        self.owner = _stream_owner(visitor, request)
        self.response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "X-Accel-Buffering": "no"}
        )
        self._checked_at = time.monotonic()

    async def send(self, name: str, data: Any) -> None:
        payload = json.dumps(data, separators=(",", ":"))
        await self.response.write(f"event: {name}\ndata: {payload}\n\n".encode())

    async def ping(self) -> None:
        await self.response.write(b": ping\n\n")

    async def still_allowed(self) -> bool:
        if time.monotonic() - self._checked_at < STREAM_RECHECK_SECONDS:
            return True
        self._checked_at = time.monotonic()
        return await self.dashboard.auth.still_valid(self.visitor)


async def _streamed(
    dashboard: Dashboard,
    request: web.Request,
    run: Callable[[_Stream], Awaitable[None]],
    check: Callable[[], Awaitable[None]] | None = None,
) -> web.StreamResponse:
    """`run` on an event stream for the request's visitor; `check` first, under their principal
    (what it raises is the answer: a stream of what they may not see is not opened)."""
    try:
        visitor = await _visitor(request, dashboard)
        if visitor is not None and check is not None:
            await check()
    except CronwireError as error:
        return web.Response(status=http_status(error), text=f"{error}\n")
    if visitor is None:
        return web.Response(status=401, text="log in with an API key first\n")
    stream = _Stream(dashboard, request, visitor)
    if not dashboard.streams.take(stream.owner):
        return web.Response(status=429, text="too many live streams open; close a tab\n")
    try:
        await stream.response.prepare(request)
        with contextlib.suppress(TimeoutError, ConnectionResetError, CronwireError):
            async with asyncio.timeout(STREAM_LIFETIME):
                await run(stream)
    finally:
        dashboard.streams.give_back(stream.owner)
    return stream.response


async def event_stream(dashboard: Dashboard, request: web.Request) -> web.StreamResponse:
    async def run(stream: _Stream) -> None:
        where = EventFilter(namespaces=principal.visible_namespaces())
        await stream.send("hello", {"seq": 0})
        deliveries: AsyncIterator[Any] = dashboard.events.watch(where, 0)
        try:
            async for delivery in deliveries:
                if not await stream.still_allowed():
                    return
                if not delivery.batches:
                    await stream.ping()
                for batch in delivery.batches:
                    for event in batch.events:
                        await stream.send("change", event_json(event))
        finally:
            await deliveries.aclose()  # type: ignore[attr-defined]

    return await _streamed(dashboard, request, run)


async def output_stream(dashboard: Dashboard, request: web.Request) -> web.StreamResponse:
    def target() -> names.ResourceName:
        return scope.name(
            names.format_name("execution", request.match_info["namespace"], request.match_info["execution"]),
            "execution",
        )

    async def check() -> None:
        name = target()
        await dashboard.readers.executions.get(name.namespace, name.id)

    async def run(stream: _Stream) -> None:
        name = target()
        try:
            offset = max(0, int(request.query.get("offset", "0")))
        except ValueError:
            offset = 0
        pieces = dashboard.readers.executions.output(name.namespace, name.id, offset, True)
        try:
            async for piece in pieces:
                if not await stream.still_allowed():
                    return
                final = piece.final_state.value if piece.final_state is not None else ""
                await stream.send("output", {"offset": piece.offset, "data": piece.data, "final": final})
                if final:
                    return
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]

    return await _streamed(dashboard, request, run, check)


async def static_file(dashboard: Dashboard, request: web.Request) -> web.StreamResponse:
    found = dashboard.files.get(request.match_info["file"])
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-cache"
    return response


def add_dashboard_routes(app: web.Application, dashboard: Dashboard) -> None:
    def bound(handler: Callable[[Dashboard, web.Request], Awaitable[web.StreamResponse]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await handler(dashboard, request)

        return handle

    app.add_routes(
        [
            web.get("/", bound(overview_page)),
            web.get("/jobs", bound(jobs_page)),
            web.get("/jobs/{namespace}/{job}", bound(job_detail_page)),
            web.get("/executions/{namespace}/{execution}", bound(execution_detail_page)),
            web.get("/events", bound(events_page)),
            web.get("/login", bound(login_page)),
            web.post("/login", bound(login)),
            web.post("/logout", bound(logout)),
            web.post("/actions/{action}", bound(action)),
            web.get("/stream/events", bound(event_stream)),
            web.get("/stream/output/{namespace}/{execution}", bound(output_stream)),
            web.get("/static/{file}", bound(static_file)),
        ]
    )
