"""The scheduler's core reads without the adapters: importing it loads neither grpc, the
database drivers, the HTTP client nor the SDK. Each module is imported in a fresh interpreter,
since this test process has loaded everything already."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE = (
    "cronwire_server.model",
    "cronwire_server.errors",
    "cronwire_server.names",
    "cronwire_server.triggers",
    "cronwire_server.planning",
    "cronwire_server.schedules",
    "cronwire_server.supervisor",
    "cronwire_server.clock",
    "cronwire_server.retention",
    "cronwire_server.executions",
    "cronwire_server.events",
    "cronwire_server.replicas",
    "cronwire_server.secrets",
    "cronwire_server.executors.registry",
    "cronwire_server.dispatcher",
    "cronwire_server.metrics",
    "cronwire_server.config",
)
ADAPTER_LIBRARIES = ("grpc", "sqlalchemy", "psycopg", "aiosqlite", "httpx", "cronwire")


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_adapter_library(module: str) -> None:
    probe = (
        f"import json, sys; import {module}; "
        f"print(json.dumps(sorted(n for n in {ADAPTER_LIBRARIES!r} if n in sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(loaded) == [], f"importing {module} loads {loaded.strip()}"
