"""The server's garbage collector settings, applied once it has started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from cronwire_server import collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_what_start_up_built_is_left_out_of_later_collections_and_young_ones_are_rarer() -> None:
    built_at_start = [[n] for n in range(1000)]  # containers that live as long as the process
    assert gc.get_freeze_count() == 0
    collector.settle()
    assert gc.get_freeze_count() >= len(built_at_start)
    assert not any(gc.is_tracked(o) and o is built_at_start for o in gc.get_objects())
    young, middle, old = gc.get_threshold()
    assert young > 700
    assert (middle, old) == (collector.OLDER, collector.OLDER)
