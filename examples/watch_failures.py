"""A watcher that reacts to failed executions as they happen.

    python examples/watch_failures.py --server 127.0.0.1:50051

NOTE: this needs the server's event stream (EventService.WatchEvents). Against a server
without it, `watch()` raises `cronwire.Unimplemented` and this script says so and exits.

`watch()` reconnects by itself when the connection breaks and resumes after the last event it
delivered, so no failure is missed or reported twice. Pass `--after SEQUENCE` to replay the
retained events after a sequence you stored (e.g. on restart of this watcher).
"""

from __future__ import annotations

import argparse

import cronwire
from cronwire import EventType

FAILURES = (EventType.EXECUTION_FAILED, EventType.EXECUTION_TIMED_OUT, EventType.EXECUTION_LOST)


def react(client: cronwire.Client, event: cronwire.Event) -> None:
    """What to do about one failure: here, print it with the end of its output."""
    execution = event.execution
    if execution is None:
        return
    # Event snapshots leave the output out; read it from the execution itself.
    output = client.get_execution(execution.name).output
    tail = "\n    ".join(output.splitlines()[-5:])
    # SDK enums print as their names: EXECUTION_FAILED, EXECUTION_TIMED_OUT, ...
    print(f"[{event.sequence}] {event.type} {execution.job} attempt {execution.attempt}: {execution.error}")
    if tail:
        print(f"    {tail}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--namespace", default="default", help="'-' for every namespace")
    parser.add_argument("--after", type=int, default=0, help="replay the retained events after this sequence")
    args = parser.parse_args()

    with cronwire.Client(args.server, namespace="default") as client:
        try:
            for event in client.watch(
                event_types=FAILURES,
                after_sequence=args.after,
                namespace=args.namespace,
            ):
                react(client, event)
        except cronwire.Unimplemented:
            print("this server has no event stream (EventService.WatchEvents)")
            return 2
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
