"""The notifier reads the events from where the migrations left its cursor: a failure that
happened before any replica's first notifier pass still alerts (a late first pass used to start
from the latest event, past it)."""

from __future__ import annotations

from datetime import timedelta

from cronwire_server.core.alerts import (
    AlertKind,
    DeliveryState,
    NotificationRoute,
    NotificationRule,
    WebhookDestination,
)
from cronwire_server.core.model import ExecutionState, Job
from cronwire_server.executors.runtime import RunOutcome
from cronwire_server.storage.base import Page
from cronwire_server.storage.sql_notifications import NotificationStore
from cronwire_server.storage.sql_store import SqlStore
from cronwire_server.workers import plan_retry

NS = "alerts"
WORKER = "host:1:abc"


async def test_a_failure_before_the_first_notifier_pass_is_alerted(store: SqlStore) -> None:
    notifications = NotificationStore(store.engine)
    route = NotificationRoute(NS, "hook", WebhookDestination("https://hooks.example.com/ops"))
    await notifications.create_route(route, "")
    rule = NotificationRule(NS, "failures", "hook", frozenset({AlertKind.FAILED}))
    await notifications.create_rule(rule, "")
    await store.create_job(Job(namespace=NS, id="job", executor="noop", parameters={}))
    await store.run_job(NS, "job", {})
    (claimed,) = await store.claim_executions(WORKER, 1, timedelta(seconds=60))
    failed = RunOutcome(ExecutionState.FAILED, exit_code=1, error="exit code 1")
    await store.finish_executions([(claimed, failed)], WORKER, plan_retry)
    await store.sequence_events(1000)  # (the claim and the finish numbered their own)
    assert await store.latest_event_sequence() > 0

    # The first notifier pass of this database comes only now.
    assert await notifications.notify_pass(200) > 0
    (delivery,) = (await notifications.list_deliveries(NS, Page(10))).items
    assert (delivery.kind, delivery.state) == (AlertKind.FAILED, DeliveryState.PENDING)
    assert await notifications.notify_pass(200) == 0  # read once


async def _fail(store: SqlStore, namespace: str, job_id: str) -> None:
    await store.create_job(Job(namespace=namespace, id=job_id, executor="noop", parameters={}))
    await store.run_job(namespace, job_id, {})
    (claimed,) = await store.claim_executions(WORKER, 1, timedelta(seconds=60))
    failed = RunOutcome(ExecutionState.FAILED, exit_code=1, error="exit code 1")
    await store.finish_executions([(claimed, failed)], WORKER, plan_retry)


async def test_the_notifier_reads_only_the_events_of_namespaces_with_rules(store: SqlStore) -> None:
    notifications = NotificationStore(store.engine)
    # No rules anywhere: a pass reads nothing, and moves the cursor past what there is.
    await _fail(store, "quiet", "early")
    await store.sequence_events(1000)
    assert await notifications.notify_pass(200) == 0

    route = NotificationRoute(NS, "hook", WebhookDestination("https://hooks.example.com/ops"))
    await notifications.create_route(route, "")
    await notifications.create_rule(
        NotificationRule(NS, "failures", "hook", frozenset({AlertKind.FAILED})), ""
    )
    for i in range(5):
        await _fail(store, "quiet", f"job{i}")
    await _fail(store, NS, "job")
    await store.sequence_events(1000)

    # Only the failure in the namespace with a rule is read (and alerted), once.
    assert await notifications.notify_pass(200) == 1
    (delivery,) = (await notifications.list_deliveries(NS, Page(10))).items
    assert delivery.kind is AlertKind.FAILED
    assert await notifications.notify_pass(200) == 0
