"""cronwire.v1.ClusterService: the replicas, the queue, the scheduling lag and the namespaces, read
from the database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc

from cronwire.v1 import cluster_pb2, cluster_service_pb2_grpc
from cronwire.v1 import cluster_service_pb2 as pb
from cronwire_server import __version__
from cronwire_server.api.convert import optional_duration, set_duration, set_time
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import unary
from cronwire_server.auth import principal
from cronwire_server.core.errors import InvalidArgument
from cronwire_server.core.model import ClusterStatus, LagPercentiles, Replica
from cronwire_server.core.names import format_name, parent_name
from cronwire_server.storage import Store
from cronwire_server.storage.sql_remote_registry import ConnectedWorker, RemoteRegistry

Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_LAG_WINDOW = timedelta(minutes=5)
MAX_LAG_WINDOW = timedelta(days=7)


def lag_window(request: pb.GetClusterStatusRequest) -> timedelta:
    window = optional_duration(request, "lag_window")
    if window is None or window == timedelta(0):
        return DEFAULT_LAG_WINDOW
    if window < timedelta(0):
        raise InvalidArgument.field("lag_window", "must not be negative")
    if window > MAX_LAG_WINDOW:
        raise InvalidArgument.field("lag_window", f"must be at most {MAX_LAG_WINDOW.days} days")
    return window


def replica_to_pb(replica: Replica, status: ClusterStatus) -> cluster_pb2.Replica:
    message = cluster_pb2.Replica(
        id=replica.id,
        hostname=replica.hostname,
        pid=replica.pid,
        version=replica.version,
        roles=sorted(replica.roles),
        alive=replica.alive(status.now),
        loops_down=replica.loops_down,
    )
    set_time(message.start_time, replica.started_at)
    set_time(message.heartbeat_time, replica.heartbeat_at)
    set_duration(message.heartbeat_interval, timedelta(seconds=replica.heartbeat_seconds))
    return message


def lag_to_pb(lag: LagPercentiles, window: timedelta) -> cluster_pb2.SchedulingLag:
    message = cluster_pb2.SchedulingLag(samples=lag.samples)
    set_duration(message.window, window)
    for field, seconds in (("p50", lag.p50), ("p90", lag.p90), ("p99", lag.p99)):
        # Microseconds: what a Duration from a timedelta carries anyway.
        set_duration(getattr(message, field), timedelta(microseconds=round(seconds * 1e6)))
    return message


def status_to_pb(status: ClusterStatus, window: timedelta) -> pb.GetClusterStatusResponse:
    response = pb.GetClusterStatusResponse(
        replicas=[replica_to_pb(r, status) for r in status.replicas],
        queued_executions=status.queued,
        running_executions=status.running,
        scheduling_lag=lag_to_pb(status.lag, window),
        server_version=__version__,
    )
    set_time(response.read_time, status.now)
    oldest = status.oldest_queued
    if oldest is not None:
        queued = response.oldest_queued_execution
        # Its times are the cluster's business; its names only of those who see its namespace.
        if principal.current().sees(oldest.namespace):
            queued.name = format_name("execution", oldest.namespace, oldest.id)
            queued.job = format_name("job", oldest.namespace, oldest.job_id)
        set_time(queued.create_time, oldest.create_time)
        set_time(queued.scheduled_time, oldest.scheduled_time)
    return response


def worker_to_pb(worker: ConnectedWorker) -> cluster_pb2.ConnectedWorker:
    message = cluster_pb2.ConnectedWorker(
        identity=worker.identity,
        queues=list(worker.queues),
        namespaces=list(worker.namespaces or ()),
        free_slots=worker.free_slots,
        running=worker.running,
        replica=worker.replica,
        agent=worker.agent,
    )
    set_time(message.connect_time, worker.connect_time)
    set_time(message.report_time, worker.report_time)
    return message


class ClusterService(cluster_service_pb2_grpc.ClusterServiceServicer):
    def __init__(self, store: Store, workers: RemoteRegistry | None = None) -> None:
        self._store = store
        self._workers = workers

    @unary
    async def GetClusterStatus(
        self, request: pb.GetClusterStatusRequest, context: Context
    ) -> pb.GetClusterStatusResponse:
        window = lag_window(request)
        response = status_to_pb(await self._store.cluster_status(window), window)
        if self._workers is not None:
            connected = await self._workers.connected(principal.visible_namespaces())
            response.workers.extend(worker_to_pb(w) for w in connected)
        return response

    @unary
    async def ListNamespaces(
        self, request: pb.ListNamespacesRequest, context: Context
    ) -> pb.ListNamespacesResponse:
        page = page_from_request(request.page_size, request.page_token, {"list": "namespaces"})
        visible = principal.visible_namespaces()
        counts = await self._store.namespace_counts()
        names = sorted(n for n in counts if (visible is None or n in visible) and n > (page.after or ""))
        shown = names[: page.size]
        more = len(names) > page.size
        return pb.ListNamespacesResponse(
            namespaces=[
                pb.Namespace(name=parent_name(n), job_count=counts[n][0], schedule_count=counts[n][1])
                for n in shown
            ],
            next_page_token=encode_token(shown[-1] if more else None, {"list": "namespaces"}),
        )
