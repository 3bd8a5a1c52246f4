"""cronwire.v1.JobService: protos in, domain calls, protos out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import grpc

from cronwire.v1 import job_service_pb2, job_service_pb2_grpc
from cronwire_server.api import convert, fields, scope
from cronwire_server.api.masks import mask_paths, merge
from cronwire_server.api.paging import encode_token, page_from_request
from cronwire_server.api.status import unary
from cronwire_server.auth import principal
from cronwire_server.core import names
from cronwire_server.core.errors import PermissionDenied
from cronwire_server.core.executions import ExecutionManager
from cronwire_server.core.model import Job
from cronwire_server.executors.registry import KINDS
from cronwire_server.jobs import JobManager

Context = grpc.aio.ServicerContext[Any, Any]

MUTABLE = frozenset(
    {
        "description",
        "executor",
        "parameters",
        "timeout",
        "retry_policy",
        "max_concurrency",
        "dependents",
        "callback",
        "labels",
        "execution_retention",
        "arguments_schema",
    }
)
OUTPUT_ONLY = frozenset({"name", "create_time", "update_time", "etag", "stats"})


class JobService(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, jobs: JobManager, executions: ExecutionManager) -> None:
        self._jobs = jobs
        self._executions = executions

    def _check(self, job: Job) -> None:
        """PERMISSION_DENIED unless the caller's key may use the job's executor kind (what its
        parameters may do under the server's policy, the job manager validates)."""
        _require_executor(job.executor)

    @unary
    async def CreateJob(
        self, request: job_service_pb2.CreateJobRequest, context: Context
    ) -> job_service_pb2.CreateJobResponse:
        namespace = scope.parent(request.parent)
        job_id = names.check_id(request.job_id, "job_id") if request.job_id else names.new_id("job")
        request_id = fields.request_id(request.request_id)
        fields.required(request.HasField("job"), "job")
        with fields.under("job"):
            job = convert.job_from_pb(request.job, namespace, job_id)
            self._check(job)
            if request.validate_only:
                created = await self._jobs.check_create(job)
            else:
                created = await self._jobs.create(job, request_id=request_id)
        return job_service_pb2.CreateJobResponse(job=convert.job_to_pb(created))

    @unary
    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: Context
    ) -> job_service_pb2.GetJobResponse:
        name = scope.name(request.name, "job")
        job = await self._jobs.get(name.namespace, name.id)
        return job_service_pb2.GetJobResponse(job=convert.job_to_pb(job))

    @unary
    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Context
    ) -> job_service_pb2.ListJobsResponse:
        namespace = scope.parent(request.parent)
        filters = {"namespace": namespace, "executor": request.executor}
        page = page_from_request(request.page_size, request.page_token, filters)
        listing = await self._jobs.list_page(namespace, page, executor=request.executor)
        return job_service_pb2.ListJobsResponse(
            jobs=[convert.job_to_pb(job) for job in listing.items],
            next_page_token=encode_token(listing.next_after, filters),
        )

    @unary
    async def UpdateJob(
        self, request: job_service_pb2.UpdateJobRequest, context: Context
    ) -> job_service_pb2.UpdateJobResponse:
        fields.required(request.HasField("job"), "job")
        name = scope.name(request.job.name, "job", "job.name")
        mask = request.update_mask if request.HasField("update_mask") else None
        paths = mask_paths(request.job, mask, mutable=MUTABLE, output_only=OUTPUT_ONLY)

        def change(current: Job) -> Job:
            # A job of a kind the key may not use stays as it is, even if the change would
            # move it to a kind the key may use.
            _require_executor(current.executor)
            merged = convert.job_to_pb(current)
            merge(merged, request.job, paths)
            updated = _keep_callback_secret(current, convert.job_from_pb(merged, name.namespace, name.id))
            self._check(updated)
            return updated

        with fields.under("job"):
            job = await self._jobs.update(
                name.namespace,
                name.id,
                change,
                expected_etag=request.job.etag,
                validate_only=request.validate_only,
            )
        return job_service_pb2.UpdateJobResponse(job=convert.job_to_pb(job))

    @unary
    async def DeleteJob(
        self, request: job_service_pb2.DeleteJobRequest, context: Context
    ) -> job_service_pb2.DeleteJobResponse:
        name = scope.name(request.name, "job")
        await self._jobs.delete(name.namespace, name.id, expected_etag=request.etag)
        return job_service_pb2.DeleteJobResponse()

    @unary
    async def RunJob(
        self, request: job_service_pb2.RunJobRequest, context: Context
    ) -> job_service_pb2.RunJobResponse:
        name = scope.name(request.name, "job")
        request_id = fields.request_id(request.request_id)
        arguments = convert.struct_to_dict(request.arguments)
        execution = await self._executions.run_job(
            name.namespace,
            name.id,
            arguments,
            request_id=request_id,
            respect_overlap=request.respect_overlap,
        )
        return job_service_pb2.RunJobResponse(execution=convert.execution_to_pb(execution))

    @unary
    async def ListJobTypes(
        self, request: job_service_pb2.ListJobTypesRequest, context: Context
    ) -> job_service_pb2.ListJobTypesResponse:
        response = job_service_pb2.ListJobTypesResponse()
        for kind in self._jobs.types():
            job_type = response.job_types.add(name=kind.name, description=kind.description)
            job_type.parameters_schema.update(kind.parameters_schema)
            job_type.example.update(kind.example)
        return response


def _require_executor(executor: str) -> None:
    """PERMISSION_DENIED, naming `job.executor`, if the caller's key may not create or change
    jobs of this executor kind. Auth off (no key) may use every kind."""
    key = principal.current().key
    # An unknown kind is INVALID_ARGUMENT, from validation.
    if key is not None and executor in KINDS and not key.may_use(executor):
        raise PermissionDenied(
            f"job.executor: key {key.name} may not create or change {executor!r} jobs; its executor "
            f"kinds are {', '.join(key.executors)} (an admin grants more with keys create --executors)",
            reason="EXECUTOR_NOT_GRANTED",
        )


def _keep_callback_secret(current: Job, updated: Job) -> Job:
    # Reads never return the secret, so an update that sends none keeps the stored one.
    if updated.callback and not updated.callback.secret and current.callback and current.callback.secret:
        updated.callback = replace(updated.callback, secret=current.callback.secret)
    return updated
