"""The cyclic garbage collector, set for a long-running server once it has started (`settle`).

With CPython's defaults a busy server collected its young objects every 700 allocations and, in
each full collection, scanned again every object start-up had built (modules, the schema, the
generated protobuf classes): at 1,000 runs/s about 0.6 s of collections in a 5 s run, four of
them stopping the event loop for about 100 ms each, so the runs it held started that late.
"""

from __future__ import annotations

import gc

# Net allocations of container objects between young collections (CPython: 700); most objects of
# a run are freed before the next one, and a young collection stays under ~10 ms here.
YOUNG = 10_000
# Collections of a generation between collections of the next (CPython: 10, 10).
OLDER = 20


def settle() -> None:
    """Once start-up has built what lives as long as the process: collect, leave all of it out
    of every later collection (`gc.freeze`), and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG, OLDER, OLDER)
