"""Resource names are formatted in one module: no other server module writes
`namespaces/...` or `keys/...` names itself (SQL that builds them in the database aside)."""

from __future__ import annotations

import re
from pathlib import Path

import cronwire_server
from cronwire_server.core import names

PACKAGE = Path(cronwire_server.__file__).parent
# An f-string or format call that starts a resource name.
BUILT_HERE = re.compile(r"""f["'](namespaces|keys)/|["'](namespaces|keys)/\{""")


def test_only_names_py_formats_resource_names() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != Path(names.__file__) and "migrations" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if BUILT_HERE.search(line)
    ]
    assert offenders == []


def test_names_round_trip() -> None:
    name = names.job_name("ops", "report")
    assert name == "namespaces/ops/jobs/report"
    assert names.parse_name(name, "job") == names.ResourceName("ops", "report")
    assert names.parse_key_name(names.key_name("k1")) == "k1"
