"""The scheduler's core reads without the adapters: importing it loads neither grpc, the
database drivers, the HTTP client nor the SDK. Each module is imported in a fresh interpreter,
since this test process has loaded everything already."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import cronwire_server

PACKAGE = Path(cronwire_server.__file__).parent
# Every module of the core package, and the loops and services built on it that must stay as light.
CORE_MODULES = tuple(
    f"cronwire_server.core.{path.stem}"
    for path in sorted((PACKAGE / "core").glob("*.py"))
    if path.stem != "__init__"
)
CORE = (
    *CORE_MODULES,
    "cronwire_server.supervisor",
    "cronwire_server.clock",
    "cronwire_server.retention",
    "cronwire_server.events",
    "cronwire_server.replicas",
    "cronwire_server.secrets",
    "cronwire_server.executors.registry",
    "cronwire_server.dispatcher",
    "cronwire_server.metrics",
    "cronwire_server.config",
)
# What the core may import of the rest of the server: the Store protocol, the settings' defaults
# and the caller's identity. Nothing else depends the wrong way.
CORE_MAY_IMPORT = (
    "cronwire_server.core",
    "cronwire_server.storage",  # the package, for its Store protocol
    "cronwire_server.storage.base",
    "cronwire_server.config",
    "cronwire_server.auth.principal",
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


def test_the_core_imports_nothing_of_the_server_but_its_ports() -> None:
    wrong = []
    for path in sorted((PACKAGE / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            server = [t for t in targets if t.startswith("cronwire_server")]
            if server and not any(
                t == allowed or t.startswith(allowed + ".") for t in server[:1] for allowed in CORE_MAY_IMPORT
            ):
                wrong.append(f"core/{path.name}: {server[0]}")
    assert wrong == []
