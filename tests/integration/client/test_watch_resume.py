"""`watch()` survives a server restart: it reconnects by itself and resumes after the last
sequence it delivered, so nothing is missed and nothing repeated."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import cronwire
from cronwire import EventType
from tests.support import start_server, wait_for

WAIT = 60.0


def test_watch_resumes_across_a_server_restart(
    fresh_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    database = fresh_database_url("sqlite")
    # A watch stream never ends by itself, so the server holds it for the whole grace on SIGTERM.
    first = start_server(database, tmp_path / "first", "--shutdown-grace", "1")
    port = first.port
    second = None
    client = cronwire.Client(first.target, namespace="resume", timeout=10)
    try:
        client.create_job("hello", executor="shell", parameters={"argv": ["echo", "hi"]})
        # The creation's sequence (0 would mean "from now on"); it is numbered just after the commit.
        latest = wait_for(
            lambda: max((e.sequence for e in client.iter_events(namespace="-")), default=0), WAIT, "an event"
        )
        seen: list[cronwire.Event] = []
        failure: list[BaseException] = []

        def watch() -> None:
            try:
                # After `latest`: a run that starts before the stream is open is replayed.
                for event in client.watch(after_sequence=latest, event_types=[EventType.EXECUTION_SUCCEEDED]):
                    seen.append(event)
                    if len(seen) == 2:
                        return
            except BaseException as error:  # reported by the test, not lost in the thread
                failure.append(error)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        before = client.run("hello", wait_timeout=WAIT)
        wait_for(lambda: seen, WAIT, "the first run's event")

        first.stop()  # the stream breaks with UNAVAILABLE; the watcher keeps reconnecting
        second = start_server(database, tmp_path / "second", "--listen", f"127.0.0.1:{port}")

        def reachable() -> bool:
            # The channel finds the server again after its reconnect backoff; until then calls fail
            # fast with UNAVAILABLE (a read is retried a few times, a write never).
            try:
                client.get_job("hello")
            except cronwire.Unavailable:
                return False
            return True

        wait_for(reachable, WAIT, "the restarted server")
        after = client.run("hello", wait_timeout=WAIT)
        watcher.join(WAIT)
        assert not watcher.is_alive(), f"the watcher did not resume; saw {seen}"
        assert failure == []
        assert [e.execution.name for e in seen if e.execution is not None] == [before.name, after.name]
        assert seen[0].sequence < seen[1].sequence
    finally:
        client.close()
        first.stop()
        if second is not None:
            second.stop()
