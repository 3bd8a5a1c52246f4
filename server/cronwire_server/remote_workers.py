"""Remote workers: the executions of jobs with executor `remote`, handed to worker processes that
hold a WorkerService stream open to this replica.

Each stream is a `Session`: the worker's identity, queues, task names and free slots, and the
executions it holds, each under a lease token of its own (`storage.remote`). One loop per replica
(`remote-dispatch`) takes QUEUED remote work for all the sessions with room at once, woken by
the "executions" wake-up (LISTEN/NOTIFY across replicas), a new session, or new room while work
waits, and pushes it down their streams; never more than a session's announced free slots, nor
its in-flight bound.

Leases are those of local runs. A worker's heartbeat renews the leases it lists; a lease not
renewed expires and the recovery (`Store.recover_expired`, any replica) marks the execution LOST
and queues its retry. A result, output chunk, heartbeat or release is accepted only for a lease
the session holds, and recorded only while the database says the lease is still that one (the
`worker` column fences, as for local runs): anything else is refused and changes nothing. A
second loop (`remote-deadlines`) ends runs past their job's timeout (TIMED_OUT, and a cancel to
the worker) and closes sessions that went silent for a whole lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cronwire_server import metrics
from cronwire_server.core.errors import InvalidArgument, NotFound, StorageUnavailable
from cronwire_server.core.model import Execution, ExecutionState, Job
from cronwire_server.core.names import execution_name, job_name, parse_name
from cronwire_server.core.planning import retry_due_time
from cronwire_server.dispatcher import first_of
from cronwire_server.executors.registry import REMOTE
from cronwire_server.executors.runtime import (
    RunOutcome,
    after_refusal,
    storable_outcome,
    storable_text,
)
from cronwire_server.logs import run_fields
from cronwire_server.storage import Store
from cronwire_server.storage.base import ClaimedExecution, LeaseRenewal, RetryPlanner
from cronwire_server.storage.remote import (
    HeldRemoteLease,
    RemoteClaim,
    RemoteTake,
    new_session_secret,
    secret_of,
    session_worker,
)
from cronwire_server.storage.sql_creates import GroupCommit
from cronwire_server.storage.sql_remote_registry import ConnectedWorker, RemoteRegistry
from cronwire_server.supervisor import DRAIN, Supervisor, loop_failed, loop_ok

log = logging.getLogger(__name__)

# Executions one stream holds at most, whatever free slots its worker announces.
MAX_IN_FLIGHT = 256
# Results of one stream recorded at once, at most; the stream's next messages wait beyond.
MAX_RECORDING = 64
# Messages waiting to be sent down one stream at most; a worker that does not read is dropped.
MAX_OUTBOX = 4096
# How often the dispatch loop looks for due work it was not woken for (a retry's backoff ending,
# a wake-up another loop of this process took first).
POLL_SECONDS = 0.5
DEADLINE_CHECK_SECONDS = 0.5
# How often the connected workers are reported for the cluster status: at most, when they
# changed; at least, to show they are still there.
REPORT_CHANGES_EVERY = 1.0
REPORT_EVERY = 10.0
RETRY_AFTER_ERROR = 1.0
# Heartbeats carry cancellations to the workers, so they come often.
MAX_HEARTBEAT_SECONDS = 1.0


def heartbeat_interval(lease: timedelta) -> timedelta:
    return timedelta(seconds=min(lease.total_seconds() / 4, MAX_HEARTBEAT_SECONDS))


@dataclass(frozen=True)
class Assignment:
    """An execution to push to the worker."""

    claim: RemoteClaim
    queue: str
    task: str
    deadline: datetime | None

    @property
    def execution(self) -> Execution:
        return self.claim.claimed.execution

    @property
    def job(self) -> Job:
        return self.claim.claimed.job


@dataclass(frozen=True)
class CancelRun:
    """Tell the worker to stop a run."""

    execution: str
    token: str
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A message about an execution that was refused; the stream goes on."""

    execution: str
    token: str
    code: str  # FAILED_PRECONDITION or INVALID_ARGUMENT
    reason: str  # UPPER_SNAKE
    message: str


Outgoing = Assignment | CancelRun | Refusal


@dataclass(frozen=True)
class Failure:
    """How a worker's task failed."""

    type: str
    message: str
    details: dict[str, Any] | None
    retryable: bool


@dataclass(eq=False)
class _Result:
    """A result waiting for the finisher."""

    session: Session
    held: _Held
    outcome: RunOutcome
    retry: RetryPlanner
    queued: float  # monotonic
    alone: bool = False  # written in a statement of its own (a batch that held it failed)
    refusals: int = 0  # failed writes of it alone


@dataclass
class _Held:
    claim: RemoteClaim
    deadline: datetime | None
    output: list[str] = field(default_factory=list)
    output_bytes: int = 0  # of all output received, kept or not
    kept_bytes: int = 0
    truncated: bool = False
    cancel_sent: bool = False
    cancel_requested: bool = False
    ending: bool = False  # its end is being recorded: no second result, no renewal
    renewed_at: float = 0.0  # monotonic: when it was taken or last renewed

    @property
    def execution(self) -> Execution:
        return self.claim.claimed.execution

    @property
    def name(self) -> str:
        return execution_name(self.execution.namespace, self.execution.id)


@dataclass(frozen=True)
class _Heartbeat:
    """The leases one heartbeat renews, waiting to be renewed with others."""

    leases: list[HeldRemoteLease]

    def claims(self) -> list[tuple[str, str, str]]:
        return []  # heartbeats of any streams may go together


class SessionClosed(Exception):
    """The session ended on the server's side; `code` and `message` say why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Session:
    """One worker's stream: what it takes, what it holds, and what waits to be sent to it."""

    def __init__(
        self,
        *,
        identity: str,
        queues: tuple[str, ...],
        tasks: tuple[str, ...],
        namespaces: tuple[str, ...] | None,
        free: int,
        agent: str,
        max_in_flight: int,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.identity = identity
        self.queues = queues
        self.tasks = tasks
        self.namespaces = namespaces
        self.agent = agent
        self.free = free
        self.max_in_flight = max_in_flight
        self.held: dict[str, _Held] = {}  # by lease token
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.closed: SessionClosed | None = None
        self.closed_event = asyncio.Event()
        # The leases of this stream: its executions' `worker`, and the secret of its tokens.
        self.secret = new_session_secret()
        self.worker = session_worker(identity, self.secret)
        # Results of this stream being recorded at once, at most.
        self.recording = asyncio.Semaphore(MAX_RECORDING)
        self.last_heard = 0.0  # monotonic

    def room(self) -> int:
        if self.closed is not None:
            return 0
        return max(0, min(self.free, self.max_in_flight - len(self.held)))

    def may_take(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def send(self, message: Outgoing) -> None:
        if self.outbox.qsize() >= MAX_OUTBOX:
            self.close(
                "RESOURCE_EXHAUSTED", f"more than {MAX_OUTBOX} messages wait for the worker to read them"
            )
            return
        self.outbox.put_nowait(message)

    def close(self, code: str, message: str) -> None:
        if self.closed is None:
            self.closed = SessionClosed(code, message)
            self.closed_event.set()


def _parse_execution(name: str) -> tuple[str, str] | None:
    try:
        parsed = parse_name(name, "execution")
    except InvalidArgument:
        return None
    return parsed.namespace, parsed.id


class RemoteWorkers:
    """The sessions of this replica and the loops that serve them."""

    def __init__(
        self,
        store: Store,
        *,
        lease: timedelta,
        capture_bytes: int,
        max_in_flight: int = MAX_IN_FLIGHT,
        recover: bool = False,
        registry: RemoteRegistry | None = None,
        replica: str = "",
        max_running_per_namespace: int = 0,
    ) -> None:
        self._store = store
        # At most this many executions of a namespace run at once, local and remote (0: no limit).
        self._namespace_limit = max_running_per_namespace
        self.lease = lease
        self._capture_bytes = capture_bytes
        self.max_in_flight = max_in_flight
        # Whether this replica recovers expired leases itself (it runs no local worker pool,
        # whose recovery loop would).
        self._recover = recover
        self._sessions: dict[str, Session] = {}
        # Results waiting for the finisher, which writes those of one lease holder together.
        self._results: list[_Result] = []
        self._results_waiting = asyncio.Event()
        self._registry = registry
        self._replica = replica
        # What the dispatch sleeps on: work queued, a session opened, room come free while work
        # may wait for it (`_more`: the last take said so), stopping.
        self._wake = asyncio.Event()
        self._more = True
        self._renewals: GroupCommit[_Heartbeat, LeaseRenewal] = GroupCommit(self._renew)
        self._clock = asyncio.get_running_loop().time

    @property
    def sessions(self) -> list[Session]:
        return list(self._sessions.values())

    def start(self, supervisor: Supervisor, stopping: asyncio.Event) -> None:
        supervisor.start("remote-dispatch", lambda: self._dispatch(stopping))
        supervisor.start("remote-deadlines", lambda: self._deadlines(stopping))
        # Until the results of the streams still open are written (the DRAIN phase).
        supervisor.start("remote-finisher", self._finisher, phase=DRAIN)
        if self._registry is not None:
            supervisor.start("remote-registry", lambda: self._report(stopping))

    # Sessions

    def open(
        self,
        *,
        identity: str,
        queues: Iterable[str],
        tasks: Iterable[str],
        namespaces: Iterable[str] | None,
        free: int,
        agent: str = "",
    ) -> Session:
        session = Session(
            identity=identity,
            queues=tuple(dict.fromkeys(queues)),
            tasks=tuple(dict.fromkeys(tasks)),
            namespaces=None if namespaces is None else tuple(dict.fromkeys(namespaces)),
            free=free,
            agent=agent,
            max_in_flight=self.max_in_flight,
        )
        session.last_heard = self._clock()
        self._sessions[session.id] = session
        self._wake.set()
        log.info(
            "remote worker %s connected (session %s, queues %s, %d free slots)",
            identity,
            session.id,
            ",".join(session.queues),
            free,
        )
        return session

    def close(self, session: Session) -> None:
        """The stream ended: the leases it held run out unless the worker reconnects in time."""
        session.close("CANCELLED", "the stream ended")
        if self._sessions.pop(session.id, None) is not None:
            log.info(
                "remote worker %s disconnected (session %s) holding %d executions",
                session.identity,
                session.id,
                len(session.held),
            )

    def set_free(self, session: Session, free: int) -> None:
        session.last_heard = self._clock()
        session.free = free
        self._room_grew()

    # Messages about executions

    def _refuse(self, session: Session, name: str, token: str, message: str, *, cancel: bool = True) -> None:
        session.send(Refusal(name, token, "FAILED_PRECONDITION", "LEASE_NOT_HELD", message))
        if cancel:
            session.send(CancelRun(name, token, "lease lost"))

    def _held(self, session: Session, name: str, token: str) -> _Held | None:
        held = session.held.get(token)
        if held is None or held.name != name or held.ending:
            return None
        return held

    async def heartbeat(self, session: Session, leases: list[tuple[str, str]]) -> None:
        """Renew the leases listed; take over those of this worker's identity that are still its
        own (a reconnect); refuse the rest."""
        session.last_heard = self._clock()
        renew: list[HeldRemoteLease] = []
        adopting: dict[str, tuple[str, str]] = {}
        for name, token in leases:
            held = session.held.get(token)
            if held is not None and held.name == name:
                if not held.ending:
                    renew.append(
                        HeldRemoteLease(held.execution.namespace, held.execution.id, held.claim.worker)
                    )
                continue
            key = _parse_execution(name)
            if key is None or not session.may_take(key[0]) or not secret_of(token):
                self._refuse(session, name, token, "not a lease this worker holds")
                continue
            # A lease of an earlier stream of this worker: its token proves the secret.
            renew.append(HeldRemoteLease(key[0], key[1], session_worker(session.identity, secret_of(token))))
            adopting[key[1]] = (name, token)
        if not renew:
            return
        asked = self._clock()
        # With the heartbeats of other streams that come meanwhile: one statement for them all.
        renewal = await self._renewals.submit(_Heartbeat(renew))
        for held in list(session.held.values()):
            execution_id = held.execution.id
            if execution_id in renewal.lost and not held.ending:
                session.held.pop(held.claim.token, None)
                self._room_grew()
                self._refuse(session, held.name, held.claim.token, "the lease expired: the run was recovered")
                continue
            if any(r.execution_id == execution_id for r in renew):
                held.renewed_at = asked
            if execution_id in renewal.cancelled:
                held.cancel_requested = True
                if not held.cancel_sent:
                    held.cancel_sent = True
                    session.send(CancelRun(held.name, held.claim.token, "cancelled"))
        for execution_id, (name, token) in adopting.items():
            if execution_id in renewal.lost:
                self._refuse(session, name, token, "not a lease this worker holds")
                continue
            await self._adopt(session, name, token, execution_id in renewal.cancelled)

    async def _renew(self, heartbeats: list[_Heartbeat]) -> list[LeaseRenewal]:
        return await self._store.renew_remote([h.leases for h in heartbeats], self.lease)

    async def _adopt(self, session: Session, name: str, token: str, cancelled: bool) -> None:
        key = _parse_execution(name)
        assert key is not None
        try:
            execution = await self._store.get_execution(*key)
            job = await self._store.get_job(execution.namespace, execution.job_id)
        except NotFound:
            self._refuse(session, name, token, "no such execution")
            return
        if job.executor != REMOTE or str(job.parameters.get("queue", "")) not in session.queues:
            self._refuse(session, name, token, "not an execution of this worker's queues")
            return
        held = _Held(
            RemoteClaim(ClaimedExecution(execution, job), token),
            _deadline(execution, job),
            renewed_at=self._clock(),
        )
        # Its output goes on after what the earlier stream stored (the last chunk's end).
        last = await self._store.read_logs(execution.namespace, execution.id, 2**62, 1)
        if last:
            offset, data, _ = last[-1]
            held.output_bytes = held.kept_bytes = offset + len(data.encode())
        held.cancel_requested = cancelled
        session.held[token] = held
        self._room_grew()
        log.info(
            "remote worker %s took over its run after reconnecting",
            session.identity,
            extra=run_fields(execution),
        )
        if cancelled:
            held.cancel_sent = True
            session.send(CancelRun(name, token, "cancelled"))

    async def output(self, session: Session, name: str, token: str, text: str) -> None:
        held = self._held(session, name, token)
        if held is None:
            self._refuse(session, name, token, "output for a lease this worker does not hold")
            return
        if not text:
            return  # a chunk holds at least one byte: its offset is its key
        text = storable_text(text)  # the job's to choose: stored as the local runners' is
        data = text.encode()
        offset = held.output_bytes
        held.output_bytes += len(data)
        room = self._capture_bytes - held.kept_bytes
        if room <= 0:
            held.truncated = True
            return
        if len(data) > room:
            text = data[:room].decode(errors="ignore")
            held.truncated = True
        held.output.append(text)
        held.kept_bytes += len(text.encode())
        try:
            await self._store.append_logs(held.execution.namespace, held.execution.id, [(offset, text)])
        except StorageUnavailable as error:
            # Live output is best effort; the whole output is stored with the outcome.
            log.warning("could not store live output (%s)", error, extra=run_fields(held.execution))
        except Exception:
            # Nor may any other failure of it end the stream, and every run it holds.
            log.exception("could not store live output", extra=run_fields(held.execution))

    async def result(
        self, session: Session, name: str, token: str, *, success: Any = None, failure: Failure | None = None
    ) -> None:
        held = self._held(session, name, token)
        if held is None:
            self._refuse(session, name, token, "a result for a lease this worker does not hold", cancel=False)
            return
        output, truncated = "".join(held.output), held.truncated
        if failure is None:
            outcome = RunOutcome(
                ExecutionState.SUCCEEDED, output=output, output_truncated=truncated, result=success
            )
            retry: RetryPlanner = _plan_retry
        elif held.cancel_requested:
            outcome = RunOutcome(
                ExecutionState.CANCELLED, output=output, output_truncated=truncated, error="cancelled"
            )
            retry = _plan_retry
        else:
            error = f"{failure.type}: {failure.message}" if failure.message else failure.type
            outcome = RunOutcome(
                ExecutionState.FAILED,
                output=output,
                output_truncated=truncated,
                error=error,
                result={
                    "type": failure.type,
                    "message": failure.message,
                    "retryable": failure.retryable,
                    **({"details": failure.details} if failure.details else {}),
                },
            )
            retry = _plan_retry if failure.retryable else _no_retry
        # Recorded beside the stream's next messages (at most MAX_RECORDING of a stream at once):
        # results that arrive together are written together, not one round trip after another.
        held.ending = True
        await session.recording.acquire()
        self._results.append(_Result(session, held, storable_outcome(outcome), retry, self._clock()))
        self._results_waiting.set()

    async def _finisher(self) -> None:
        """Writes the results waiting: those of one lease holder (a stream, or an earlier stream
        of its worker) and retry rule in one statement. While the database is away it retries,
        each result for as long as its lease lasts (which protects the run meanwhile)."""
        while True:
            await self._results_waiting.wait()
            self._results_waiting.clear()
            while self._results:
                batch, self._results = self._results, []
                groups: dict[tuple[str, RetryPlanner, int], list[_Result]] = {}
                for item in batch:
                    alone = id(item) if item.alone else 0
                    groups.setdefault((item.held.claim.worker, item.retry, alone), []).append(item)
                for (worker, retry, _), items in groups.items():
                    try:
                        ended = await self._store.finish_executions(
                            [(i.held.claim.claimed, i.outcome) for i in items], worker, retry
                        )
                        loop_ok()
                    except StorageUnavailable as error:
                        loop_failed(error)
                        log.warning("cannot record %d remote results yet (%s); retrying", len(items), error)
                        self._results[:0] = self._kept(items)
                        await asyncio.sleep(RETRY_AFTER_ERROR)
                        continue
                    except Exception as error:
                        # One result the database refuses must not hold up the others: each is
                        # written alone from now, behind the rest.
                        loop_failed(error)
                        log.exception("recording %d remote results failed; retrying", len(items))
                        for item in items:
                            if item.alone:
                                item.refusals += 1
                                item.outcome = after_refusal(
                                    item.outcome, item.refusals, error, item.held.execution
                                )
                            item.alone = True
                        self._results.extend(self._kept(items))
                        await asyncio.sleep(RETRY_AFTER_ERROR)
                        continue
                    for item, execution in zip(items, ended, strict=True):
                        item.session.recording.release()
                        self._ended(item.session, item.held, execution)

    def _kept(self, items: list[_Result]) -> list[_Result]:
        """The results of `items` still worth writing again: those whose lease may not have
        expired yet (the others' runs are recovered as LOST); the rest give their place back."""
        keep = [i for i in items if self._clock() - i.queued < self.lease.total_seconds()]
        for item in items:
            if item not in keep:
                item.session.recording.release()
        return keep

    def _ended(self, session: Session, held: _Held, ended: Execution | None) -> bool:
        """After a finish: the run is no longer the stream's; a refusal if it was not recorded."""
        session.held.pop(held.claim.token, None)
        self._room_grew()
        metrics.execution_left(REMOTE, ended.state.name if ended else None)
        if ended is None:
            log.warning(
                "remote run outcome not recorded: its lease had expired", extra=run_fields(held.execution)
            )
            self._refuse(
                session,
                held.name,
                held.claim.token,
                "the lease expired before the result came: not recorded",
                cancel=False,
            )
            return False
        if log.isEnabledFor(logging.INFO):
            log.info(
                "remote run finished",
                extra={**run_fields(held.execution), "state": ended.state.name, "worker": session.identity},
            )
        return True

    async def release(self, session: Session, name: str, token: str) -> None:
        held = self._held(session, name, token)
        if held is None:
            self._refuse(session, name, token, "a release of a lease this worker does not hold", cancel=False)
            return
        held.ending = True
        try:
            await self._store.release_executions(held.claim.worker, [held.execution.id])
        finally:
            session.held.pop(token, None)
            self._room_grew()
            metrics.execution_left(REMOTE, None)
        log.info(
            "remote worker %s gave a run back to the queue",
            session.identity,
            extra=run_fields(held.execution),
        )

    async def _finish(self, session: Session, held: _Held, outcome: RunOutcome, retry: RetryPlanner) -> bool:
        """Record the outcome at once if the lease is still held; whether it was."""
        held.ending = True
        try:
            ended = (
                await self._store.finish_executions([(held.claim.claimed, outcome)], held.claim.worker, retry)
            )[0]
        except BaseException:
            held.ending = False  # the lease still protects the run: the next check tries again
            raise
        return self._ended(session, held, ended)

    # Loops

    def _room_grew(self) -> None:
        # Under a namespace limit, any end may make room for runs the limit held back (as the
        # local pool's claims do).
        if self._more or self._namespace_limit > 0:
            self._wake.set()

    async def _dispatch(self, stopping: asyncio.Event) -> None:
        """Takes for every session with room at once (one statement on PostgreSQL). Woken by work
        queued (its own subscription: the local worker pool sleeps on the same channel, and a
        shared wake-up taken by one would be missed by the other), by a new session, and by room
        coming free only while the last take says work may be waiting for it: a worker's every
        result frees a slot, and a take for it when the queue is empty would be wasted. It
        sleeps on one event that all of them set: a wake-up is one step of the event loop."""
        stopper = asyncio.ensure_future(stopping.wait())
        stopper.add_done_callback(lambda _: self._wake.set())
        try:
            # For this run of the loop only: a restarted loop would otherwise add one more each time.
            with self._store.wakeup.subscribed("executions", self._wake):
                while not stopping.is_set():
                    # Cleared before the take: a wake-up while it runs is for the next one.
                    self._wake.clear()
                    if await self._take_for_sessions(stopping):
                        continue
                    # The poll: a retry's backoff ending, work another replica's take left.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_SECONDS):
                            await self._wake.wait()
        finally:
            stopper.cancel()

    async def _take_for_sessions(self, stopping: asyncio.Event) -> bool:
        """One take for every session with room; whether to take again at once."""
        wanting = [s for s in self.sessions if s.room() > 0]
        if not wanting:
            self._more = True  # no room to take with: work queued meanwhile waits for the first room
            return False
        try:
            taken = await self._store.take_remote(
                [self._take_of(s) for s in wanting], namespace_limit=self._namespace_limit
            )
            loop_ok()
        except StorageUnavailable as error:
            loop_failed(error)
            log.warning("remote workers: database unavailable (%s); retrying", error)
            await first_of(asyncio.sleep(RETRY_AFTER_ERROR), stopping.wait())
            return True
        for session, claims in zip(wanting, taken.claims, strict=True):
            self._hand(session, claims)
        self._more = taken.more
        return self._more and any(taken.claims)  # more may wait for the room still free

    def _take_of(self, session: Session) -> RemoteTake:
        return RemoteTake(
            worker=session.worker,
            secret=session.secret,
            queues=session.queues,
            tasks=session.tasks,
            namespaces=session.namespaces,
            limit=session.room(),
            lease=self.lease,
        )

    def _hand(self, session: Session, claims: list[RemoteClaim]) -> None:
        for claim in claims:
            execution, job = claim.claimed.execution, claim.claimed.job
            deadline = _deadline(execution, job)
            session.held[claim.token] = _Held(claim, deadline, renewed_at=self._clock())
            session.free -= 1
            late = metrics.seconds_late(execution.start_time, execution.due_time or execution.scheduled_time)
            metrics.execution_started(REMOTE, late)
            if session.closed is None:
                session.send(
                    Assignment(
                        claim,
                        queue=str(job.parameters.get("queue", "")),
                        task=str(job.parameters.get("task", "")),
                        deadline=deadline,
                    )
                )
            # A session closed meanwhile: its leases run out and the runs are retried.

    async def _deadlines(self, stopping: asyncio.Event) -> None:
        recover_every = max(self.lease.total_seconds() / 2, DEADLINE_CHECK_SECONDS)
        next_recovery = self._clock() + recover_every
        while not stopping.is_set():
            try:
                await self._check_deadlines()
                if self._recover and self._clock() >= next_recovery:
                    next_recovery = self._clock() + recover_every
                    await self._store.recover_expired(_plan_retry, limit=100)
                loop_ok()
            except StorageUnavailable as error:
                loop_failed(error)
                log.warning("remote workers: database unavailable (%s)", error)
            await first_of(asyncio.sleep(DEADLINE_CHECK_SECONDS), stopping.wait())

    async def _check_deadlines(self) -> None:
        silent_after = self.lease.total_seconds()
        timed_out: list[tuple[Session, _Held]] = []
        now: datetime | None = None
        for session in self.sessions:
            if self._clock() - session.last_heard > silent_after:
                session.close(
                    "DEADLINE_EXCEEDED",
                    f"no heartbeat for {silent_after:g}s: the worker's leases are given up",
                )
                continue
            for held in [h for h in session.held.values() if not h.ending]:
                if self._clock() - held.renewed_at > silent_after:
                    # Not renewed for a whole lease: it is gone (or going) to the recovery.
                    session.held.pop(held.claim.token, None)
                    self._room_grew()
                    self._refuse(
                        session, held.name, held.claim.token, "the lease expired: not renewed in time"
                    )
            if any(h.deadline is not None for h in session.held.values()):
                now = now or await self._store.now()
                timed_out += [
                    (session, h)
                    for h in session.held.values()
                    if h.deadline is not None and h.deadline <= now and not h.ending
                ]
        for session, held in timed_out:
            timeout = held.claim.claimed.job.timeout
            error = f"timed out after {timeout.total_seconds():g}s" if timeout else "timed out"
            outcome = RunOutcome(
                ExecutionState.TIMED_OUT,
                output="".join(held.output),
                output_truncated=held.truncated,
                error=error,
            )
            if await self._finish(session, held, outcome, _plan_retry):
                session.send(CancelRun(held.name, held.claim.token, "timed out"))

    def connected(self) -> list[ConnectedWorker]:
        """This replica's sessions as the cluster status shows them."""
        return [
            ConnectedWorker(
                session=s.id,
                replica=self._replica,
                identity=s.identity,
                queues=s.queues,
                namespaces=s.namespaces,
                free_slots=s.room(),
                running=len(s.held),
                agent=s.agent,
            )
            for s in self.sessions
            if s.closed is None
        ]

    async def _report(self, stopping: asyncio.Event) -> None:
        assert self._registry is not None
        reported: list[ConnectedWorker] | None = None
        last = 0.0
        while not stopping.is_set():
            now = self._clock()
            current = self.connected()
            if current != reported or now - last >= REPORT_EVERY:
                try:
                    await self._registry.report(self._replica, current)
                    reported, last = current, now
                    loop_ok()
                except StorageUnavailable as error:
                    loop_failed(error)
                    log.warning("remote workers: cannot report the connected workers (%s)", error)
            await first_of(asyncio.sleep(REPORT_CHANGES_EVERY), stopping.wait())
        # Stopping: this replica's streams end with it.
        with contextlib.suppress(StorageUnavailable):
            await self._registry.forget(self._replica)


def _deadline(execution: Execution, job: Job) -> datetime | None:
    if job.timeout is None or execution.start_time is None:
        return None
    return execution.start_time + job.timeout


def _plan_retry(job: Job, execution: Execution, state: ExecutionState, now: datetime) -> datetime | None:
    return retry_due_time(job.retry_policy, execution.attempt, state, now)


def _no_retry(job: Job, execution: Execution, state: ExecutionState, now: datetime) -> datetime | None:
    return None


def job_resource(job: Job) -> str:
    return job_name(job.namespace, job.id)


__all__ = [
    "Assignment",
    "CancelRun",
    "Failure",
    "Outgoing",
    "Refusal",
    "RemoteWorkers",
    "Session",
    "SessionClosed",
    "heartbeat_interval",
]
