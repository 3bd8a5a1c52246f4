"""Fixtures of the scheduler-core integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.system.helpers import Replicas


@pytest.fixture
def replicas(tmp_path: Path, fresh_database_url: Callable[[str], str]) -> Iterator[Replicas]:
    """Starts `cronwire-server` replicas; kills whatever is left after the test.

    It depends on `fresh_database_url` so that it is torn down first: the replicas are gone
    before their PostgreSQL database is dropped.
    """
    started = Replicas(tmp_path / "replicas")
    yield started
    started.close()
