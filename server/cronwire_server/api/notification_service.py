"""cronwire.v1.NotificationService: protos in, checks, store calls, protos out."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from cronwire.v1 import notification_pb2, notification_service_pb2, notification_service_pb2_grpc
from cronwire_server.api import fields, scope
from cronwire_server.api.convert import set_time
from cronwire_server.api.masks import mask_paths, merge
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import unary
from cronwire_server.core import alerts, names
from cronwire_server.core.alerts import (
    AlertKind,
    Delivery,
    DeliveryState,
    EmailDestination,
    EmailSecurity,
    Incident,
    NotificationRoute,
    NotificationRule,
    PagerDutyDestination,
    SlackDestination,
    WebhookDestination,
)
from cronwire_server.core.errors import EtagMismatch, InvalidArgument
from cronwire_server.core.names import format_name, parse_name
from cronwire_server.executors.address_policy import HttpPolicy
from cronwire_server.executors.http_runner import check_url
from cronwire_server.secrets import Secrets
from cronwire_server.storage.sql_notifications import NotificationStore

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

ROUTE_MUTABLE = frozenset({"description", "webhook", "slack", "pagerduty", "email", "max_per_hour"})
DESTINATIONS = frozenset({"webhook", "slack", "pagerduty", "email"})
RULE_MUTABLE = frozenset({"description", "route", "kinds", "job", "schedule", "labels"})
OUTPUT_ONLY = frozenset({"name", "create_time", "update_time", "etag"})

_KIND_PB = {k: getattr(notification_pb2, f"ALERT_KIND_{k.name}") for k in AlertKind}
_KIND = {v: k for k, v in _KIND_PB.items()}
_SECURITY_PB = {s: getattr(notification_pb2, f"EMAIL_SECURITY_{s.name}") for s in EmailSecurity}
_SECURITY = {v: k for k, v in _SECURITY_PB.items()}
_STATE_PB = {s: getattr(notification_pb2, f"DELIVERY_STATE_{s.name}") for s in DeliveryState}


# Routes


def route_from_pb(
    message: notification_pb2.NotificationRoute, namespace: str, route_id: str
) -> NotificationRoute:
    which = message.WhichOneof("destination")
    destination: alerts.Destination
    if which == "webhook":
        destination = WebhookDestination(message.webhook.url, message.webhook.signing_secret)
    elif which == "slack":
        destination = SlackDestination(message.slack.url_secret)
    elif which == "pagerduty":
        destination = PagerDutyDestination(message.pagerduty.routing_key_secret, message.pagerduty.events_url)
    elif which == "email":
        e = message.email
        security = EmailSecurity.STARTTLS
        if e.security:
            if e.security not in _SECURITY:
                raise InvalidArgument.field("email.security", f"unknown value {e.security}")
            security = _SECURITY[e.security]
        destination = EmailDestination(
            smtp_host=e.smtp_host,
            smtp_port=e.smtp_port,
            security=security,
            username=e.username,
            password_secret=e.password_secret,
            from_address=e.from_address,
            to_addresses=tuple(e.to_addresses),
        )
    else:
        raise InvalidArgument.field("destination", "set one of webhook, slack, pagerduty, email")
    return NotificationRoute(
        namespace=namespace,
        id=route_id,
        destination=destination,
        description=message.description,
        max_per_hour=message.max_per_hour,
    )


def route_to_pb(route: NotificationRoute) -> notification_pb2.NotificationRoute:
    message = notification_pb2.NotificationRoute(
        name=route.name, description=route.description, max_per_hour=route.max_per_hour, etag=route.etag
    )
    d = route.destination
    if isinstance(d, WebhookDestination):
        message.webhook.url = d.url
        message.webhook.signing_secret = d.signing_secret
    elif isinstance(d, SlackDestination):
        message.slack.url_secret = d.url_secret
    elif isinstance(d, PagerDutyDestination):
        message.pagerduty.routing_key_secret = d.routing_key_secret
        message.pagerduty.events_url = d.events_url
    else:
        message.email.smtp_host = d.smtp_host
        message.email.smtp_port = d.smtp_port
        message.email.security = _SECURITY_PB[d.security]
        message.email.username = d.username
        message.email.password_secret = d.password_secret
        message.email.from_address = d.from_address
        message.email.to_addresses.extend(d.to_addresses)
    set_time(message.create_time, route.create_time)
    set_time(message.update_time, route.update_time)
    return message


# Rules


def _same_namespace(value: str, kind: str, field: str, namespace: str) -> str:
    if not value:
        return ""
    parsed = parse_name(value, kind, field)
    if parsed.namespace != namespace:
        raise InvalidArgument.field(field, f"must be a {kind} of the rule's namespace")
    return parsed.id


def rule_from_pb(
    message: notification_pb2.NotificationRule, namespace: str, rule_id: str
) -> NotificationRule:
    fields.required(bool(message.route), "route")
    kinds: set[AlertKind] = set()
    for i, value in enumerate(message.kinds):
        if value not in _KIND:
            raise InvalidArgument.field(f"kinds[{i}]", "must be an alert kind (not UNSPECIFIED)")
        kinds.add(_KIND[value])
    for key in message.labels:
        if not key or len(key) > 63:
            raise InvalidArgument.field("labels", f"{key!r} is not a label key")
    return alerts.check_rule(
        NotificationRule(
            namespace=namespace,
            id=rule_id,
            route_id=_same_namespace(message.route, "route", "route", namespace),
            kinds=frozenset(kinds),
            description=message.description,
            job_id=_same_namespace(message.job, "job", "job", namespace),
            schedule_id=_same_namespace(message.schedule, "schedule", "schedule", namespace),
            labels=dict(message.labels),
        )
    )


def rule_to_pb(rule: NotificationRule) -> notification_pb2.NotificationRule:
    message = notification_pb2.NotificationRule(
        name=rule.name,
        description=rule.description,
        route=format_name("route", rule.namespace, rule.route_id),
        kinds=[_KIND_PB[k] for k in sorted(rule.kinds, key=lambda k: _KIND_PB[k])],
        job=format_name("job", rule.namespace, rule.job_id) if rule.job_id else "",
        schedule=format_name("schedule", rule.namespace, rule.schedule_id) if rule.schedule_id else "",
        labels=rule.labels,
        etag=rule.etag,
    )
    set_time(message.create_time, rule.create_time)
    set_time(message.update_time, rule.update_time)
    return message


def incident_to_pb(incident: Incident) -> notification_pb2.Incident:
    ns = incident.namespace
    message = notification_pb2.Incident(
        name=incident.name,
        rule=format_name("rule", ns, incident.rule_id),
        route=format_name("route", ns, incident.route_id),
        job=format_name("job", ns, incident.job_id) if incident.job_id else "",
        schedule=format_name("schedule", ns, incident.schedule_id) if incident.schedule_id else "",
        kind=_KIND_PB[incident.kind],
        summary=incident.summary,
        alerts=incident.alerts,
        dedup_key=incident.dedup_key,
        check_in=format_name("check_in", ns, incident.check_in_id) if incident.check_in_id else "",
        resolve_reason=incident.resolve_reason,
    )
    set_time(message.open_time, incident.open_time)
    set_time(message.resolve_time, incident.resolve_time)
    return message


def delivery_to_pb(delivery: Delivery) -> notification_pb2.NotificationDelivery:
    ns = delivery.namespace
    message = notification_pb2.NotificationDelivery(
        name=delivery.name,
        route=format_name("route", ns, delivery.route_id),
        incident=format_name("incident", ns, f"i{delivery.incident_seq}"),
        kind=_KIND_PB[delivery.kind],
        state=_STATE_PB[delivery.state],
        attempts=delivery.attempts,
        http_status=delivery.http_status or 0,
        error=delivery.error,
        summary=delivery.summary,
    )
    set_time(message.create_time, delivery.create_time)
    set_time(message.last_attempt_time, delivery.last_attempt_time)
    set_time(message.next_attempt_time, delivery.next_attempt_time)
    return message


class NotificationService(notification_service_pb2_grpc.NotificationServiceServicer):
    def __init__(self, store: NotificationStore, policy: HttpPolicy, secrets: Secrets) -> None:
        self._store = store
        self._policy = policy
        self._secrets = secrets

    def _checked_route(self, route: NotificationRoute) -> NotificationRoute:
        alerts.check_route(route, lambda url: check_url(url, self._policy))
        d = route.destination
        named = {
            WebhookDestination: ("webhook.signing_secret", "signing_secret"),
            SlackDestination: ("slack.url_secret", "url_secret"),
            PagerDutyDestination: ("pagerduty.routing_key_secret", "routing_key_secret"),
            EmailDestination: ("email.password_secret", "password_secret"),
        }[type(d)]
        secret = getattr(d, named[1])
        if secret:
            # A secret of other namespaces only is refused now; one defined nowhere yet at send.
            refused = self._secrets.refusals({"env": {named[0]: {"secret": secret}}}, route.namespace)
            if refused:
                raise InvalidArgument.field(named[0], refused[0][2])
        return route

    async def _validated(self, item: T, exists: Callable[[], Any], kind: str, name: str) -> T:
        """validate_only for creates: the item as it would be stored, or ALREADY_EXISTS."""
        from cronwire_server.core.errors import AlreadyExists, NotFound

        try:
            await exists()
        except NotFound:
            now = await self._store.now()
            return dataclasses.replace(item, create_time=now, update_time=now)  # type: ignore[type-var]
        raise AlreadyExists(kind, name)

    @unary
    async def CreateNotificationRoute(
        self, request: notification_service_pb2.CreateNotificationRouteRequest, context: Context
    ) -> notification_service_pb2.CreateNotificationRouteResponse:
        namespace = scope.parent(request.parent)
        route_id = names.check_id(request.route_id, "route_id") if request.route_id else names.new_id("route")
        request_id = fields.request_id(request.request_id)
        fields.required(request.HasField("route"), "route")
        with fields.under("route"):
            route = self._checked_route(route_from_pb(request.route, namespace, route_id))
        if request.validate_only:
            route = await self._validated(
                route, lambda: self._store.get_route(namespace, route_id), "route", route.name
            )
        else:
            route = await self._store.create_route(route, request_id)
        return notification_service_pb2.CreateNotificationRouteResponse(route=route_to_pb(route))

    @unary
    async def GetNotificationRoute(
        self, request: notification_service_pb2.GetNotificationRouteRequest, context: Context
    ) -> notification_service_pb2.GetNotificationRouteResponse:
        name = scope.name(request.name, "route")
        route = await self._store.get_route(name.namespace, name.id)
        return notification_service_pb2.GetNotificationRouteResponse(route=route_to_pb(route))

    @unary
    async def ListNotificationRoutes(
        self, request: notification_service_pb2.ListNotificationRoutesRequest, context: Context
    ) -> notification_service_pb2.ListNotificationRoutesResponse:
        namespace = scope.parent(request.parent)
        filters = {"namespace": namespace, "kind": "routes"}
        page = page_from_request(request.page_size, request.page_token, filters)
        listing = await self._store.list_routes(namespace, page)
        return notification_service_pb2.ListNotificationRoutesResponse(
            routes=[route_to_pb(r) for r in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )

    @unary
    async def UpdateNotificationRoute(
        self, request: notification_service_pb2.UpdateNotificationRouteRequest, context: Context
    ) -> notification_service_pb2.UpdateNotificationRouteResponse:
        fields.required(request.HasField("route"), "route")
        update = request.route
        name = scope.name(update.name, "route", "route.name")
        mask = request.update_mask if request.HasField("update_mask") else None
        paths = mask_paths(update, mask, mutable=ROUTE_MUTABLE, output_only=OUTPUT_ONLY)
        current = await self._store.get_route(name.namespace, name.id)
        if update.etag and update.etag != current.etag:
            raise EtagMismatch("route", current.name)
        merged = route_to_pb(current)
        named = {p.split(".")[0] for p in paths.paths} & DESTINATIONS
        held = merged.WhichOneof("destination") or "webhook"
        if named and named != {held}:
            # Another kind (or `*`) replaces the destination; a path into the one held
            # (`email.password_secret`) changes that field and keeps the others.
            merged.ClearField(held)
        merge(merged, update, paths)
        with fields.under("route"):
            route = self._checked_route(route_from_pb(merged, name.namespace, name.id))
        route.create_time = current.create_time
        if request.validate_only:
            route.update_time, route.etag = current.update_time, current.etag
        else:
            route = await self._store.update_route(route, update.etag or current.etag)
        return notification_service_pb2.UpdateNotificationRouteResponse(route=route_to_pb(route))

    @unary
    async def DeleteNotificationRoute(
        self, request: notification_service_pb2.DeleteNotificationRouteRequest, context: Context
    ) -> notification_service_pb2.DeleteNotificationRouteResponse:
        name = scope.name(request.name, "route")
        await self._store.delete_route(name.namespace, name.id, request.etag)
        return notification_service_pb2.DeleteNotificationRouteResponse()

    @unary
    async def CreateNotificationRule(
        self, request: notification_service_pb2.CreateNotificationRuleRequest, context: Context
    ) -> notification_service_pb2.CreateNotificationRuleResponse:
        namespace = scope.parent(request.parent)
        rule_id = names.check_id(request.rule_id, "rule_id") if request.rule_id else names.new_id("rule")
        request_id = fields.request_id(request.request_id)
        fields.required(request.HasField("rule"), "rule")
        with fields.under("rule"):
            rule = rule_from_pb(request.rule, namespace, rule_id)
        if request.validate_only:
            await self._store.get_route(namespace, rule.route_id)
            rule = await self._validated(
                rule, lambda: self._store.get_rule(namespace, rule_id), "rule", rule.name
            )
        else:
            rule = await self._store.create_rule(rule, request_id)
        return notification_service_pb2.CreateNotificationRuleResponse(rule=rule_to_pb(rule))

    @unary
    async def GetNotificationRule(
        self, request: notification_service_pb2.GetNotificationRuleRequest, context: Context
    ) -> notification_service_pb2.GetNotificationRuleResponse:
        name = scope.name(request.name, "rule")
        rule = await self._store.get_rule(name.namespace, name.id)
        return notification_service_pb2.GetNotificationRuleResponse(rule=rule_to_pb(rule))

    @unary
    async def ListNotificationRules(
        self, request: notification_service_pb2.ListNotificationRulesRequest, context: Context
    ) -> notification_service_pb2.ListNotificationRulesResponse:
        namespace = scope.parent(request.parent)
        filters = {"namespace": namespace, "kind": "rules"}
        page = page_from_request(request.page_size, request.page_token, filters)
        listing = await self._store.list_rules(namespace, page)
        return notification_service_pb2.ListNotificationRulesResponse(
            rules=[rule_to_pb(r) for r in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )

    @unary
    async def UpdateNotificationRule(
        self, request: notification_service_pb2.UpdateNotificationRuleRequest, context: Context
    ) -> notification_service_pb2.UpdateNotificationRuleResponse:
        fields.required(request.HasField("rule"), "rule")
        update = request.rule
        name = scope.name(update.name, "rule", "rule.name")
        mask = request.update_mask if request.HasField("update_mask") else None
        paths = mask_paths(update, mask, mutable=RULE_MUTABLE, output_only=OUTPUT_ONLY)
        current = await self._store.get_rule(name.namespace, name.id)
        if update.etag and update.etag != current.etag:
            raise EtagMismatch("rule", current.name)
        merged = rule_to_pb(current)
        merge(merged, update, paths)
        with fields.under("rule"):
            rule = rule_from_pb(merged, name.namespace, name.id)
        rule.create_time = current.create_time
        if request.validate_only:
            await self._store.get_route(name.namespace, rule.route_id)
            rule.update_time, rule.etag = current.update_time, current.etag
        else:
            rule = await self._store.update_rule(rule, update.etag or current.etag)
        return notification_service_pb2.UpdateNotificationRuleResponse(rule=rule_to_pb(rule))

    @unary
    async def DeleteNotificationRule(
        self, request: notification_service_pb2.DeleteNotificationRuleRequest, context: Context
    ) -> notification_service_pb2.DeleteNotificationRuleResponse:
        name = scope.name(request.name, "rule")
        await self._store.delete_rule(name.namespace, name.id, request.etag)
        return notification_service_pb2.DeleteNotificationRuleResponse()

    @unary
    async def ListIncidents(
        self, request: notification_service_pb2.ListIncidentsRequest, context: Context
    ) -> notification_service_pb2.ListIncidentsResponse:
        namespace = scope.parent(request.parent)
        job_id = _same_namespace(request.job, "job", "job", namespace)
        schedule_id = _same_namespace(request.schedule, "schedule", "schedule", namespace)
        filters = {
            "namespace": namespace,
            "kind": "incidents",
            "job": job_id,
            "schedule": schedule_id,
            "open": request.open_only,
        }
        page = page_from_request(request.page_size, request.page_token, filters)
        listing = await self._store.list_incidents(
            namespace, page, job_id=job_id, schedule_id=schedule_id, open_only=request.open_only
        )
        return notification_service_pb2.ListIncidentsResponse(
            incidents=[incident_to_pb(i) for i in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )

    @unary
    async def ListNotificationDeliveries(
        self, request: notification_service_pb2.ListNotificationDeliveriesRequest, context: Context
    ) -> notification_service_pb2.ListNotificationDeliveriesResponse:
        namespace = scope.parent(request.parent)
        route_id = _same_namespace(request.route, "route", "route", namespace)
        filters = {"namespace": namespace, "kind": "deliveries", "route": route_id}
        page = page_from_request(request.page_size, request.page_token, filters)
        listing = await self._store.list_deliveries(namespace, page, route_id=route_id)
        return notification_service_pb2.ListNotificationDeliveriesResponse(
            deliveries=[delivery_to_pb(d) for d in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )
