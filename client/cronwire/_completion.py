"""Shell completion scripts generated from the CLI's argparse tree (no extra dependency)."""

from __future__ import annotations

import argparse

_SCRIPT = """# cronwire completion for bash{zsh_note}
{prelude}_cronwire_complete() {{
    local cur prev path word i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        if [[ " $(_cronwire_commands "$path") " == *" $word "* ]]; then
            path="${{path:+$path }}$word"
        fi
    done
    case "$prev" in
        -f|--filename|--ca|--cert|--key)
            COMPREPLY=($(compgen -f -- "$cur"))
            return ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$(_cronwire_options "$path")" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(_cronwire_commands "$path")" -- "$cur"))
    fi
}}

_cronwire_commands() {{
    case "$1" in
{commands}
    esac
}}

_cronwire_options() {{
    case "$1" in
{options}
    esac
}}

complete -o default -F _cronwire_complete cronwire
"""


def _walk(parser: argparse.ArgumentParser, path: str, out: dict[str, tuple[list[str], list[str]]]) -> None:
    commands: list[str] = []
    options: list[str] = []
    for action in parser._actions:
        options.extend(s for s in action.option_strings if s.startswith("--") or len(s) == 2)
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                commands.append(name)
                _walk(child, f"{path} {name}".strip(), out)
    out[path] = (commands, options)


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """A completion script for `shell` (bash, or zsh through bashcompinit)."""
    tree: dict[str, tuple[list[str], list[str]]] = {}
    _walk(parser, "", tree)
    commands = "\n".join(
        f'        "{path}") echo "{" ".join(cmds)}" ;;' for path, (cmds, _) in tree.items() if cmds
    )
    options = "\n".join(f'        "{path}") echo "{" ".join(opts)}" ;;' for path, (_, opts) in tree.items())
    if shell == "zsh":
        return _SCRIPT.format(
            zsh_note=" and zsh (through bashcompinit)",
            prelude="autoload -U +X bashcompinit && bashcompinit\n",
            commands=commands,
            options=options,
        )
    return _SCRIPT.format(zsh_note="", prelude="", commands=commands, options=options)
