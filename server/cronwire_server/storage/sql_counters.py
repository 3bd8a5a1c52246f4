"""PostgreSQL: the execution counters added to by the statements of every run themselves.

Every other change to `executions` reaches the counters through its triggers, recorded and added
at commit (migration 0011). The statements of every run (a dispatch's ticks, a plain claim, a
plain finish) add their own rows at once, by `cronwire_counters_count`, which also tells their
trigger to record nothing (migration 0029): the same rules, without the JSON, the changes row and
the deferred trigger of each transaction. Such a statement must be its transaction's last change,
as the rows of the counters are then its last locks.
"""

from __future__ import annotations

from cronwire_server.core.model import ExecutionState


def counted(
    rows: str,
    *,
    after: str,
    inserted: bool,
    old_state: ExecutionState | None = None,
    own_trigger: bool = True,
) -> str:
    """A CTE named `counted` adding the executions of the CTE `rows` (each as it is now) to the
    counters: inserted ones, or ones that were all in `old_state`. The statement must read it (a
    CTE nobody reads is not run): it has one row.

    It runs once the CTE `after` (one with RETURNING: the rest of the statement's work) has: the
    counter rows it locks are shared by every run of a job, so it holds them from then until the
    commit only, as the fold at commit did.

    `own_trigger`: the rows changed in this statement, whose trigger on `executions` must then
    record nothing; False where a function of the statement changed them and told its own
    statement's trigger so (`cronwire_end_executions`)."""
    before = f"'{old_state.value}'" if old_state else "NULL"
    # As the triggers record them: in order of end time, a duration for each that ended now.
    change = f"""ROW(r.namespace, r.job_id, r.schedule_id, r.id, {str(inserted).lower()}, {before}, r.state,
        r.start_time, CAST(extract(epoch FROM r.end_time - r.start_time) AS float8)
    )::cronwire_counter_change"""
    return f"""counted AS MATERIALIZED (
    SELECT {"cronwire_counters_count" if own_trigger else "cronwire_counters_add"}(
        coalesce(array_agg({change} ORDER BY r.end_time NULLS FIRST, r.id), '{{}}')) AS counted
    FROM {rows} AS r CROSS JOIN (SELECT count(*) FROM {after}) AS done
)"""
