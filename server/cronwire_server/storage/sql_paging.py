"""Pages of a listing bounded in bytes as well as in count.

A page of 1,000 items is only as small as its items: a job's parameters may take 256 KiB, a run's
result 1 MiB, so a page bounded by count alone could pass the size of a message a client receives
(4 MiB by default in gRPC) or the server sends (8 MiB), and would be read and built whole before
being refused. Each page is cut at PAGE_BYTES of its JSON and text columns, keeping at least one
item; the cursor goes on from the last one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

PAGE_BYTES = 1024 * 1024


def sized_page(
    query: sa.Select[Any], order: Sequence[tuple[str, bool]], size: int, *, postgres: bool
) -> sa.Select[Any]:
    """The first `size` + 1 rows of `query` in `order` ((column name, descending) pairs), cut to
    the longest prefix whose JSON and text columns (as the text a client is sent, near enough)
    fit in PAGE_BYTES, and at least one. Each row also carries `page_rows`, how many the count
    alone allowed: `kept` tells a cut page from the end with it."""
    counted = query.order_by(*(_ordered(query.selected_columns[n], d) for n, d in order)).limit(size + 1)
    rows = counted.subquery()

    def length(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        # JSON as text: PostgreSQL stores it as jsonb, SQLite as its text already.
        return sa.func.coalesce(sa.func.length(sa.cast(column, sa.Text()) if postgres else column), 0)

    large = [c for c in rows.c if isinstance(c.type, sa.JSON | sa.Text)]
    row_bytes = sum((length(column) for column in large), sa.literal(0))
    in_order = [_ordered(rows.c[n], d) for n, d in order]
    sized = sa.select(
        rows,
        (sa.func.sum(row_bytes).over(order_by=in_order) - row_bytes).label("bytes_before"),
        sa.func.count().over().label("page_rows"),
    ).subquery()
    return (
        sa.select(*(sized.c[c.name] for c in rows.c), sized.c.page_rows)
        .where(sized.c.bytes_before < PAGE_BYTES)
        .order_by(*(_ordered(sized.c[n], d) for n, d in order))
    )


def kept(rows: Sequence[Row[Any]], size: int) -> tuple[Sequence[Row[Any]], bool]:
    """The rows of a `sized_page` to return, and whether more follow them: past the count asked
    for, or the page was cut by its size."""
    more = len(rows) > size or (bool(rows) and len(rows) < int(rows[0].page_rows))
    return rows[:size], more


def _ordered(column: sa.ColumnElement[Any], descending: bool) -> sa.ColumnElement[Any]:
    return column.desc() if descending else column.asc()
