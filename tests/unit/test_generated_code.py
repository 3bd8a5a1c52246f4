"""The committed generated code is what its script makes today: `scripts/gen_protos.py` from
protos/, `scripts/gen_sync_client.py` the sync client from the async one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

ROOT = REPO


@pytest.mark.parametrize("script", ["gen_protos.py", "gen_sync_client.py"])
def test_generated_code_is_up_to_date(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
