"""SDK enums read from a real server print as their names, not as the proto's numbers."""

from __future__ import annotations

import cronwire
from cronwire import EventType, ExecutionState, ExecutionTrigger


def test_enums_print_as_their_names(client: cronwire.Client) -> None:
    job = client.create_job("ko", executor="shell", parameters={"argv": ["false"]})
    execution = client.run(job)

    assert execution.state is ExecutionState.FAILED
    assert repr(execution.state) == "ExecutionState.FAILED"
    assert str(execution.state) == "FAILED"
    assert f"{execution.state} via {execution.trigger}" == "FAILED via RUN_NOW"
    assert f"[{execution.state:>8}]" == "[  FAILED]"
    assert repr([execution.trigger]) == "[ExecutionTrigger.RUN_NOW]"
    # Still the proto's numbers underneath: comparisons and ints keep working.
    assert execution.state == int(ExecutionState.FAILED)
    assert ExecutionTrigger.RUN_NOW in (execution.trigger,)

    (event,) = client.list_events(job=job, event_types=[EventType.EXECUTION_FAILED]).items
    assert str(event.type) == "EXECUTION_FAILED"


def test_key_roles_print_as_their_names() -> None:
    # Not through a server: the first key would turn auth on for the other tests' server.
    assert str(cronwire.Role.VIEWER) == "VIEWER"
    assert repr(cronwire.Role.VIEWER) == "Role.VIEWER"
    assert f"{cronwire.Role.ADMIN:>6}" == " ADMIN"
