"""Lease renewal on a thread of its own.

A run's lease is renewed every second or so whatever the event loop is doing. Were renewals
made on the loop, a loop held by a slow request, a long conversion or a pause of the process's
own making would let the fence kill healthy runs (and, without a fence, let the lease pass to
another replica while the run went on). So the worker pool renews from a thread with a database
connection of its own; what a renewal learns is acted on where it must be at once (the fence
kills a run whose lease passed on from this thread) and handed to the event loop for the rest.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from cronwire_server.core.errors import StorageUnavailable
from cronwire_server.executors.fence import Fence
from cronwire_server.storage.base import BlockingRenewals, LeaseRenewal

log = logging.getLogger(__name__)

# (what the database said, the runs renewed as {execution id: lease token}, tokens renewed too late)
Learned = Callable[[LeaseRenewal, dict[str, str], set[str]], object]


class LeaseRenewer:
    """Renews `targets()` ({execution id: lease token}) every `interval` seconds until `stop`, and
    moves each renewed run's fence deadline to the renewal's send time + `safe_for`."""

    def __init__(
        self,
        renewals: BlockingRenewals,
        *,
        worker: str,
        lease: timedelta,
        interval: float,
        safe_for: float,
        fence: Fence,
        targets: Callable[[], dict[str, str]],
        learned: Learned,
    ) -> None:
        self._renewals = renewals
        self._worker = worker
        self._lease = lease
        self._interval = interval
        self._safe_for = safe_for
        self._fence = fence
        self._targets = targets
        self._learned = learned
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cronwire-lease-renewer", daemon=True)
        # Why the last pass failed, None when it worked: the supervisor's view of this thread.
        self.failure: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end (it closes its connection); no wait: a renewal under way ends by
        itself, and its result is no longer acted on."""
        self._stop.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                try:
                    self.renew_once()
                    self.failure = None
                except StorageUnavailable as error:
                    self.failure = str(error)
                    log.warning("heartbeat failed (%s)", error)
                except Exception as error:  # never end the thread over one pass
                    self.failure = repr(error)
                    log.exception("lease renewal failed")
        finally:
            self._renewals.close()

    def renew_once(self) -> None:
        sent = time.monotonic()
        # Runs already past their deadline are the fence's: renewing them would change nothing.
        targets = {i: token for i, token in self._targets().items() if not self._fence.overdue(token, sent)}
        if not targets:
            return
        renewal = self._renewals.renew(self._worker, list(targets), self._lease)
        if self._stop.is_set():
            return
        for execution_id in renewal.lost:
            self._fence.kill(targets[execution_id])  # now, not when the event loop gets to it
        kept = [token for i, token in targets.items() if i not in renewal.lost]
        # Only if the fence learns the new deadline before the last one passed.
        late = self._fence.extend(kept, sent + self._safe_for)
        self._learned(renewal, targets, late)
