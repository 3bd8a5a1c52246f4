"""Completion scripts generated from the parser (shtab), exercised in the real shells: commands,
flags, `-o` choices, file names for FILE flags, job and schedule names from the server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)

BASH_COMPLETE = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_shtab_cronwire
printf '%s\\n' "${COMPREPLY[@]}"
"""

# The cases every shell must complete: (command line up to the cursor, what it offers).
CASES = [
    ("cronwire jobs list -o ", ["json", "table", "wide", "yaml"]),
    ("cronwire jobs de", ["delete", "describe"]),
    ("cronwire schedules create s --overlap ", ["allow-all", "cancel-running", "queue-one", "skip"]),
    ("cronwire executions list --state s", ["skipped", "succeeded"]),
    ("cronwire apply -f sp", ["spec.json", "spec.yaml"]),
    ("cronwire jobs describe ", ["backup", "tick"]),
    ("cronwire executions list --job ", ["backup", "tick"]),
    ("cronwire schedules describe ", ["nightly"]),
]

Complete = Callable[[str], list[str]]


@pytest.fixture
def shell_env(cw: Run, server_target: str, tmp_path: Path) -> dict[str, str]:  # noqa: F811
    """A directory with two files, the server with two jobs and a schedule, `cronwire` on PATH."""
    assert cw("jobs", "create", "backup", "--executor", "noop").code == 0
    assert cw("jobs", "create", "tick", "--executor", "noop").code == 0
    assert cw("schedules", "create", "nightly", "--job", "backup", "--cron", "@daily").code == 0
    (tmp_path / "spec.json").write_text("{}")
    (tmp_path / "spec.yaml").write_text("{}")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "CRONWIRE_SERVER": server_target, "CRONWIRE_NAMESPACE": "default"}


def _script(cw: Run, shell: str, tmp_path: Path) -> Path:  # noqa: F811
    generated = cw("completion", shell)
    assert generated.code == 0, generated.err
    path = tmp_path / f"cronwire.{shell}"
    path.write_text(generated.out)
    return path


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bash(cw: Run, shell_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    script = _script(cw, "bash", tmp_path)
    for line, expected in CASES:
        words = line.split(" ")
        out = _run(["bash", "-c", BASH_COMPLETE, "bash", str(script), *words], shell_env, tmp_path)
        assert sorted(out.split()) == expected, line


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish(cw: Run, shell_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    script = _script(cw, "fish", tmp_path)
    for line, expected in CASES:
        out = _run(["fish", "-c", f"source {script}; complete -C '{line}'"], shell_env, tmp_path)
        assert sorted(row.split("\t")[0] for row in out.splitlines()) == expected, line


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh(cw: Run, shell_env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    script = _script(cw, "zsh", tmp_path)
    capture = str(Path(__file__).with_name("zsh_capture.zsh"))
    for line, expected in CASES:
        out = _run(["zsh", "-f", capture, str(script), line], shell_env, tmp_path)
        assert sorted(set(out.split())) == expected, line
    # Loading the script runs nothing (names are asked for when completing, not when loading).
    load = f'compdef() {{ print -r -- "$*" }}; eval "$(<{script})"'
    assert _run(["zsh", "-f", "-c", load], shell_env, tmp_path).strip() == "_shtab_cronwire -N cronwire"


def test_names_quietly_empty_without_a_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cronwire.cli import main

    monkeypatch.setenv("CRONWIRE_SERVER", "127.0.0.1:1")
    assert main(["completion", "--names", "jobs"]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["completion"]) == 2
    assert "name the shell: bash, zsh, fish, tcsh" in capsys.readouterr().err
