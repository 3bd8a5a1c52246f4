"""How many executions one run of a job leads to through its dependents.

Every path counts: a job that two chains reach runs once per chain. CreateJob/UpdateJob bound it
(jobs.py, the server's --max-fan-out) and so does a backfill, times its ticks (schedules.py).
"""

from __future__ import annotations

from cronwire_server.core.errors import NotFound
from cronwire_server.storage import Store


def fan_outs(graph: dict[str, list[str]], roots: list[str]) -> dict[str, int]:
    """The executions one run of each root leads to through dependents: itself plus, for each
    dependent, that dependent's own count (every path counts: a diamond's shared job twice).

    `graph` maps a job id to its dependents' ids; an id not in it (a job that does not exist yet)
    counts 1. Memoised and iterative, so the work is linear in the jobs and edges reached; a cycle
    (refused before, but two concurrent updates could close one) is cut where it closes.
    """
    counts: dict[str, int] = {}
    for root in roots:
        if root in counts:
            continue
        open_: set[str] = {root}
        stack = [(root, iter(graph.get(root, ())))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                open_.discard(node)
                counts[node] = 1 + sum(counts.get(c, 1) for c in graph.get(node, ()) if c not in open_)
            elif child not in counts and child not in open_:
                open_.add(child)
                stack.append((child, iter(graph.get(child, ()))))
    return counts


async def fan_out_of(store: Store, namespace: str, job_id: str) -> int:
    """The executions one run of the job leads to through its dependents, reading each job it
    reaches once (jobs that do not exist count 1)."""
    graph: dict[str, list[str]] = {}
    pending = [job_id]
    while pending:
        current = pending.pop()
        if current in graph:
            continue
        try:
            graph[current] = [d.job_id for d in (await store.get_job(namespace, current)).dependents]
        except NotFound:
            graph[current] = []
        pending += [d for d in graph[current] if d not in graph]
    return fan_outs(graph, [job_id])[job_id]
