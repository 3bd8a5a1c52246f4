"""Alerts in SQL: routes and rules, the notifier's pass over the events (incidents and the
deliveries they make), the sender's claim of due deliveries, and the deadline watch's pass.

Every replica may run every pass at once:

- the notifier locks its cursor row (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one
  writer): one replica at a time reads a batch of events, and the incidents, deliveries and the
  cursor's advance commit together, so an event notifies once;
- the sender claims due deliveries `FOR UPDATE SKIP LOCKED` and moves their next attempt past
  the time the send may take (a lease): a replica that dies mid-send leaves them to be tried
  again;
- the deadline watch inserts each miss into `deadline_misses`, whose key is the claim: the
  replica whose insert went in writes the event, in the same transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from cronwire_server.core import alerts, errors
from cronwire_server.core.alerts import (
    AlertKind,
    Delivery,
    DeliveryState,
    Destination,
    EmailDestination,
    EmailSecurity,
    Incident,
    NotificationRoute,
    NotificationRule,
    PagerDutyDestination,
    SlackDestination,
    WebhookDestination,
)
from cronwire_server.core.checkins import CheckIn, PingKind
from cronwire_server.core.deadlines import Candidate, misses
from cronwire_server.core.model import DeadlineKind, DeadlineMiss, EventType, Listing, Page
from cronwire_server.core.names import format_name, schedule_name
from cronwire_server.storage import sql_creates, sql_events, sql_paging
from cronwire_server.storage.records import deadlines_from_json, trigger_from_json, trigger_to_json
from cronwire_server.storage.sql_engine import database_now, unavailable_on_connection_errors
from cronwire_server.storage.tables import (
    check_in_pings,
    check_ins,
    deadline_misses,
    events,
    executions,
    jobs,
    notification_cursor,
    notification_deliveries,
    notification_incidents,
    notification_routes,
    notification_rules,
    request_ids,
    schedules,
)

T = TypeVar("T")
CURSOR = "notifier"
METHOD_CREATE_ROUTE = "CreateNotificationRoute"
METHOD_CREATE_RULE = "CreateNotificationRule"
HOUR = timedelta(hours=1)


def _time(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, as completion callbacks write times."""
    return value.isoformat().replace("+00:00", "Z") if value else None


# Routes and rules each, and check-ins, a namespace may hold: every event of a namespace is matched
# against all its rules, and every rule may notify.
MAX_PER_NAMESPACE = 200
MAX_CHECK_INS_PER_NAMESPACE = 1000


def _within_quota(conn: Connection, table: sa.Table, namespace: str, kind: str, limit: int) -> None:
    held = conn.execute(
        sa.select(sa.func.count()).select_from(table).where(table.c.namespace == namespace)
    ).scalar_one()
    if held >= limit:
        raise errors.ResourceExhausted(
            f"namespace {namespace!r} holds {held} {kind}s, the most it may; delete some first",
            reason=kind.upper().replace("-", "_") + "_LIMIT_REACHED",
        )


def _etag() -> str:
    return secrets.token_hex(8)


# Rows <-> domain


def destination_to_json(destination: Destination) -> dict[str, Any]:
    if isinstance(destination, WebhookDestination):
        return {"kind": "webhook", "url": destination.url, "signing_secret": destination.signing_secret}
    if isinstance(destination, SlackDestination):
        return {"kind": "slack", "url_secret": destination.url_secret}
    if isinstance(destination, PagerDutyDestination):
        return {
            "kind": "pagerduty",
            "routing_key_secret": destination.routing_key_secret,
            "events_url": destination.events_url,
        }
    return {
        "kind": "email",
        "smtp_host": destination.smtp_host,
        "smtp_port": destination.smtp_port,
        "security": destination.security.value,
        "username": destination.username,
        "password_secret": destination.password_secret,
        "from_address": destination.from_address,
        "to_addresses": list(destination.to_addresses),
    }


def destination_from_json(values: Mapping[str, Any]) -> Destination:
    kind = values["kind"]
    if kind == "webhook":
        return WebhookDestination(values["url"], values.get("signing_secret", ""))
    if kind == "slack":
        return SlackDestination(values["url_secret"])
    if kind == "pagerduty":
        return PagerDutyDestination(values["routing_key_secret"], values.get("events_url", ""))
    return EmailDestination(
        smtp_host=values["smtp_host"],
        smtp_port=values["smtp_port"],
        security=EmailSecurity(values["security"]),
        username=values["username"],
        password_secret=values["password_secret"],
        from_address=values["from_address"],
        to_addresses=tuple(values["to_addresses"]),
    )


def _route(row: Mapping[Any, Any]) -> NotificationRoute:
    return NotificationRoute(
        namespace=row["namespace"],
        id=row["id"],
        description=row["description"],
        destination=destination_from_json(row["destination"]),
        max_per_hour=row["max_per_hour"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
    )


def _rule(row: Mapping[Any, Any]) -> NotificationRule:
    return NotificationRule(
        namespace=row["namespace"],
        id=row["id"],
        description=row["description"],
        route_id=row["route_id"],
        kinds=frozenset(AlertKind(k) for k in row["kinds"]),
        job_id=row["job_id"],
        schedule_id=row["schedule_id"],
        labels=dict(row["labels"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        etag=row["etag"],
    )


def _incident(row: Mapping[Any, Any]) -> Incident:
    return Incident(
        namespace=row["namespace"],
        seq=row["seq"],
        rule_id=row["rule_id"],
        route_id=row["route_id"],
        job_id=row["job_id"],
        schedule_id=row["schedule_id"],
        kind=AlertKind(row["kind"]),
        summary=row["summary"],
        alerts=row["alerts"],
        open_time=row["open_time"],
        resolve_time=row["resolve_time"],
        dedup_key=row["dedup_key"],
        check_in_id=row["check_in_id"],
        resolve_reason=row["resolve_reason"],
    )


def _delivery(row: Mapping[Any, Any]) -> Delivery:
    return Delivery(
        namespace=row["namespace"],
        seq=row["seq"],
        route_id=row["route_id"],
        incident_seq=row["incident_seq"],
        kind=AlertKind(row["kind"]),
        resolve=row["resolve"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        summary=row["summary"],
        create_time=row["create_time"],
        alert=dict(row["alert"]),
        http_status=row["http_status"],
        error=row["error"],
        last_attempt_time=row["last_attempt_time"],
        next_attempt_time=row["next_attempt_time"],
    )


def _check_in(row: Mapping[Any, Any]) -> CheckIn:
    return CheckIn(
        namespace=row["namespace"],
        id=row["id"],
        trigger=trigger_from_json(row["trigger"]),
        time_zone=row["time_zone"],
        description=row["description"],
        grace=timedelta(seconds=row["grace_seconds"]),
        labels=dict(row["labels"]),
        next_expected_time=row["next_expected_time"],
        last_ping_time=row["last_ping_time"],
        last_ping_kind=PingKind(row["last_ping_kind"]) if row["last_ping_kind"] else None,
        last_duration=timedelta(seconds=row["last_duration_seconds"])
        if row["last_duration_seconds"] is not None
        else None,
        missed=row["missed"],
        create_time=row["create_time"],
        etag=row["etag"],
    )


def _route_values(route: NotificationRoute) -> dict[str, Any]:
    return {
        "description": route.description,
        "destination": destination_to_json(route.destination),
        "max_per_hour": route.max_per_hour,
    }


def _rule_values(rule: NotificationRule) -> dict[str, Any]:
    return {
        "description": rule.description,
        "route_id": rule.route_id,
        "kinds": sorted(k.value for k in rule.kinds),
        "job_id": rule.job_id,
        "schedule_id": rule.schedule_id,
        "labels": dict(rule.labels),
    }


@dataclass(frozen=True)
class ClaimedDelivery:
    delivery: Delivery
    route: NotificationRoute


@dataclass(frozen=True)
class DeadlinePass:
    misses: list[tuple[str, DeadlineMiss]]  # (namespace, miss) recorded by this pass


# The events a notifier pass reads: those a rule may take, and only in namespaces that have rules
# (nothing else can open or resolve an incident), so that a busy scheduler without alerts costs
# the notifier one empty read per pass, not a read of every run's end. Built once.
_WATCHED_AFTER = (
    sa.select(events)
    .where(
        events.c.sequence > sa.bindparam("after"),
        events.c.sequence <= sa.bindparam("up_to"),
        events.c.type.in_(sorted(t.value for t in alerts.WATCHED)),
        events.c.namespace.in_(sa.select(notification_rules.c.namespace)),
    )
    .order_by(events.c.sequence)
    .limit(sa.bindparam("limit"))
)


class NotificationStore:
    """The alert tables over the server's engine; each method one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sync = engine.sync_engine
        self._postgres = engine.dialect.name == "postgresql"
        self._begin = "BEGIN" if self._postgres else "BEGIN IMMEDIATE"

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        with unavailable_on_connection_errors():
            return await greenlet_spawn(self._in_transaction, work, *args)

    async def _read(self, work: Callable[..., T], *args: Any) -> T:
        """`work` outside a transaction: the passes look before they lock (on SQLite a write
        transaction is the database's one writer), and most passes find nothing to do."""
        with unavailable_on_connection_errors():
            return await greenlet_spawn(self._in_read, work, *args)

    def _in_read(self, work: Callable[..., T], *args: Any) -> T:
        with self._sync.connect() as conn:
            return work(conn, *args, database_now(conn))

    def _in_transaction(self, work: Callable[..., T], *args: Any) -> T:
        with self._transaction() as conn:
            return work(conn, *args, database_now(conn))

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._sync.connect() as conn:
            conn.exec_driver_sql(self._begin)
            try:
                yield conn
            except BaseException:
                if not conn.invalidated:
                    with suppress(exc.SQLAlchemyError):
                        conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")

    async def now(self) -> datetime:
        return await self._run(lambda conn, now: now)

    # Routes

    async def create_route(self, route: NotificationRoute, request_id: str) -> NotificationRoute:
        return await self._run(
            self._create, notification_routes, route, _route_values(route), request_id, _route
        )

    async def get_route(self, namespace: str, route_id: str) -> NotificationRoute:
        return await self._run(self._get, notification_routes, "route", namespace, route_id, _route)

    async def list_routes(self, namespace: str, page: Page) -> Listing[NotificationRoute]:
        return await self._run(self._list, notification_routes, namespace, page, _route)

    async def update_route(self, route: NotificationRoute, expected_etag: str) -> NotificationRoute:
        return await self._run(
            self._update, notification_routes, route, _route_values(route), expected_etag, _route
        )

    async def delete_route(self, namespace: str, route_id: str, expected_etag: str) -> None:
        await self._run(self._delete_route, namespace, route_id, expected_etag)

    # Rules

    async def create_rule(self, rule: NotificationRule, request_id: str) -> NotificationRule:
        return await self._run(self._create, notification_rules, rule, _rule_values(rule), request_id, _rule)

    async def get_rule(self, namespace: str, rule_id: str) -> NotificationRule:
        return await self._run(self._get, notification_rules, "rule", namespace, rule_id, _rule)

    async def list_rules(self, namespace: str, page: Page) -> Listing[NotificationRule]:
        return await self._run(self._list, notification_rules, namespace, page, _rule)

    async def update_rule(self, rule: NotificationRule, expected_etag: str) -> NotificationRule:
        return await self._run(
            self._update, notification_rules, rule, _rule_values(rule), expected_etag, _rule
        )

    async def delete_rule(self, namespace: str, rule_id: str, expected_etag: str) -> None:
        await self._run(self._delete_rule, namespace, rule_id, expected_etag)

    def _kind(self, table: sa.Table) -> str:
        return "route" if table is notification_routes else "rule"

    def _check_route(self, conn: Connection, values: Mapping[str, Any], namespace: str) -> None:
        if "route_id" in values:
            found = conn.execute(
                sa.select(notification_routes.c.id).where(
                    notification_routes.c.namespace == namespace,
                    notification_routes.c.id == values["route_id"],
                )
            ).first()
            if found is None:
                raise errors.NotFound("route", format_name("route", namespace, values["route_id"]))

    def _create(
        self,
        conn: Connection,
        table: sa.Table,
        item: Any,
        values: dict[str, Any],
        request_id: str,
        build: Callable[[Mapping[Any, Any]], T],
        now: datetime,
    ) -> T:
        kind = self._kind(table)
        method = METHOD_CREATE_ROUTE if kind == "route" else METHOD_CREATE_RULE
        if request_id:
            earlier = sql_creates.recorded(conn, item.namespace, request_id, method)
            if earlier is not None:
                return self._get(conn, table, kind, item.namespace, earlier, build, now)
        key = [table.c.namespace == item.namespace, table.c.id == item.id]
        if conn.execute(sa.select(table.c.id).where(*key)).first() is not None:
            raise errors.AlreadyExists(kind, format_name(kind, item.namespace, item.id))
        _within_quota(conn, table, item.namespace, kind, MAX_PER_NAMESPACE)
        self._check_route(conn, values, item.namespace)
        row = conn.execute(
            sa.insert(table)
            .values(
                namespace=item.namespace, id=item.id, **values, create_time=now, update_time=now, etag=_etag()
            )
            .returning(*table.c)
        ).one()
        if request_id:
            conn.execute(
                sa.insert(request_ids).values(
                    namespace=item.namespace,
                    request_id=request_id,
                    method=method,
                    resource_id=item.id,
                    create_time=now,
                )
            )
        return build(row._mapping)

    def _get(
        self,
        conn: Connection,
        table: sa.Table,
        kind: str,
        namespace: str,
        item_id: str,
        build: Callable[[Mapping[Any, Any]], T],
        now: datetime,
    ) -> T:
        row = conn.execute(
            sa.select(table).where(table.c.namespace == namespace, table.c.id == item_id)
        ).first()
        if row is None:
            raise errors.NotFound(kind, format_name(kind, namespace, item_id))
        return build(row._mapping)

    def _list(
        self,
        conn: Connection,
        table: sa.Table,
        namespace: str,
        page: Page,
        build: Callable[[Mapping[Any, Any]], Any],
        now: datetime,
    ) -> Listing[Any]:
        query = sa.select(table).where(table.c.namespace == namespace)
        if page.after:
            query = query.where(table.c.id > page.after)
        rows, more = _sized(conn, query, (("id", False),), page)
        items = [build(r._mapping) for r in rows]
        return Listing(items=items, next_after=items[-1].id if more else None)

    def _update(
        self,
        conn: Connection,
        table: sa.Table,
        item: Any,
        values: dict[str, Any],
        expected_etag: str,
        build: Callable[[Mapping[Any, Any]], T],
        now: datetime,
    ) -> T:
        kind = self._kind(table)
        key = [table.c.namespace == item.namespace, table.c.id == item.id]
        self._check_route(conn, values, item.namespace)
        where = [*key, table.c.etag == expected_etag] if expected_etag else key
        row = conn.execute(
            sa.update(table).where(*where).values(**values, update_time=now, etag=_etag()).returning(*table.c)
        ).first()
        if row is None:
            name = format_name(kind, item.namespace, item.id)
            if conn.execute(sa.select(table.c.id).where(*key)).first() is not None:
                raise errors.EtagMismatch(kind, name)
            raise errors.NotFound(kind, name)
        return build(row._mapping)

    def _delete(
        self, conn: Connection, table: sa.Table, namespace: str, item_id: str, expected_etag: str
    ) -> None:
        kind = self._kind(table)
        key = [table.c.namespace == namespace, table.c.id == item_id]
        where = [*key, table.c.etag == expected_etag] if expected_etag else key
        if conn.execute(sa.delete(table).where(*where).returning(table.c.id)).first() is None:
            name = format_name(kind, namespace, item_id)
            if conn.execute(sa.select(table.c.id).where(*key)).first() is not None:
                raise errors.EtagMismatch(kind, name)
            raise errors.NotFound(kind, name)

    def _delete_route(
        self, conn: Connection, namespace: str, route_id: str, expected_etag: str, now: datetime
    ) -> None:
        user = conn.execute(
            sa.select(notification_rules.c.id)
            .where(notification_rules.c.namespace == namespace, notification_rules.c.route_id == route_id)
            .limit(1)
        ).first()
        if user is not None:
            raise errors.FailedPrecondition(
                f"route {format_name('route', namespace, route_id)!r} is named by rule "
                f"{format_name('rule', namespace, user.id)!r}; delete or change that rule first",
                reason="ROUTE_IN_USE",
            )
        self._delete(conn, notification_routes, namespace, route_id, expected_etag)

    def _delete_rule(
        self, conn: Connection, namespace: str, rule_id: str, expected_etag: str, now: datetime
    ) -> None:
        rule = self._get(conn, notification_rules, "rule", namespace, rule_id, _rule, now)
        self._delete(conn, notification_rules, namespace, rule_id, expected_etag)
        # Its open incidents are resolved (nothing would resolve them any more), each with a
        # resolve notification as a success would send, so a PagerDuty incident closes too.
        reason = f"{format_name('rule', namespace, rule_id)} was deleted"
        t = notification_incidents
        resolved = conn.execute(
            sa.update(t)
            .where(t.c.namespace == namespace, t.c.rule_id == rule_id, t.c.resolve_time.is_(None))
            .values(resolve_time=now, resolve_reason=reason)
            .returning(*t.c)
        ).all()
        for row in resolved:
            incident = _incident(row._mapping)
            about_it = alerts.Observed(
                None,
                incident.job_id,
                incident.schedule_id,
                reason,
                check_in_id=incident.check_in_id,
                deleted=True,
            )
            self._resolve(conn, rule, incident, about_it, now, now)

    # Incidents and deliveries, as callers see them

    # Check-ins

    async def create_check_in(self, check_in: CheckIn, token_sha256: str, first: datetime | None) -> CheckIn:
        def work(conn: Connection, now: datetime) -> CheckIn:
            key = [check_ins.c.namespace == check_in.namespace, check_ins.c.id == check_in.id]
            if conn.execute(sa.select(check_ins.c.id).where(*key)).first() is not None:
                raise errors.AlreadyExists("check_in", check_in.name)
            _within_quota(conn, check_ins, check_in.namespace, "check-in", MAX_CHECK_INS_PER_NAMESPACE)
            row = conn.execute(
                sa.insert(check_ins)
                .values(
                    namespace=check_in.namespace,
                    id=check_in.id,
                    description=check_in.description,
                    trigger=trigger_to_json(check_in.trigger),
                    time_zone=check_in.time_zone,
                    grace_seconds=check_in.grace.total_seconds(),
                    labels=dict(check_in.labels),
                    token_sha256=token_sha256,
                    next_expected_time=first,
                    missed=0,
                    create_time=now,
                    etag=_etag(),
                )
                .returning(*check_ins.c)
            ).one()
            return _check_in(row._mapping)

        return await self._run(work)

    async def get_check_in(self, namespace: str, check_in_id: str) -> CheckIn:
        def work(conn: Connection, now: datetime) -> CheckIn:
            row = conn.execute(
                sa.select(check_ins).where(check_ins.c.namespace == namespace, check_ins.c.id == check_in_id)
            ).first()
            if row is None:
                raise errors.NotFound("check_in", format_name("check_in", namespace, check_in_id))
            return _check_in(row._mapping)

        return await self._run(work)

    async def list_check_ins(self, namespace: str, page: Page) -> Listing[CheckIn]:
        return await self._run(self._list, check_ins, namespace, page, _check_in)

    async def update_check_in(
        self,
        namespace: str,
        check_in_id: str,
        change: Callable[[CheckIn], CheckIn],
        expected_etag: str,
        next_after: Callable[[CheckIn, datetime], datetime | None],
        *,
        validate_only: bool = False,
    ) -> CheckIn:
        """Apply `change` to the stored check-in, in one transaction with its row locked (a ping
        waits for it, or it for the ping). `change` checks and may raise: nothing is written
        then. A changed trigger or time zone plans the awaited tick again, the first after now
        on the database's clock; a changed grace keeps it (its deadline is tick + grace).
        With `validate_only` the check-in is returned as it would be stored, and nothing is."""

        def work(conn: Connection, now: datetime) -> CheckIn:
            key = [check_ins.c.namespace == namespace, check_ins.c.id == check_in_id]
            query = sa.select(check_ins).where(*key)
            row = conn.execute(query.with_for_update() if self._postgres else query).first()
            name = format_name("check_in", namespace, check_in_id)
            if row is None:
                raise errors.NotFound("check_in", name)
            current = _check_in(row._mapping)
            if expected_etag and expected_etag != current.etag:
                raise errors.EtagMismatch("check_in", name)
            updated = change(current)
            replanned = (
                trigger_to_json(updated.trigger) != trigger_to_json(current.trigger)
                or updated.time_zone != current.time_zone
            )
            values: dict[str, Any] = {
                "description": updated.description,
                "trigger": trigger_to_json(updated.trigger),
                "time_zone": updated.time_zone,
                "grace_seconds": updated.grace.total_seconds(),
                "labels": dict(updated.labels),
                "next_expected_time": next_after(updated, now) if replanned else current.next_expected_time,
                "etag": _etag(),
            }
            if validate_only:
                return replace(
                    current,
                    trigger=updated.trigger,
                    time_zone=updated.time_zone,
                    description=updated.description,
                    grace=updated.grace,
                    labels=dict(updated.labels),
                    next_expected_time=values["next_expected_time"],
                )
            stored = conn.execute(
                sa.update(check_ins).where(*key).values(**values).returning(*check_ins.c)
            ).one()
            return _check_in(stored._mapping)

        return await self._run(work)

    async def delete_check_in(
        self, namespace: str, check_in_id: str, expected_etag: str, *, actor: str = ""
    ) -> None:
        """Delete a check-in and write its CHECKIN_DELETED event, in one transaction: the notifier
        resolves its open incidents when it reads the event, after the events before it (a miss
        not yet read still opens its incident first, and the deletion then resolves it)."""

        def work(conn: Connection, now: datetime) -> None:
            key = [check_ins.c.namespace == namespace, check_ins.c.id == check_in_id]
            where = [*key, check_ins.c.etag == expected_etag] if expected_etag else key
            if conn.execute(sa.delete(check_ins).where(*where).returning(check_ins.c.id)).first() is None:
                name = format_name("check_in", namespace, check_in_id)
                if conn.execute(sa.select(check_ins.c.id).where(*key)).first() is not None:
                    raise errors.EtagMismatch("check_in", name)
                raise errors.NotFound("check_in", name)
            name = format_name("check_in", namespace, check_in_id)
            sql_events.insert(
                conn, [sql_events.row(EventType.CHECKIN_DELETED, namespace, name, now, actor=actor)]
            )

        await self._run(work)

    async def check_in_of_token(self, token_sha256: str) -> CheckIn | None:
        def work(conn: Connection, now: datetime) -> CheckIn | None:
            row = conn.execute(sa.select(check_ins).where(check_ins.c.token_sha256 == token_sha256)).first()
            return None if row is None else _check_in(row._mapping)

        return await self._run(work)

    async def ping(
        self,
        namespace: str,
        check_in_id: str,
        kind: PingKind,
        next_after: Callable[[CheckIn, datetime], datetime | None],
    ) -> CheckIn:
        """Record a ping: the awaited tick moves past now; an end ping after a start records the
        duration; success and fail pings are events (the notifier resolves or alerts)."""

        def work(conn: Connection, now: datetime) -> CheckIn:
            key = [check_ins.c.namespace == namespace, check_ins.c.id == check_in_id]
            query = sa.select(check_ins).where(*key)
            row = conn.execute(query.with_for_update() if self._postgres else query).first()
            if row is None:
                raise errors.NotFound("check_in", format_name("check_in", namespace, check_in_id))
            current = _check_in(row._mapping)
            duration: float | None = None
            started = row.last_start_time
            if kind is not PingKind.START and started is not None:
                duration = (now - started).total_seconds()
            values: dict[str, Any] = {
                "last_ping_time": now,
                "last_ping_kind": kind.value,
                "next_expected_time": next_after(current, now),
                "last_start_time": now if kind is PingKind.START else None,
            }
            if duration is not None:
                values["last_duration_seconds"] = duration
            updated = conn.execute(
                sa.update(check_ins).where(*key).values(**values).returning(*check_ins.c)
            ).one()
            conn.execute(
                sa.insert(check_in_pings).values(
                    namespace=namespace,
                    check_in_id=check_in_id,
                    kind=kind.value,
                    time=now,
                    duration_seconds=duration,
                )
            )
            if kind is not PingKind.START:
                event = EventType.CHECKIN_SUCCEEDED if kind is PingKind.SUCCESS else EventType.CHECKIN_FAILED
                sql_events.insert(conn, [sql_events.row(event, namespace, current.name, now)])
            return _check_in(updated._mapping)

        return await self._run(work)

    def _missed_check_ins(
        self,
        conn: Connection,
        limit: int,
        now: datetime,
        next_after: Callable[[CheckIn, datetime], datetime | None],
    ) -> list[tuple[str, DeadlineMiss]]:
        """Check-ins whose awaited tick is past its grace: each one miss (its event), the awaited
        tick moved to the first after `now - grace`. Rows are locked (SKIP LOCKED) so replicas take
        different ones."""
        query = (
            sa.select(check_ins)
            .where(check_ins.c.next_expected_time.is_not(None), check_ins.c.next_expected_time <= now)
            .order_by(check_ins.c.next_expected_time)
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        found: list[tuple[str, DeadlineMiss]] = []
        for row in conn.execute(query).all():
            check_in = _check_in(row._mapping)
            tick = row.next_expected_time
            deadline = tick + check_in.grace
            if deadline > now:
                continue
            miss = DeadlineMiss(DeadlineKind.CHECK_IN_GRACE, tick, deadline)
            conn.execute(
                sa.update(check_ins)
                .where(check_ins.c.namespace == check_in.namespace, check_ins.c.id == check_in.id)
                .values(
                    next_expected_time=next_after(check_in, now - check_in.grace),
                    missed=check_ins.c.missed + 1,
                )
            )
            sql_events.insert(
                conn,
                [
                    sql_events.row(
                        EventType.CHECKIN_MISSED,
                        check_in.namespace,
                        check_in.name,
                        now,
                        snapshot=sql_events.deadline_miss_snapshot(miss),
                    )
                ],
            )
            found.append((check_in.namespace, miss))
        return found

    async def list_incidents(
        self, namespace: str, page: Page, *, job_id: str = "", schedule_id: str = "", open_only: bool = False
    ) -> Listing[Incident]:
        def work(conn: Connection, now: datetime) -> Listing[Incident]:
            t = notification_incidents
            query = sa.select(t).where(t.c.namespace == namespace)
            if job_id:
                query = query.where(t.c.job_id == job_id)
            if schedule_id:
                query = query.where(t.c.schedule_id == schedule_id)
            if open_only:
                query = query.where(t.c.resolve_time.is_(None))
            if page.after:
                query = query.where(t.c.seq < int(page.after))
            rows, more = _sized(conn, query, (("seq", True),), page)
            items = [_incident(r._mapping) for r in rows]
            return Listing(items, str(items[-1].seq) if more else None)

        return await self._run(work)

    async def list_deliveries(self, namespace: str, page: Page, *, route_id: str = "") -> Listing[Delivery]:
        def work(conn: Connection, now: datetime) -> Listing[Delivery]:
            t = notification_deliveries
            query = sa.select(t).where(t.c.namespace == namespace)
            if route_id:
                query = query.where(t.c.route_id == route_id)
            if page.after:
                query = query.where(t.c.seq < int(page.after))
            rows, more = _sized(conn, query, (("seq", True),), page)
            items = [_delivery(r._mapping) for r in rows]
            return Listing(items, str(items[-1].seq) if more else None)

        return await self._run(work)

    # The notifier: events -> incidents and deliveries

    async def notify_pass(self, limit: int) -> int:
        """Read up to `limit` events after the cursor and turn them into incidents and pending
        deliveries; the number of events read (0 when another replica holds the cursor)."""
        if not await self._read(self._events_after_cursor):
            return 0
        return await self._run(self._notify_pass, limit)

    @staticmethod
    def _events_after_cursor(conn: Connection, now: datetime) -> bool:
        cursor = conn.execute(
            sa.select(notification_cursor.c.sequence).where(notification_cursor.c.name == CURSOR)
        ).scalar_one_or_none()
        if cursor is None:
            return False  # migration 0022 writes the row; without it there is nothing to read from
        newer = sa.select(events.c.sequence).where(events.c.sequence > cursor).limit(1)
        return conn.execute(newer).first() is not None

    def _cursor(self, conn: Connection) -> int | None:
        """The cursor, locked; None while another replica holds it. Its row is written by
        migration 0022 at the latest event then, never by a pass: a first pass that came late
        would have put it past the events since the server started."""
        query = sa.select(notification_cursor.c.sequence).where(notification_cursor.c.name == CURSOR)
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        value = conn.execute(query).scalar_one_or_none()
        return None if value is None else int(value)

    def _notify_pass(self, conn: Connection, limit: int, now: datetime) -> int:
        after = self._cursor(conn)
        if after is None:
            return 0
        # The latest first: an event numbered after it is read by the next pass, never skipped.
        latest = sql_events.latest(conn)
        rows = conn.execute(_WATCHED_AFTER, {"after": after, "up_to": latest, "limit": limit}).all()
        if not rows:
            # Skip past the other events too, so the next read starts near the end.
            if latest > after:
                self._advance(conn, latest)
            return 0
        found = sql_events.to_events(rows)
        rules: dict[str, list[NotificationRule]] = {}
        routes: dict[tuple[str, str], NotificationRoute] = {}
        labels: dict[tuple[str, str], dict[str, str] | None] = {}
        for event in found:
            observed = alerts.observe(event)
            if observed is None:
                continue
            if event.namespace not in rules:
                rules[event.namespace] = [
                    _rule(r._mapping)
                    for r in conn.execute(
                        sa.select(notification_rules).where(notification_rules.c.namespace == event.namespace)
                    ).all()
                ]
            if observed.deleted:
                self._resolve_deleted(
                    conn, rules[event.namespace], event.namespace, observed, event.time, now
                )
                continue
            for rule in rules[event.namespace]:
                if rule.labels and observed.check_in_id:
                    key = (event.namespace, "check-in " + observed.check_in_id)
                    if key not in labels:
                        labels[key] = conn.execute(
                            sa.select(check_ins.c.labels).where(
                                check_ins.c.namespace == key[0], check_ins.c.id == observed.check_in_id
                            )
                        ).scalar_one_or_none()
                    job_labels = labels[key]
                elif rule.labels:
                    key = (event.namespace, observed.job_id)
                    if key not in labels:
                        labels[key] = conn.execute(
                            sa.select(jobs.c.labels).where(jobs.c.namespace == key[0], jobs.c.id == key[1])
                        ).scalar_one_or_none()
                    job_labels = labels[key]
                else:
                    job_labels = None
                if not rule.selects(observed.job_id, observed.schedule_id, job_labels):
                    continue
                route_key = (event.namespace, rule.route_id)
                if route_key not in routes:
                    routes[route_key] = self._get(
                        conn, notification_routes, "route", event.namespace, rule.route_id, _route, now
                    )
                self._apply(conn, rule, routes[route_key], event.namespace, observed, event.time, now)
        self._advance(conn, int(rows[-1].sequence))
        return len(rows)

    def _advance(self, conn: Connection, sequence: int) -> None:
        conn.execute(
            sa.update(notification_cursor)
            .where(notification_cursor.c.name == CURSOR)
            .values(sequence=sequence)
        )

    def _apply(
        self,
        conn: Connection,
        rule: NotificationRule,
        route: NotificationRoute,
        namespace: str,
        observed: alerts.Observed,
        when: datetime,
        now: datetime,
    ) -> None:
        t = notification_incidents
        key = [
            t.c.namespace == namespace,
            t.c.rule_id == rule.id,
            t.c.job_id == observed.job_id,
            t.c.schedule_id == observed.schedule_id,
            t.c.check_in_id == observed.check_in_id,
            t.c.resolve_time.is_(None),
        ]
        if observed.kind is None:  # a success resolves the rule's open incidents of this job and schedule
            if self._missed_a_deadline(conn, namespace, observed):
                # A run that ended late resolves failures, not the deadline it missed: a schedule
                # that is late tick after tick stays one incident until a tick keeps its deadlines.
                key.append(t.c.family == "failure")
            resolved = sa.update(t).where(*key).values(resolve_time=now, resolve_reason=observed.summary)
            for row in conn.execute(resolved.returning(*t.c)).all():
                self._resolve(conn, rule, _incident(row._mapping), observed, when, now)
            return
        if observed.kind not in rule.kinds:
            return
        family = alerts.family(observed.kind)
        counted = conn.execute(
            sa.update(t).where(*key, t.c.family == family).values(alerts=t.c.alerts + 1).returning(t.c.seq)
        ).first()
        if counted is not None:
            return  # one notification per incident
        if self._gone(conn, namespace, observed):
            # A run of a job (or schedule) deleted since, or a check-in deleted since: its
            # deletion resolves its incidents once, so one opened after it would never resolve.
            return
        row = conn.execute(
            sa.insert(t)
            .values(
                namespace=namespace,
                rule_id=rule.id,
                route_id=route.id,
                job_id=observed.job_id,
                schedule_id=observed.schedule_id,
                check_in_id=observed.check_in_id,
                family=family,
                kind=observed.kind.value,
                summary=observed.summary,
                alerts=1,
                open_time=now,
                resolve_time=None,
                dedup_key=f"cronwire-{secrets.token_hex(12)}",
            )
            .returning(*t.c)
        ).one()
        incident = _incident(row._mapping)
        self._deliver(
            conn, rule, route, incident, observed.kind, observed.summary, observed, when, now, resolve=False
        )

    @staticmethod
    def _gone(conn: Connection, namespace: str, observed: alerts.Observed) -> bool:
        """Whether the job, schedule or check-in an alert is about no longer exists."""
        if observed.check_in_id:
            table, item_id = check_ins, observed.check_in_id
        elif observed.schedule_id:
            table, item_id = schedules, observed.schedule_id
        else:
            table, item_id = jobs, observed.job_id
        found = sa.select(table.c.id).where(table.c.namespace == namespace, table.c.id == item_id)
        return conn.execute(found).first() is None

    def _resolve_deleted(
        self,
        conn: Connection,
        rules: list[NotificationRule],
        namespace: str,
        deleted: alerts.Observed,
        when: datetime,
        now: datetime,
    ) -> None:
        """A job, schedule or check-in was deleted: its open incidents (whatever rule opened them,
        a job's of every schedule) are resolved, each with a resolve notification to the route it
        was sent to, as a success would: PagerDuty always, other routes when the rule asks for
        RECOVERED. Under the notifier's cursor: once, however many replicas run."""
        t = notification_incidents
        if deleted.check_in_id:
            about = t.c.check_in_id == deleted.check_in_id
        elif deleted.schedule_id:
            about = t.c.schedule_id == deleted.schedule_id
        else:
            about = sa.and_(t.c.job_id == deleted.job_id, t.c.check_in_id == "")
        resolved = conn.execute(
            sa.update(t)
            .where(t.c.namespace == namespace, about, t.c.resolve_time.is_(None))
            .values(resolve_time=now, resolve_reason=deleted.summary)
            .returning(*t.c)
        ).all()
        by_id = {rule.id: rule for rule in rules}
        for row in resolved:
            incident = _incident(row._mapping)
            rule = by_id.get(incident.rule_id)
            if rule is None:
                continue  # a rule's deletion resolves its incidents
            about_it = alerts.Observed(
                None,
                incident.job_id,
                incident.schedule_id,
                deleted.summary,
                check_in_id=incident.check_in_id,
                deleted=True,
            )
            self._resolve(conn, rule, incident, about_it, when, now)

    def _resolve(
        self,
        conn: Connection,
        rule: NotificationRule,
        incident: Incident,
        observed: alerts.Observed,
        when: datetime,
        now: datetime,
    ) -> None:
        """The resolve notification of an incident just resolved, to the route it was sent to (a
        rule moved to another route since would otherwise leave a PagerDuty incident open on the
        old one): PagerDuty always, other routes when the rule asks for RECOVERED."""
        route_row = conn.execute(
            sa.select(notification_routes).where(
                notification_routes.c.namespace == incident.namespace,
                notification_routes.c.id == incident.route_id,
            )
        ).first()
        if route_row is None:
            return  # a route gone has nowhere to send
        route = _route(route_row._mapping)
        if AlertKind.RECOVERED not in rule.kinds and not isinstance(route.destination, PagerDutyDestination):
            return
        summary = f"resolved: {observed.summary} after {incident.alerts} alert(s)"
        self._deliver(
            conn, rule, route, incident, AlertKind.RECOVERED, summary, observed, when, now, resolve=True
        )

    @staticmethod
    def _missed_a_deadline(conn: Connection, namespace: str, observed: alerts.Observed) -> bool:
        if not observed.schedule_id or observed.scheduled_time is None:
            return False
        m = deadline_misses
        found = conn.execute(
            sa.select(m.c.kind)
            .where(
                m.c.namespace == namespace,
                m.c.schedule_id == observed.schedule_id,
                m.c.scheduled_time == observed.scheduled_time,
            )
            .limit(1)
        ).first()
        return found is not None

    def _deliver(
        self,
        conn: Connection,
        rule: NotificationRule,
        route: NotificationRoute,
        incident: Incident,
        kind: AlertKind,
        summary: str,
        observed: alerts.Observed,
        when: datetime,
        now: datetime,
        *,
        resolve: bool,
    ) -> None:
        d = notification_deliveries
        state = DeliveryState.PENDING
        if not resolve:
            sent = conn.execute(
                sa.select(sa.func.count())
                .select_from(d)
                .where(
                    d.c.namespace == route.namespace,
                    d.c.route_id == route.id,
                    d.c.create_time > now - HOUR,
                    d.c.state != DeliveryState.RATE_LIMITED.value,
                    d.c.resolve.is_(False),
                )
            ).scalar_one()
            if sent >= route.per_hour:
                state = DeliveryState.RATE_LIMITED
        namespace = route.namespace
        alert = {
            "kind": kind.name,
            "resolve": resolve,
            "summary": summary,
            "namespace": namespace,
            "job": format_name("job", namespace, observed.job_id) if observed.job_id else "",
            "schedule": schedule_name(namespace, observed.schedule_id) if observed.schedule_id else "",
            "check_in": format_name("check_in", namespace, observed.check_in_id)
            if observed.check_in_id
            else "",
            "execution": format_name("execution", namespace, observed.execution_id)
            if observed.execution_id
            else "",
            "scheduled_time": _time(observed.scheduled_time),
            "time": _time(when),
            "rule": rule.name,
            "route": route.name,
            "incident": incident.name,
            "dedup_key": incident.dedup_key,
            "incident_alerts": incident.alerts,
        }
        conn.execute(
            sa.insert(d).values(
                namespace=namespace,
                route_id=route.id,
                incident_seq=incident.seq,
                kind=kind.value,
                resolve=resolve,
                alert=alert,
                state=state.value,
                attempts=0,
                http_status=None,
                error=""
                if state is DeliveryState.PENDING
                else f"the route sent {route.per_hour} in the last hour",
                summary=summary,
                create_time=now,
                last_attempt_time=None,
                next_attempt_time=now if state is DeliveryState.PENDING else None,
            )
        )

    # The sender

    async def claim_deliveries(self, limit: int, lease: timedelta) -> list[ClaimedDelivery]:
        """Up to `limit` due pending deliveries, with their routes; their next attempt is moved
        `lease` on, so no other replica takes them while this one sends."""
        if not await self._read(self._any_due):
            return []
        return await self._run(self._claim, limit, lease)

    @staticmethod
    def _any_due(conn: Connection, now: datetime) -> bool:
        d = notification_deliveries
        due = sa.select(d.c.seq).where(d.c.state == DeliveryState.PENDING.value, d.c.next_attempt_time <= now)
        return conn.execute(due.limit(1)).first() is not None

    def _claim(self, conn: Connection, limit: int, lease: timedelta, now: datetime) -> list[ClaimedDelivery]:
        d = notification_deliveries
        query = (
            sa.select(d)
            .where(d.c.state == DeliveryState.PENDING.value, d.c.next_attempt_time <= now)
            .order_by(d.c.next_attempt_time)
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        rows = conn.execute(query).all()
        if not rows:
            return []
        conn.execute(
            sa.update(d).where(d.c.seq.in_([r.seq for r in rows])).values(next_attempt_time=now + lease)
        )
        claimed: list[ClaimedDelivery] = []
        routes: dict[tuple[str, str], NotificationRoute | None] = {}
        for row in rows:
            delivery = _delivery(row._mapping)
            key = (delivery.namespace, delivery.route_id)
            if key not in routes:
                found = conn.execute(
                    sa.select(notification_routes).where(
                        notification_routes.c.namespace == key[0], notification_routes.c.id == key[1]
                    )
                ).first()
                routes[key] = _route(found._mapping) if found is not None else None
            route = routes[key]
            if route is None:
                conn.execute(
                    sa.update(d)
                    .where(d.c.seq == delivery.seq)
                    .values(
                        state=DeliveryState.FAILED.value,
                        error="the route was deleted",
                        next_attempt_time=None,
                    )
                )
                continue
            claimed.append(ClaimedDelivery(delivery, route))
        return claimed

    async def record_attempt(
        self,
        delivery: Delivery,
        *,
        delivered: bool,
        http_status: int | None,
        error: str,
        retry_in: timedelta | None,
    ) -> None:
        """The outcome of one attempt; `retry_in` None gives up (FAILED) unless delivered."""

        def work(conn: Connection, now: datetime) -> None:
            state = (
                DeliveryState.DELIVERED
                if delivered
                else DeliveryState.PENDING
                if retry_in is not None
                else DeliveryState.FAILED
            )
            d = notification_deliveries
            conn.execute(
                sa.update(d)
                .where(d.c.seq == delivery.seq)
                .values(
                    state=state.value,
                    attempts=d.c.attempts + 1,
                    http_status=http_status,
                    error=error[:2000],
                    last_attempt_time=now,
                    next_attempt_time=now + retry_in if state is DeliveryState.PENDING and retry_in else None,
                )
            )

        await self._run(work)

    # The deadline watch

    async def deadline_pass(
        self, next_after: Callable[[CheckIn, datetime], datetime | None], limit: int = 500
    ) -> DeadlinePass:
        if not await self._read(self._anything_missed, limit):
            return DeadlinePass([])
        return await self._run(self._deadline_pass, next_after, limit)

    def _anything_missed(self, conn: Connection, limit: int, now: datetime) -> bool:
        """Whether a pass would record something: a miss not recorded yet, or a check-in past its
        grace."""
        m = deadline_misses
        for candidate in self._candidates(conn, limit, now):
            for miss in misses(candidate, now):
                recorded = conn.execute(
                    sa.select(m.c.kind).where(
                        m.c.namespace == candidate.namespace,
                        m.c.schedule_id == candidate.schedule_id,
                        m.c.scheduled_time == miss.scheduled_time,
                        m.c.kind == miss.kind.value,
                    )
                ).first()
                if recorded is None:
                    return True
        overdue = conn.execute(
            sa.select(check_ins.c.next_expected_time, check_ins.c.grace_seconds)
            .where(check_ins.c.next_expected_time.is_not(None), check_ins.c.next_expected_time <= now)
            .limit(limit)
        ).all()
        return any(row.next_expected_time + timedelta(seconds=row.grace_seconds) <= now for row in overdue)

    def _deadline_pass(
        self,
        conn: Connection,
        next_after: Callable[[CheckIn, datetime], datetime | None],
        limit: int,
        now: datetime,
    ) -> DeadlinePass:
        candidates = self._candidates(conn, limit, now)
        recorded: list[tuple[str, DeadlineMiss]] = []
        insert = (postgresql.insert if self._postgres else sqlite.insert)(deadline_misses)
        for candidate in candidates:
            for miss in misses(candidate, now):
                kept = conn.execute(
                    insert.values(
                        namespace=candidate.namespace,
                        schedule_id=candidate.schedule_id,
                        scheduled_time=miss.scheduled_time,
                        kind=miss.kind.value,
                        execution_id=miss.execution_id,
                        deadline=miss.deadline,
                        time=now,
                    )
                    .on_conflict_do_nothing()
                    .returning(deadline_misses.c.kind)
                ).first()
                if kept is None:
                    continue  # recorded before, by this replica or another
                sql_events.insert(
                    conn,
                    [
                        sql_events.row(
                            EventType.DEADLINE_MISSED,
                            candidate.namespace,
                            schedule_name(candidate.namespace, candidate.schedule_id),
                            now,
                            job_id=candidate.job_id,
                            schedule_id=candidate.schedule_id,
                            snapshot=sql_events.deadline_miss_snapshot(miss),
                        )
                    ],
                )
                recorded.append((candidate.namespace, miss))
        recorded.extend(self._missed_check_ins(conn, limit, now, next_after))
        return DeadlinePass(recorded)

    @staticmethod
    def _candidates(conn: Connection, limit: int, now: datetime) -> list[Candidate]:
        """The ticks of schedules with deadlines that have not ended, dispatched or not."""
        s, e = schedules, executions
        candidates: list[Candidate] = []
        # Ticks not even dispatched: the schedule's next fire time is in the past.
        for row in conn.execute(
            sa.select(s.c.namespace, s.c.id, s.c.job_id, s.c.deadlines, s.c.time_zone, s.c.next_fire_time)
            .where(
                s.c.deadlines.is_not(None),
                s.c.paused.is_(False),
                s.c.next_fire_time.is_not(None),
                s.c.next_fire_time <= now,
            )
            .limit(limit)
        ).all():
            deadlines = deadlines_from_json(row.deadlines)
            if deadlines:
                candidates.append(
                    Candidate(row.namespace, row.id, row.job_id, deadlines, row.time_zone, row.next_fire_time)
                )
        # Ticks dispatched and not ended.
        for active in conn.execute(
            sa.select(
                e.c.namespace,
                e.c.id,
                e.c.schedule_id,
                e.c.job_id,
                e.c.state,
                e.c.scheduled_time,
                e.c.start_time,
                s.c.deadlines,
                s.c.time_zone,
            )
            .select_from(e.join(s, sa.and_(s.c.namespace == e.c.namespace, s.c.id == e.c.schedule_id)))
            .where(
                e.c.state.in_(("queued", "running")),
                # Ticks only: a backfill's runs of past ticks are not late, a retry's tick started.
                e.c.trigger == "schedule",
                e.c.schedule_id != "",
                s.c.deadlines.is_not(None),
            )
            .limit(limit)
        ).all():
            deadlines = deadlines_from_json(active.deadlines)
            if deadlines:
                candidates.append(
                    Candidate(
                        active.namespace,
                        active.schedule_id,
                        active.job_id,
                        deadlines,
                        active.time_zone,
                        active.scheduled_time,
                        execution_id=active.id,
                        started=active.start_time if active.state == "running" else None,
                    )
                )
        return candidates

    async def deadline_misses_of(self, namespace: str, schedule_id: str) -> int:
        def work(conn: Connection, now: datetime) -> int:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(deadline_misses)
                    .where(
                        deadline_misses.c.namespace == namespace, deadline_misses.c.schedule_id == schedule_id
                    )
                ).scalar_one()
            )

        return await self._run(work)

    async def prune(self, before: datetime) -> None:
        """Forget deadline misses, resolved incidents and finished deliveries older than `before`."""

        def work(conn: Connection, now: datetime) -> None:
            conn.execute(sa.delete(deadline_misses).where(deadline_misses.c.time < before))
            d = notification_deliveries
            conn.execute(
                sa.delete(d).where(d.c.create_time < before, d.c.state != DeliveryState.PENDING.value)
            )
            t = notification_incidents
            conn.execute(sa.delete(t).where(t.c.resolve_time < before))

        await self._run(work)


def _sized(
    conn: Connection, query: sa.Select[Any], order: Sequence[tuple[str, bool]], page: Page
) -> tuple[Sequence[Row[Any]], bool]:
    """A page of `query` bounded in bytes as well as in count (`sql_paging`), and whether more follow."""
    postgres = conn.dialect.name == "postgresql"
    rows = conn.execute(sql_paging.sized_page(query, order, page.size, postgres=postgres)).all()
    return sql_paging.kept(rows, page.size)
