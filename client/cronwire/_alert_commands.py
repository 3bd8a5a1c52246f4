"""`cronwire notifications routes|rules|deliveries|incidents`: alerts over NotificationService."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from cronwire._alerts import (
    AlertKind,
    CheckIn,
    CheckInPingKind,
    Destination,
    EmailDestination,
    EmailSecurity,
    Incident,
    NotificationDelivery,
    NotificationRoute,
    NotificationRule,
    PagerDutyDestination,
    SlackDestination,
    WebhookDestination,
    alert_kinds,
)
from cronwire._cli_args import UsageError, duration_arg, trigger_flags
from cronwire._commands import EXIT_OK, Context, _triggers, _zoned
from cronwire._documents import to_document
from cronwire._output import details, dump, short, table, trigger_text

Leaf = Callable[..., argparse.ArgumentParser]


def _kinds(value: str) -> list[AlertKind]:
    try:
        return alert_kinds(k for k in value.split(",") if k.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _label(value: str) -> tuple[str, str]:
    key, sep, wanted = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE")
    return key, wanted


def _label_flag(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--label", action="append", type=_label, default=[], metavar="KEY=VALUE", help=text)


def _get_and_delete(
    leaf: Leaf,
    group: argparse._SubParsersAction[argparse.ArgumentParser],
    noun: str,
    get: Callable[[Context], int],
    delete: Callable[[Context], int],
    delete_help: str,
) -> None:
    """`get NAME` and `delete NAME [--etag]` of a resource kind."""
    p = leaf(group, "get", get, f"show a {noun}")
    p.add_argument("name", help=f"the {noun} (id or name)")
    p = leaf(group, "delete", delete, delete_help)
    p.add_argument("name", help=f"the {noun} (id or name)")
    p.add_argument("--etag", help=f"delete only if the {noun} still has this etag")


def _kind_names(kinds: list[AlertKind]) -> str:
    return ",".join(k.name for k in kinds)


def _destination_flags(parser: argparse.ArgumentParser, *, create: bool) -> None:
    where = parser.add_argument_group(
        "destination (one of)"
        if create
        else "destination: one of --webhook, --slack, --pagerduty, --email replaces it (the flags "
        "it does not give are kept if it is of the same kind); the other flags change one field of it"
    )
    where.add_argument("--webhook", metavar="URL", help="POST each alert as JSON to URL")
    where.add_argument("--signing-secret", metavar="SECRET", help="webhook: sign the body with this secret")
    where.add_argument("--slack", metavar="SECRET", help="the secret holding a Slack incoming webhook URL")
    where.add_argument("--pagerduty", metavar="SECRET", help="the secret holding a PagerDuty routing key")
    where.add_argument("--pagerduty-url", metavar="URL", help="PagerDuty: another Events API v2 URL")
    where.add_argument("--email", metavar="TO[,TO]", help="mail the alerts to these addresses")
    where.add_argument("--from", dest="from_address", metavar="ADDRESS", help="email: the sender")
    where.add_argument("--smtp-host", metavar="HOST", help="email: the SMTP server")
    where.add_argument(
        "--smtp-port", type=int, default=0 if create else None, metavar="PORT", help="email: its port"
    )
    where.add_argument(
        "--smtp-security",
        choices=["starttls", "smtps", "none"],
        default="starttls" if create else None,
        help="email: how the connection is protected" + (" (default starttls)" if create else ""),
    )
    where.add_argument("--smtp-user", metavar="USER", help="email: the user to log in as")
    where.add_argument(
        "--smtp-password-secret", metavar="SECRET", help="email: the secret holding its password"
    )


def add_alert_commands(top: argparse._SubParsersAction[argparse.ArgumentParser], leaf: Leaf) -> None:
    alerts = top.add_parser(
        "notifications", help="alerts: where they go (routes), which go where (rules), what was sent"
    ).add_subparsers(dest="topic", metavar="TOPIC", required=True)
    routes = alerts.add_parser("routes", help="where notifications go").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = leaf(
        routes,
        "create",
        cmd_routes_create,
        "create a route: a webhook, a Slack webhook, PagerDuty or email",
        epilog="secrets are named, never given: the server resolves them when it sends\n"
        "examples:\n"
        "  cronwire notifications routes create ops-hook --webhook https://ops.example.com/cronwire "
        "--signing-secret OPS_HOOK_KEY\n"
        "  cronwire notifications routes create chat --slack SLACK_WEBHOOK_URL\n"
        "  cronwire notifications routes create pager --pagerduty PD_ROUTING_KEY\n"
        "  cronwire notifications routes create mail --email oncall@example.com --from cronwire@example.com "
        "--smtp-host smtp.example.com --smtp-user cronwire --smtp-password-secret SMTP_PASSWORD",
    )
    p.add_argument("name", help="the route's id (or full name)")
    _destination_flags(p, create=True)
    p.add_argument("--max-per-hour", type=int, default=0, metavar="N", help="at most N a hour (default 30)")
    p.add_argument("--description", default="", help="free text")
    p.add_argument("--request-id", help="a retried create with the same id returns the first route")
    p = leaf(
        routes,
        "update",
        cmd_routes_update,
        "change the fields given of a route",
        epilog="examples:\n"
        "  cronwire notifications routes update ops-hook --webhook https://ops.example.com/alerts\n"
        "  cronwire notifications routes update mail --smtp-password-secret SMTP_PASSWORD_2026\n"
        "  cronwire notifications routes update ops-hook --slack SLACK_WEBHOOK_URL --max-per-hour 60",
    )
    p.add_argument("name", help="the route (id or name)")
    _destination_flags(p, create=False)
    p.add_argument("--max-per-hour", type=int, metavar="N", help="at most N a hour (0: the default, 30)")
    p.add_argument("--description", help="free text")
    p.add_argument("--etag", help="update only if the route still has this etag")
    leaf(routes, "list", cmd_routes_list, "list the routes of the namespace")
    _get_and_delete(leaf, routes, "route", cmd_routes_get, cmd_routes_delete, "delete a route no rule names")

    rules = alerts.add_parser("rules", help="which alerts go to which route").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = leaf(
        rules,
        "create",
        cmd_rules_create,
        "create a rule: alerts of some kinds about some jobs notify a route, once per incident",
        epilog="kinds: " + ", ".join(k.name.lower().replace("_", "-") for k in AlertKind) + "\n"
        "example:\n"
        "  cronwire notifications rules create backup-failures --route ops-hook "
        "--on failed,timed-out,recovered --job backup",
    )
    p.add_argument("name", help="the rule's id (or full name)")
    p.add_argument("--route", required=True, help="the route to notify (id or name)")
    p.add_argument(
        "--on", dest="kinds", type=_kinds, required=True, metavar="KIND[,KIND]", help="alert kinds"
    )
    p.add_argument("--job", help="only alerts about this job")
    p.add_argument("--schedule", help="only alerts about this schedule")
    _label_flag(p, "only jobs with this label")
    p.add_argument("--description", default="", help="free text")
    p.add_argument("--request-id", help="a retried create with the same id returns the first rule")
    p = leaf(
        rules,
        "update",
        cmd_rules_update,
        "change the fields given of a rule",
        epilog="examples:\n"
        "  cronwire notifications rules update backup-failures --route pager\n"
        "  cronwire notifications rules update backup-failures --on failed,timed-out --any-job "
        "--label team=data",
    )
    p.add_argument("name", help="the rule (id or name)")
    p.add_argument("--route", help="the route to notify (id or name)")
    p.add_argument(
        "--on", dest="kinds", type=_kinds, metavar="KIND[,KIND]", help="alert kinds (replacing the rule's)"
    )
    job = p.add_mutually_exclusive_group()
    job.add_argument("--job", help="only alerts about this job")
    job.add_argument("--any-job", action="store_true", help="alerts about any job again")
    schedule = p.add_mutually_exclusive_group()
    schedule.add_argument("--schedule", help="only alerts about this schedule")
    schedule.add_argument("--any-schedule", action="store_true", help="alerts about any schedule again")
    _label_flag(p, "only jobs with this label (merged into the rule's; KEY= removes it)")
    p.add_argument("--description", help="free text")
    p.add_argument("--etag", help="update only if the rule still has this etag")
    leaf(rules, "list", cmd_rules_list, "list the rules of the namespace")
    _get_and_delete(leaf, rules, "rule", cmd_rules_get, cmd_rules_delete, "delete a rule")

    p = leaf(alerts, "deliveries", cmd_deliveries, "the notifications sent or being sent, newest first")
    p.add_argument("--route", help="only those to this route")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")
    p = leaf(alerts, "incidents", cmd_incidents, "the incidents alerts opened, newest first")
    p.add_argument("--job", help="only those of this job")
    p.add_argument("--schedule", help="only those of this schedule")
    p.add_argument("--open", action="store_true", help="only those still open")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")


# Views


def destination_text(destination: Destination | None) -> str:
    d = destination
    if isinstance(d, WebhookDestination):
        return f"webhook {d.url}" + (f" (signed with secret {d.signing_secret})" if d.signing_secret else "")
    if isinstance(d, SlackDestination):
        return f"slack (URL in secret {d.url_secret})"
    if isinstance(d, PagerDutyDestination):
        where = f" at {d.events_url}" if d.events_url else ""
        return f"pagerduty (routing key in secret {d.routing_key_secret}){where}"
    if isinstance(d, EmailDestination):
        security = d.security.name if d.security else "STARTTLS"
        port = f":{d.smtp_port}" if d.smtp_port else ""
        login = f", login {d.username}" if d.username else ""
        login += f", password in secret {d.password_secret}" if d.password_secret else ""
        to = ", ".join(d.to_addresses)
        return f"email to {to} from {d.from_address} via {d.smtp_host}{port} ({security}{login})"
    return "-"


def route_details(route: NotificationRoute) -> str:
    return details(
        [
            ("name", route.name),
            ("destination", destination_text(route.destination)),
            ("max per hour", route.max_per_hour or "30 (default)"),
            ("description", route.description),
            ("created", route.create_time),
            ("etag", route.etag),
        ]
    )


def rule_details(rule: NotificationRule) -> str:
    return details(
        [
            ("name", rule.name),
            ("route", rule.route),
            ("on", _kind_names(rule.kinds)),
            ("job", rule.job or "any"),
            ("schedule", rule.schedule or "any"),
            ("labels", ", ".join(f"{k}={v}" for k, v in sorted(rule.labels.items()))),
            ("description", rule.description),
            ("created", rule.create_time),
            ("etag", rule.etag),
        ]
    )


def incidents_table(incidents: list[Incident], namespace: str) -> str:
    ours = f"namespaces/{namespace}/"
    return table(
        [
            "INCIDENT",
            "KIND",
            "JOB OR CHECK-IN",
            "SCHEDULE",
            "ALERTS",
            "OPENED",
            "RESOLVED",
            "RULE",
            "RESOLVED BY",
        ],
        [
            [
                short(i.name, namespace),
                i.kind.name if i.kind else None,
                short(i.job or i.check_in, namespace),
                short(i.schedule, namespace),
                i.alerts,
                i.open_time,
                i.resolve_time,
                short(i.rule, namespace),
                i.resolve_reason.replace(ours, "")[:80],
            ]
            for i in incidents
        ],
    )


def deliveries_table(deliveries: list[NotificationDelivery], namespace: str) -> str:
    return table(
        ["DELIVERY", "ROUTE", "KIND", "STATE", "ATTEMPTS", "STATUS", "CREATED", "ERROR"],
        [
            [
                short(d.name, namespace),
                short(d.route, namespace),
                d.kind.name if d.kind else None,
                d.state.name if d.state else None,
                d.attempts,
                d.http_status,
                d.create_time,
                d.error[:80],
            ]
            for d in deliveries
        ],
    )


# Commands


def _destination(args: argparse.Namespace) -> Destination:
    given = [flag for flag in ("webhook", "slack", "pagerduty", "email") if getattr(args, flag)]
    if len(given) != 1:
        raise UsageError(
            "give one destination: --webhook URL, --slack SECRET, --pagerduty SECRET or --email TO"
        )
    if args.webhook:
        return WebhookDestination(args.webhook, args.signing_secret or "")
    if args.slack:
        return SlackDestination(args.slack)
    if args.pagerduty:
        return PagerDutyDestination(args.pagerduty, args.pagerduty_url or "")
    if not args.from_address or not args.smtp_host:
        raise UsageError("--email needs --from ADDRESS and --smtp-host HOST")
    return EmailDestination(
        smtp_host=args.smtp_host,
        from_address=args.from_address,
        to_addresses=[a.strip() for a in args.email.split(",") if a.strip()],
        smtp_port=args.smtp_port or 0,
        security=EmailSecurity[(args.smtp_security or "starttls").upper()],
        username=args.smtp_user or "",
        password_secret=args.smtp_password_secret or "",
    )


def cmd_routes_create(ctx: Context) -> int:
    args = ctx.args
    route = ctx.client.create_notification_route(
        args.name,
        destination=_destination(args),
        description=args.description,
        max_per_hour=args.max_per_hour,
        request_id=args.request_id or "",
    )
    ctx.show(route, lambda: route_details(route))
    return EXIT_OK


# The flags that change one field of a destination of their kind, by the field they set.
_DESTINATION_FIELDS: dict[type[Any], dict[str, str]] = {
    WebhookDestination: {"webhook": "url", "signing_secret": "signing_secret"},
    SlackDestination: {"slack": "url_secret"},
    PagerDutyDestination: {"pagerduty": "routing_key_secret", "pagerduty_url": "events_url"},
    EmailDestination: {
        "email": "to_addresses",
        "from_address": "from_address",
        "smtp_host": "smtp_host",
        "smtp_port": "smtp_port",
        "smtp_security": "security",
        "smtp_user": "username",
        "smtp_password_secret": "password_secret",
    },
}
_KIND_FLAG: dict[type[Any], str] = {
    WebhookDestination: "webhook",
    SlackDestination: "slack",
    PagerDutyDestination: "pagerduty",
    EmailDestination: "email",
}


def _flag(attribute: str) -> str:
    return "--from" if attribute == "from_address" else "--" + attribute.replace("_", "-")


def _changed_destination(ctx: Context, route: str) -> tuple[Destination | None, str]:
    """The route's destination as the flags change it, and the etag it was read with; None when
    no destination flag is given."""
    args = ctx.args
    given = {
        kind: [flag for flag in fields if getattr(args, flag) is not None]
        for kind, fields in _DESTINATION_FIELDS.items()
    }
    touched = [kind for kind, flags in given.items() if flags]
    if not touched:
        return None, ""
    named = [kind for kind in touched if getattr(args, _KIND_FLAG[kind]) is not None]
    if len(touched) > 1:
        flags = ", ".join(_flag(f) for kind in touched for f in given[kind])
        raise UsageError(f"{flags}: flags of different destinations; give those of one")
    kind = touched[0]
    current = ctx.client.get_notification_route(route)
    if isinstance(current.destination, kind):
        changes: dict[str, Any] = {}
        for flag in given[kind]:
            value = getattr(args, flag)
            if flag == "email":
                value = [a.strip() for a in value.split(",") if a.strip()]
            elif flag == "smtp_security":
                value = EmailSecurity[value.upper()]
            changes[_DESTINATION_FIELDS[kind][flag]] = value
        return dataclasses.replace(current.destination, **changes), current.etag
    if not named:
        flags = ", ".join(_flag(f) for f in given[kind])
        raise UsageError(
            f"route {args.name} sends to {destination_text(current.destination)}; {flags}: flags "
            f"of {_KIND_FLAG[kind]} destinations (give --{_KIND_FLAG[kind]} to replace it)"
        )
    return _destination(args), current.etag


def cmd_routes_update(ctx: Context) -> int:
    args = ctx.args
    fields: dict[str, Any] = {}
    destination, etag = _changed_destination(ctx, args.name)
    if destination is not None:
        fields["destination"] = destination
    if args.max_per_hour is not None:
        fields["max_per_hour"] = args.max_per_hour
    if args.description is not None:
        fields["description"] = args.description
    if not fields:
        raise UsageError("nothing to update: give at least one flag to change")
    route = ctx.client.update_notification_route(args.name, etag=args.etag or etag, **fields)
    ctx.show(route, lambda: route_details(route))
    return EXIT_OK


def cmd_routes_list(ctx: Context) -> int:
    routes = list(ctx.client.iter_notification_routes())
    ctx.show(
        routes,
        lambda: table(
            ["NAME", "DESTINATION", "MAX/HOUR"],
            [
                [short(r.name, ctx.namespace), destination_text(r.destination), r.max_per_hour or 30]
                for r in routes
            ],
        ),
    )
    return EXIT_OK


def cmd_routes_get(ctx: Context) -> int:
    route = ctx.client.get_notification_route(ctx.args.name)
    ctx.show(route, lambda: route_details(route))
    return EXIT_OK


def _deleted(ctx: Context, kind: str, name: str) -> None:
    if ctx.fmt == "table":
        ctx.print(f"{kind} {ctx.args.name} deleted\n")
    else:
        ctx.print(dump({"deleted": name}, ctx.fmt))


def cmd_routes_delete(ctx: Context) -> int:
    ctx.client.delete_notification_route(ctx.args.name, etag=ctx.args.etag or "")
    _deleted(ctx, "route", ctx.client._route_name(ctx.args.name))
    return EXIT_OK


def cmd_rules_create(ctx: Context) -> int:
    args = ctx.args
    rule = ctx.client.create_notification_rule(
        args.name,
        route=args.route,
        kinds=args.kinds,
        job=args.job,
        schedule=args.schedule,
        labels=dict(args.label),
        description=args.description,
        request_id=args.request_id or "",
    )
    ctx.show(rule, lambda: rule_details(rule))
    return EXIT_OK


def cmd_rules_update(ctx: Context) -> int:
    args = ctx.args
    etag = args.etag or ""
    fields: dict[str, Any] = {}
    if args.route is not None:
        fields["route"] = args.route
    if args.kinds is not None:
        fields["kinds"] = args.kinds
    if args.job is not None or args.any_job:
        fields["job"] = args.job
    if args.schedule is not None or args.any_schedule:
        fields["schedule"] = args.schedule
    if args.label:
        current = ctx.client.get_notification_rule(args.name)
        etag = etag or current.etag
        fields["labels"] = _merged_labels(current.labels, args.label)
    if args.description is not None:
        fields["description"] = args.description
    if not fields:
        raise UsageError("nothing to update: give at least one flag to change")
    rule = ctx.client.update_notification_rule(args.name, etag=etag, **fields)
    ctx.show(rule, lambda: rule_details(rule))
    return EXIT_OK


def _merged_labels(current: dict[str, str], given: list[tuple[str, str]]) -> dict[str, str]:
    """The labels with those given set, and those given as KEY= removed."""
    merged = {**current, **dict(given)}
    return {key: value for key, value in merged.items() if value != ""}


def cmd_rules_list(ctx: Context) -> int:
    rules = list(ctx.client.iter_notification_rules())
    ctx.show(
        rules,
        lambda: table(
            ["NAME", "ROUTE", "ON", "JOB", "SCHEDULE", "LABELS"],
            [
                [
                    short(r.name, ctx.namespace),
                    short(r.route, ctx.namespace),
                    _kind_names(r.kinds),
                    short(r.job, ctx.namespace) or "any",
                    short(r.schedule, ctx.namespace) or "any",
                    ",".join(f"{k}={v}" for k, v in sorted(r.labels.items())),
                ]
                for r in rules
            ],
        ),
    )
    return EXIT_OK


def cmd_rules_get(ctx: Context) -> int:
    rule = ctx.client.get_notification_rule(ctx.args.name)
    ctx.show(rule, lambda: rule_details(rule))
    return EXIT_OK


def cmd_rules_delete(ctx: Context) -> int:
    ctx.client.delete_notification_rule(ctx.args.name, etag=ctx.args.etag or "")
    _deleted(ctx, "rule", ctx.client._rule_name(ctx.args.name))
    return EXIT_OK


def cmd_deliveries(ctx: Context) -> int:
    page = ctx.client.list_notification_deliveries(route=ctx.args.route, page_size=max(ctx.args.limit, 1))
    deliveries = page.items
    ctx.show(deliveries, lambda: deliveries_table(deliveries, ctx.namespace))
    return EXIT_OK


def cmd_incidents(ctx: Context) -> int:
    args = ctx.args
    page = ctx.client.list_incidents(
        job=args.job, schedule=args.schedule, open_only=args.open, page_size=max(args.limit, 1)
    )
    incidents = page.items
    ctx.show(incidents, lambda: incidents_table(incidents, ctx.namespace))
    return EXIT_OK


# Check-ins


def add_check_in_commands(top: argparse._SubParsersAction[argparse.ArgumentParser], leaf: Leaf) -> None:
    checkins = top.add_parser(
        "checkins", help="dead man's switches: work cronwire does not run pings it on its ticks"
    ).add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(
        checkins,
        "create",
        cmd_checkins_create,
        "create a check-in and print its ping token (shown only this once)",
        epilog="examples:\n"
        "  cronwire checkins create nightly-backup --cron '0 2 * * *' --tz Europe/Berlin --grace 30m\n"
        "  # in the backup script, when it is done:\n"
        '  cronwire checkins ping "$TOKEN"',
    )
    p.add_argument("name", help="the check-in's id (or full name)")
    trigger_flags(p, window=False)
    p.add_argument(
        "--grace", type=duration_arg, metavar="DURATION", help="how late a ping may come (default 5m)"
    )
    _label_flag(p, "rules select by labels")
    p.add_argument("--description", default="", help="free text")
    p = leaf(
        checkins,
        "update",
        cmd_checkins_update,
        "change the fields given of a check-in (its token stays the same)",
        epilog="a new trigger or --tz plans the awaited ping again: the first tick after the update;\n"
        "a new --grace keeps the awaited tick and moves its deadline\n"
        "examples:\n"
        "  cronwire checkins update nightly-backup --cron '30 2 * * *' --grace 1h\n"
        "  cronwire checkins update nightly-backup --label team=infra --label owner=",
    )
    p.add_argument("name", help="the check-in (id or name)")
    trigger_flags(p, window=False)
    p.add_argument("--grace", type=duration_arg, metavar="DURATION", help="how late a ping may come")
    _label_flag(p, "a label (merged into the check-in's; KEY= removes it)")
    p.add_argument("--description", help="free text")
    p.add_argument("--etag", help="update only if the check-in still has this etag")
    leaf(checkins, "list", cmd_checkins_list, "list the check-ins of the namespace")
    _get_and_delete(
        leaf,
        checkins,
        "check-in",
        cmd_checkins_get,
        cmd_checkins_delete,
        "delete a check-in; its token stops working",
    )
    p = leaf(checkins, "ping", cmd_checkins_ping, "ping a check-in by its token")
    p.add_argument("token", help="the check-in's token (or - to read it from standard input)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--start", action="store_true", help="the work starts (the end ping records its duration)"
    )
    kind.add_argument("--fail", action="store_true", help="the work failed (a FAILED alert)")


def check_in_details(check_in: CheckIn) -> str:
    return details(
        [
            ("name", check_in.name),
            ("trigger", trigger_text(check_in.trigger)),
            ("time zone", check_in.time_zone),
            ("grace", check_in.grace),
            ("labels", ", ".join(f"{k}={v}" for k, v in sorted(check_in.labels.items()))),
            ("next expected", check_in.next_expected_time),
            ("last ping", check_in.last_ping_time),
            ("last ping kind", check_in.last_ping_kind.name if check_in.last_ping_kind else None),
            ("last duration", check_in.last_duration),
            ("missed", check_in.missed),
            ("description", check_in.description),
            ("created", check_in.create_time),
            ("etag", check_in.etag),
        ]
    )


def _refuse_window(args: argparse.Namespace) -> None:
    """A check-in's trigger has no start or end (a schedule's are the schedule's, not its
    trigger's): --start and --end are refused, never ignored."""
    for flag in ("start", "end"):
        if getattr(args, flag, None) is not None:
            raise UsageError(
                f"--{flag} does not apply to a check-in: its pings are awaited on every tick of its "
                "trigger from its creation on (for a start ping, use `cronwire checkins ping TOKEN --start`)"
            )


def cmd_checkins_create(ctx: Context) -> int:
    args = ctx.args
    _refuse_window(args)
    _zoned(args, args.tz or "")
    trigger = _triggers(args)
    if trigger is None:
        raise UsageError(
            "say when pings are expected: --cron EXPR, --every DURATION, --at TIME or --rrule RULE"
        )
    created = ctx.client.create_check_in(
        args.name,
        trigger=trigger,
        time_zone=args.tz or "",
        grace=args.grace,
        labels=dict(args.label),
        description=args.description,
    )
    if ctx.fmt == "table":
        ctx.print(check_in_details(created.check_in))
        ctx.print(f"token:          {created.token}\n")
        ctx.note("the token is shown only this once: ping with `cronwire checkins ping TOKEN`")
    else:
        ctx.print(dump({"check_in": to_document(created.check_in), "token": created.token}, ctx.fmt))
    return EXIT_OK


def cmd_checkins_update(ctx: Context) -> int:
    args = ctx.args
    _refuse_window(args)
    etag = args.etag or ""
    fields: dict[str, Any] = {}
    current: CheckIn | None = None
    if args.label or (args.at and args.tz is None):
        current = ctx.client.get_check_in(args.name)
        etag = etag or current.etag
    # --at times without an offset are read in --tz, else in the check-in's zone.
    _zoned(args, args.tz if args.tz is not None else current.time_zone if current else "")
    trigger = _triggers(args)
    if trigger is not None:
        fields["trigger"] = trigger
    if args.tz is not None:
        fields["time_zone"] = args.tz
    if args.grace is not None:
        fields["grace"] = args.grace
    if args.label and current is not None:
        fields["labels"] = _merged_labels(current.labels, args.label)
    if args.description is not None:
        fields["description"] = args.description
    if not fields:
        raise UsageError("nothing to update: give at least one flag to change")
    check_in = ctx.client.update_check_in(args.name, etag=etag, **fields)
    ctx.show(check_in, lambda: check_in_details(check_in))
    return EXIT_OK


def cmd_checkins_list(ctx: Context) -> int:
    found = list(ctx.client.iter_check_ins())
    ctx.show(
        found,
        lambda: table(
            ["NAME", "TRIGGER", "GRACE", "NEXT EXPECTED", "LAST PING", "MISSED"],
            [
                [
                    short(c.name, ctx.namespace),
                    trigger_text(c.trigger),
                    c.grace,
                    c.next_expected_time,
                    c.last_ping_time,
                    c.missed,
                ]
                for c in found
            ],
        ),
    )
    return EXIT_OK


def cmd_checkins_get(ctx: Context) -> int:
    check_in = ctx.client.get_check_in(ctx.args.name)
    ctx.show(check_in, lambda: check_in_details(check_in))
    return EXIT_OK


def cmd_checkins_delete(ctx: Context) -> int:
    ctx.client.delete_check_in(ctx.args.name, etag=ctx.args.etag or "")
    _deleted(ctx, "check-in", ctx.client._check_in_name(ctx.args.name))
    return EXIT_OK


def cmd_checkins_ping(ctx: Context) -> int:
    args = ctx.args
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    kind = CheckInPingKind.START if args.start else CheckInPingKind.FAIL if args.fail else None
    check_in = ctx.client.ping_check_in(token, kind=kind)
    ctx.show(check_in, lambda: check_in_details(check_in))
    return EXIT_OK
