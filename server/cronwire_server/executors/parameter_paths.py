"""How a violation names a job parameter: the path a caller would write in the request."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

__all__ = ["field_path"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(path: Iterable[str | int]) -> str:
    """`parameters.argv[0]`, `parameters.env["X-KEY"]`: the request path of a parameter."""
    text = "parameters"
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part)}]"
    return text
