"""What each phase sends: a gRPC method and a source of serialized requests.

Workloads are plain dataclasses so they can be pickled into the load
generator's process. Requests are serialized here and responses are never
parsed, so every phase costs the load generator the same and the phases
compare the servers, not the client.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from google.protobuf import struct_pb2

from cronwire.v1 import job_pb2, job_service_pb2

PARENT = "namespaces/bench"
CREATE_JOB = "/cronwire.v1.JobService/CreateJob"
GET_JOB = "/cronwire.v1.JobService/GetJob"


def job_id(n: int) -> str:
    # Fixed width, so every GetJobRequest (and the echo payload) has one size.
    return f"job-{n:08d}"


def job_name(n: int) -> str:
    return f"{PARENT}/jobs/{job_id(n)}"


def get_job_request_size() -> int:
    return len(job_service_pb2.GetJobRequest(name=job_name(0)).SerializeToString())


@dataclass
class EchoWorkload:
    """The same payload every call, answered unchanged by the echo server."""

    method: str
    payload: bytes

    def next_request(self) -> tuple[str, bytes]:
        return "", self.payload


@dataclass
class CreateJobWorkload:
    """A `shell` job running `true`, under a fresh id each call."""

    method: str = CREATE_JOB
    next_id: int = 0

    def next_request(self) -> tuple[str, bytes]:
        n = self.next_id
        self.next_id += 1
        parameters = struct_pb2.Struct()
        parameters.update({"argv": ["true"]})
        request = job_service_pb2.CreateJobRequest(
            parent=PARENT,
            job_id=job_id(n),
            job=job_pb2.Job(executor="shell", parameters=parameters),
        )
        return job_name(n), request.SerializeToString()


@dataclass
class GetJobWorkload:
    """A job picked at random among `names` each call."""

    names: list[str]
    method: str = GET_JOB
    seed: int = 1
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("GetJob needs at least one job name")
        self._rng = random.Random(self.seed)

    def next_request(self) -> tuple[str, bytes]:
        name = self._rng.choice(self.names)
        return name, job_service_pb2.GetJobRequest(name=name).SerializeToString()
