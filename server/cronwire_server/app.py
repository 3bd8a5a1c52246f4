"""Builds and runs the gRPC server: cronwire services, health, reflection, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from sqlalchemy.pool import Pool

from cronwire.v1 import (
    calendar_service_pb2,
    calendar_service_pb2_grpc,
    checkin_service_pb2,
    checkin_service_pb2_grpc,
    cluster_service_pb2,
    cluster_service_pb2_grpc,
    event_service_pb2,
    execution_service_pb2,
    execution_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
    notification_service_pb2,
    notification_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from cronwire_server import __version__, collector
from cronwire_server.api.calendar_service import CalendarService
from cronwire_server.api.checkin_service import CheckInService, http_pinger
from cronwire_server.api.cluster_service import ClusterService
from cronwire_server.api.event_service import EventService
from cronwire_server.api.event_service import add_to_server as add_event_service
from cronwire_server.api.execution_service import ExecutionService
from cronwire_server.api.job_service import JobService
from cronwire_server.api.key_service import KeyService
from cronwire_server.api.notification_service import NotificationService
from cronwire_server.api.paging import use_secret as use_page_token_secret
from cronwire_server.api.registration import serve_generically
from cronwire_server.api.rpc_metrics import RpcMetricsInterceptor
from cronwire_server.api.schedule_service import ScheduleService
from cronwire_server.api.worker_service import WorkerService
from cronwire_server.auth.interceptor import RequestDecoding
from cronwire_server.auth.manage import KeyManager
from cronwire_server.auth.mode import AuthRefused, auth_interceptor
from cronwire_server.clock import ClockCheck
from cronwire_server.config import Settings, http_policy, retention_policy
from cronwire_server.core.calendar_manager import CalendarManager
from cronwire_server.core.executions import ExecutionManager
from cronwire_server.core.schedules import ScheduleManager
from cronwire_server.destinations import Sender
from cronwire_server.dispatcher import Dispatcher
from cronwire_server.events import EventHub, EventManager, Pruner, Sequencer
from cronwire_server.executors.http_runner import HttpRunner
from cronwire_server.executors.jobuser import SERVER_UMASK, JobUser, choose_job_user, warn_exposed
from cronwire_server.executors.registry import EntryPolicy, ExecutorPolicy
from cronwire_server.executors.runners import Runners
from cronwire_server.health import ReplicaHealth
from cronwire_server.jobs import JobManager
from cronwire_server.limits import DocumentSizes, Limits, StreamCaps
from cronwire_server.metrics_endpoint import attach_metrics
from cronwire_server.notifier import Alerts
from cronwire_server.remote_workers import RemoteWorkers
from cronwire_server.replicas import ReplicaHeartbeat, this_replica
from cronwire_server.retention import ExecutionPruner
from cronwire_server.secrets import SecretError, Secrets
from cronwire_server.storage import Store
from cronwire_server.storage.migrate import upgrade
from cronwire_server.storage.sql_keys import KeyStore
from cronwire_server.storage.sql_notifications import NotificationStore
from cronwire_server.storage.sql_remote_registry import RemoteRegistry
from cronwire_server.storage.sql_store import open_store
from cronwire_server.supervisor import MAIN, Supervisor
from cronwire_server.tls import TlsError, TlsFiles, server_credentials
from cronwire_server.web import HttpUnavailable
from cronwire_server.web.auth import web_auth
from cronwire_server.web.views import Readers
from cronwire_server.workers import WorkerPool, worker_identity

if TYPE_CHECKING:
    from cronwire_server.web.listener import HttpListener, Pinger

log = logging.getLogger("cronwire_server")

SERVICE_NAMES = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (job_service_pb2, "JobService"),
        (schedule_service_pb2, "ScheduleService"),
        (calendar_service_pb2, "CalendarService"),
        (execution_service_pb2, "ExecutionService"),
        (event_service_pb2, "EventService"),
        (key_service_pb2, "KeyService"),
        (cluster_service_pb2, "ClusterService"),
        (worker_service_pb2, "WorkerService"),
        (notification_service_pb2, "NotificationService"),
        (checkin_service_pb2, "CheckInService"),
    )
)
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# Seconds the background loops get to notice shutdown, and the store to close.
STOP_LOOPS_WITHIN = 5.0
CLOSE_STORE_WITHIN = 10.0


@dataclass
class RunningServer:
    """A started server and what it owns."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    store: Store
    # Every background loop runs under it; `stopping` tells them to finish.
    supervisor: Supervisor
    stopping: asyncio.Event
    workers: WorkerPool | None = None
    # The dashboard, /metrics, /healthz and /readyz (--http-address).
    http: HttpListener | None = None

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING first, so balancers drain us; stop claiming; let calls and running
        executions finish within `grace`; put back what is still running; release the database.

        Every phase is bounded: a loop stuck in a call is cancelled rather than waited for.
        """
        await self.health.enter_graceful_shutdown()
        self.stopping.set()
        await self.supervisor.stop([MAIN], within=STOP_LOOPS_WITHIN)
        drained = self.workers.drain(grace) if self.workers else asyncio.sleep(0)
        await asyncio.gather(self.server.stop(grace), drained)
        # What running executions needed while draining (lease heartbeats, the finisher).
        await self.supervisor.stop(within=0)
        if self.http:
            await self.http.close()
        try:
            async with asyncio.timeout(CLOSE_STORE_WITHIN):
                await self.store.close()
        except TimeoutError:
            log.warning("the database connections did not close within %ss", CLOSE_STORE_WITHIN)


async def create_server(settings: Settings) -> RunningServer:
    """Migrate the database, open the store and start serving on `settings.listen`."""
    # Settings that cannot work stop the server before it touches the database.
    try:
        limits = Limits.from_settings(settings)
        credentials = server_credentials(tls_files(settings))
        job_user = job_user_of(settings) if "worker" in settings.roles else None
    except (ValueError, TlsError) as exc:
        raise SystemExit(f"cronwire-server: {exc}") from exc
    await asyncio.to_thread(upgrade, settings.database_url)
    if job_user is not None:
        check_job_user(settings, job_user)
    store = await open_store(settings.database_url)
    interceptors: list[grpc.aio.ServerInterceptor] = []  # type: ignore[type-arg]
    if http_address(settings):
        # First, so that calls a later interceptor refuses are counted with their code.
        interceptors.append(RpcMetricsInterceptor())
    keys = KeyStore(store.engine)
    # Page tokens any replica issued are good on every other, and forged ones on none.
    use_page_token_secret(await keys.shared_secret())
    try:
        auth = await auth_interceptor(settings, keys)
    except AuthRefused as exc:
        await store.close()
        raise SystemExit(f"cronwire-server: {exc}") from exc
    if auth is not None:
        interceptors.append(auth)
    # After auth: an unauthenticated caller gets nothing decoded, and learns nothing of the limits.
    interceptors.append(RequestDecoding())
    interceptors.append(DocumentSizes(limits))
    interceptors.append(StreamCaps(limits))
    server = serve_generically(grpc.aio.server(interceptors=interceptors, options=limits.grpc_options()))
    stopping = asyncio.Event()
    supervisor = Supervisor(stopping)
    # This process's identity: its replica id, and the `worker` of the runs its pool starts.
    identity = worker_identity()
    store.supervise_listener(supervisor)
    supervisor.start("sequencer", lambda: Sequencer(store).run(stopping))
    supervisor.start("clock-check", lambda: ClockCheck(store).run(stopping))
    # Alerts: every replica reads events, sends and watches deadlines, sharing the work.
    notifications = NotificationStore(store.engine)
    Alerts(notifications, Sender(HttpRunner(http_policy(settings)), Secrets(settings.secrets_file))).start(
        supervisor, stopping
    )
    readers: Readers | None = None
    hub: EventHub | None = None
    if "api" in settings.roles:
        executions = ExecutionManager(store)
        jobs = JobManager(
            store,
            ExecutorPolicy(http_policy(settings), EntryPolicy(settings.python_path_allow)),
            max_per_namespace=limits.max_jobs_per_namespace,
            secrets=Secrets(settings.secrets_file),
            max_fan_out=limits.max_fan_out,
        )
        job_service_pb2_grpc.add_JobServiceServicer_to_server(JobService(jobs, executions), server)
        schedules = ScheduleManager(store, max_per_namespace=limits.max_schedules_per_namespace)
        schedule_service_pb2_grpc.add_ScheduleServiceServicer_to_server(
            ScheduleService(schedules, notifications.deadline_misses_of), server
        )
        readers = Readers(store, jobs, schedules, executions)
        calendar_service_pb2_grpc.add_CalendarServiceServicer_to_server(
            CalendarService(CalendarManager(store)), server
        )
        execution_service_pb2_grpc.add_ExecutionServiceServicer_to_server(
            ExecutionService(executions), server
        )
        hub = EventHub(store)
        await hub.start()
        supervisor.start("event-hub", lambda: hub.follow(stopping))
        events = EventManager(
            store, hub, heartbeat=settings.watch_heartbeat_seconds, buffer=settings.watch_buffer
        )
        # Not the generated registration: WatchEvents sends bytes it serialized once per batch.
        add_event_service(EventService(events), server)
        key_service_pb2_grpc.add_KeyServiceServicer_to_server(KeyService(KeyManager(keys)), server)
        notification_service_pb2_grpc.add_NotificationServiceServicer_to_server(
            NotificationService(notifications, http_policy(settings), Secrets(settings.secrets_file)), server
        )
        checkin_service_pb2_grpc.add_CheckInServiceServicer_to_server(CheckInService(notifications), server)
        cluster_service_pb2_grpc.add_ClusterServiceServicer_to_server(
            ClusterService(store, RemoteRegistry(store.engine)), server
        )
        # Remote workers connect to the API; without a local pool here, this replica also
        # recovers the leases they let expire.
        remote = RemoteWorkers(
            store,
            lease=timedelta(seconds=settings.lease_seconds),
            capture_bytes=limits.max_output_bytes,
            recover="worker" not in settings.roles,
            registry=RemoteRegistry(store.engine),
            replica=identity,
            max_running_per_namespace=limits.max_running_per_namespace,
        )
        remote.start(supervisor, stopping)
        worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(WorkerService(remote), server)

    health = HealthServicer()
    # grpc_health calls the whole server SERVING from the start: not before the replica is.
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError as exc:
        await store.close()
        raise SystemExit(f"cannot listen on {settings.listen}: {exc}") from exc
    await server.start()
    replica_health = ReplicaHealth(settings.database_url, health, ("", *SERVICE_NAMES), supervisor.down)
    running = RunningServer(server, port, health, store, supervisor, stopping)
    if http_address(settings):
        try:
            running.http = await _serve_http(
                settings,
                running,
                replica_health,
                keys,
                readers,
                hub,
                store.engine.sync_engine.pool,
                grpc_auth=auth is not None,
                ping=http_pinger(notifications) if "api" in settings.roles else None,
            )
        except (AuthRefused, HttpUnavailable) as exc:
            await running.stop(0)
            raise SystemExit(f"cronwire-server: {exc}") from exc
    # In the registry before anyone is told the server is up (its health, its port file).
    replica = this_replica(identity, settings.roles, settings.replica_heartbeat_seconds, await store.now())
    heartbeat = ReplicaHeartbeat(store, replica, loops_down=supervisor.down)
    await heartbeat.register()
    supervisor.start("replica-heartbeat", lambda: heartbeat.run(stopping))
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    # From now on health follows the database and the loops.
    supervisor.start("health", lambda: replica_health.run(stopping))
    _start_scheduler(running, settings, identity)
    return running


def http_address(settings: Settings) -> str:
    """Where the HTTP listener serves ("" when off); --metrics-address is its older name."""
    return settings.http_address or settings.metrics_address


async def _serve_http(
    settings: Settings,
    running: RunningServer,
    replica_health: ReplicaHealth,
    keys: KeyStore,
    readers: Readers | None,
    hub: EventHub | None,
    pool: Pool,
    *,
    grpc_auth: bool,
    ping: Pinger | None = None,
) -> HttpListener | None:
    """The HTTP listener: the dashboard (with the api role), /metrics, /healthz and /readyz.
    None when the default address is taken: the server runs on without it."""
    # The HTTP stack (aiohttp, the dashboard's templates) is loaded only by a server that serves
    # HTTP: a good part of the start-up, which a replica without the listener never pays.
    from cronwire_server.web.listener import serve_http
    from cronwire_server.web.pages import (
        STREAM_BUFFER_BATCHES,
        STREAM_BUFFER_BYTES,
        STREAM_HEARTBEAT_SECONDS,
        Dashboard,
    )

    address = http_address(settings)
    dashboard = None
    if readers is not None and hub is not None:
        auth = await web_auth(
            settings, address, keys, await keys.shared_secret("dashboard"), grpc_auth=grpc_auth
        )
        events = EventManager(
            running.store,
            hub,
            heartbeat=STREAM_HEARTBEAT_SECONDS,
            buffer=STREAM_BUFFER_BATCHES,
            buffer_bytes=STREAM_BUFFER_BYTES,
        )
        dashboard = Dashboard(readers, events, auth)
    metrics = attach_metrics(running.store, pool)
    try:
        return await serve_http(
            address,
            tls_files(settings),
            running.health,
            lambda: replica_health.problem,
            metrics,
            dashboard,
            ping,
        )
    except HttpUnavailable as exc:
        metrics.close()
        if not settings.http_address_defaulted:
            raise
        log.warning("%s: the dashboard is off (choose another port with --http-address)", exc)
        return None


def job_user_of(settings: Settings) -> JobUser:
    """Who jobs run as; ValueError when that cannot be."""
    return choose_job_user(settings.run_as, settings.allow_root_jobs)


def _keep_files_from_jobs(settings: Settings) -> None:
    """A server process whose jobs run as another user keeps the files it creates (the SQLite
    database among them) to itself: before it creates any."""
    try:
        if "worker" in settings.roles and job_user_of(settings).switches:
            os.umask(SERVER_UMASK)
    except ValueError:
        pass  # create_server says why it cannot start


def check_job_user(settings: Settings, user: JobUser) -> None:
    """Warn of what the job user could read of the server's, and of unscoped secrets."""
    log.info("shell and python jobs run as %s (uid %d)", user.name, user.uid)
    if user.uid == 0:
        log.warning("jobs run as root (--allow-root-jobs): they can read the server's secrets and database")
    warn_exposed(user, settings.database_url, [settings.secrets_file, settings.tls_key])
    try:
        Secrets(settings.secrets_file).warn_unscoped()
    except SecretError as exc:
        log.warning("%s", exc)


def tls_files(settings: Settings) -> TlsFiles:
    return TlsFiles(cert=settings.tls_cert, key=settings.tls_key, client_ca=settings.tls_client_ca)


def _start_scheduler(running: RunningServer, settings: Settings, identity: str) -> None:
    """The dispatcher and the worker pool, as this process's roles say."""
    supervisor, stopping = running.supervisor, running.stopping
    dispatcher = None
    if "dispatcher" in settings.roles:
        dispatcher = Dispatcher(running.store, grace=timedelta(seconds=settings.misfire_grace_seconds))
        supervisor.start("dispatcher", lambda: dispatcher.run(stopping))
        pruner = Pruner(running.store, timedelta(days=settings.event_retention_days))
        supervisor.start("event-retention", lambda: pruner.run(stopping))
        executions = ExecutionPruner(running.store, retention_policy(settings))
        supervisor.start("execution-retention", lambda: executions.run(stopping))
    if "worker" in settings.roles:
        limits = Limits.from_settings(settings)
        running.workers = WorkerPool(
            running.store,
            slots=settings.worker_slots,
            lease=timedelta(seconds=settings.lease_seconds),
            capture_bytes=limits.max_output_bytes,
            runners=Runners(
                http_policy(settings),
                user=job_user_of(settings),
                entry=EntryPolicy(settings.python_path_allow),
            ),
            identity=identity,
            secrets=Secrets(settings.secrets_file),
            max_running_per_namespace=limits.max_running_per_namespace,
        )
        running.workers.start(supervisor, stopping)
        if dispatcher is not None:
            dispatcher.fuse(running.workers)  # ticks start here at once while slots are free


SHUTDOWN_WATCHDOG_MARGIN = 20.0


def _exit_hung(released: bool) -> None:
    log.error("shutdown did not finish in time; exiting (everything released: %s)", released)
    logging.shutdown()
    os._exit(0 if released else 1)


def _write_port_file(path: str, port: int) -> None:
    # Written whole then renamed, so a reader polling for it never sees half a number.
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(f"{port}\n")
    os.replace(partial, target)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    _keep_files_from_jobs(settings)
    running = await create_server(settings)
    collector.settle()  # what start-up built lives as long as the process
    host = settings.listen.rsplit(":", 1)[0]
    files = tls_files(settings)
    transport = ("mutual TLS" if files.mutual else "TLS") if files.enabled else "plaintext"
    log.info("cronwire-server %s listening on %s:%d (%s)", __version__, host, running.port, transport)
    if settings.port_file:
        _write_port_file(settings.port_file, running.port)
    if running.http:
        http_host = http_address(settings).rsplit(":", 1)[0]
        scheme = "https" if files.enabled else "http"
        log.info("dashboard at %s://%s:%d/ (metrics at /metrics)", scheme, http_host, running.http.port)
        port_file = settings.http_port_file or settings.metrics_port_file
        if port_file:
            _write_port_file(port_file, running.http.port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info(
        "shutting down: health NOT_SERVING, letting calls finish for up to %.0fs", settings.shutdown_grace
    )
    stopped = threading.Event()
    # A process asked to stop must stop: if shutdown (or the interpreter's teardown after it)
    # ever hangs, leave anyway — with status 0 once everything was released, else 1.
    watchdog = threading.Timer(
        settings.shutdown_grace + SHUTDOWN_WATCHDOG_MARGIN, lambda: _exit_hung(stopped.is_set())
    )
    watchdog.daemon = True
    watchdog.start()
    await running.stop(settings.shutdown_grace)
    stopped.set()
    log.info("stopped")
