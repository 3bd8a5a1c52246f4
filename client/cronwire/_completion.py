"""Shell completion scripts generated from the CLI's argparse tree by shtab.

Every command, flag and choice of the parser completes (`-o <TAB>`: table, wide, json, yaml;
`--overlap <TAB>`: skip, queue-one, ...);
flags whose value is a FILE complete file names; job and schedule names complete from the
server the environment points at (CRONWIRE_SERVER, CRONWIRE_NAMESPACE, ...) when it answers.
"""

from __future__ import annotations

import argparse
from typing import Any

SHELLS = ("bash", "zsh", "fish", "tcsh")

# The hidden command a script runs to list names; quiet and quick when no server answers.
NAMES_COMMAND = "cronwire completion --names {kind} 2>/dev/null"

# Flags whose value is a job or a schedule (the positional `name` goes by its command).
_NAME_FLAGS = {"--job": "jobs", "--schedule": "schedules"}
_NAME_COMMANDS = {
    ("jobs", "get"),
    ("jobs", "describe"),
    ("jobs", "update"),
    ("jobs", "delete"),
    ("jobs", "run"),
    ("schedules", "get"),
    ("schedules", "describe"),
    ("schedules", "update"),
    ("schedules", "delete"),
    ("schedules", "pause"),
    ("schedules", "resume"),
    ("schedules", "preview"),
    ("schedules", "backfill"),
}


def _mark(parser: argparse.ArgumentParser, path: tuple[str, ...], shtab: Any) -> None:
    """Tell shtab what the values of file and name arguments are."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                _mark(child, (*path, name), shtab)
            continue
        if action.metavar == "FILE":
            action.complete = shtab.FILE  # type: ignore[attr-defined]
            continue
        words = getattr(action.type, "enum_choices", None)
        if words:
            action.complete = _words(action.dest, words)  # type: ignore[attr-defined]
            continue
        kind = next((k for flag, k in _NAME_FLAGS.items() if flag in action.option_strings), None)
        if kind is None and not action.option_strings and action.dest == "name" and path in _NAME_COMMANDS:
            kind = path[0]
        if kind is not None:
            action.complete = _names(kind)  # type: ignore[attr-defined]


def _words(dest: str, words: list[str]) -> dict[str, Any]:
    """How each shell completes a fixed list of words (an enum flag's values: `skip`, `queue-one`)."""
    function = f"_cronwire_words_{dest}"
    listed = " ".join(words)
    return {
        "bash": function,
        "zsh": f"({listed})",
        "fish": listed,
        "tcsh": f"({listed})",
        "preamble": {"bash": f"{function}() {{\n  compgen -W '{listed}' -- \"$1\"\n}}\n"},
    }


def _names(kind: str) -> dict[str, Any]:
    """How each shell completes the names of `kind`: by asking the server when completing
    (shtab's `cmd` would run the command in zsh when the script is loaded)."""
    command = NAMES_COMMAND.format(kind=kind)
    function = f"_cronwire_{kind}"
    return {
        "bash": function,
        "zsh": function,
        "fish": f"({command})",
        "tcsh": f"`{command}`",
        "preamble": {
            "bash": f'{function}() {{\n  compgen -W "$({command})" -- "$1"\n}}\n',
            "zsh": f'{function}() {{\n  local -a names\n  names=(${{(f)"$({command})"}})\n'
            "  compadd -a names\n}\n",
        },
    }


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A completion script for `shell` (bash, zsh, fish or tcsh), generated from `parser`."""
    import shtab  # only this command needs it

    _mark(parser, (), shtab)
    script: str = shtab.complete(parser, shell=shell)
    return script if script.endswith("\n") else script + "\n"
