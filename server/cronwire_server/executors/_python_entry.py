"""The child side of the `python` executor: calls one function and writes back how it went.

`python_runner` starts it as `python -c <bootstrap> <this file> <call file> <reply file>`
in the interpreter the job names, which need not have cronwire installed: so it
uses the standard library only, and nothing newer than Python 3.8.

The call file holds `{"callable", "args", "kwargs", "context", "reply_limit", "policy"}`;
`policy` (`{"allow": [...], "refuse": [...]}`) names the modules the job may call: a module
reached through the function's path (`tasks:os.system`), or the module a function belongs to,
must be one of them, as the server checked for the module named.
The reply file gets one JSON object: `{"value": v}`, `{"repr": "..."}` for a
value JSON cannot hold, `{"omitted": n}` for a value of more than `reply_limit`
bytes of JSON, or `{"error": "...", "exception": {...}}`. It is written under
another name and renamed, so a child killed while writing leaves no half reply.
stdout and stderr stay the run's output; a traceback goes to stderr as well.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import os
import sys
import traceback
from types import TracebackType
from typing import Any

# A reply's message and traceback are cut to this many characters (the traceback keeps its end).
_TEXT_LIMIT = 64 * 1024


def main(argv: list[str]) -> int:
    call_path, reply_path = argv[1], argv[2]
    with open(call_path, encoding="utf-8") as file:
        call = json.load(file)
    spec: str = call["callable"]
    sys.argv = [spec]
    # The working directory is where the job's modules are (`-c` puts "" first, unless PYTHONSAFEPATH).
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        function = _load(spec, call.get("policy"))
    except _LoadError as exc:
        trace = exc.cause.__traceback__
        # Without this module's frame: what is left is the import machinery and the module's code.
        _write(reply_path, _failure(exc.message, exc.cause, trace.tb_next if trace is not None else None))
        return 1
    args = list(call.get("args", []))
    kwargs = dict(call.get("kwargs", {}))
    if "cronwire" not in kwargs and _takes_cronwire(function, len(args)):
        kwargs["cronwire"] = call["context"]
    try:
        value = function(*args, **kwargs)
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
    except Exception as exc:
        # The traceback starts at the job's function, not in this module.
        trace = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        _write(reply_path, _failure(_describe(exc), exc, trace))
        return 1
    _write(reply_path, _value_reply(value, int(call["reply_limit"])))
    return 0


class _LoadError(Exception):
    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause


def _within(module: str, packages: Any) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _permitted(module: str, policy: Any) -> bool:
    if policy.get("allow"):
        return _within(module, policy["allow"])
    return not module.startswith("_") and not _within(module, policy.get("refuse", ()))


def _refuse(spec: str, why: str) -> _LoadError:
    error = PermissionError(f"refused: {spec}: {why}")
    return _LoadError(str(error), error)


def _load(spec: str, policy: Any = None) -> Any:
    module_name, _, path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # not found, or the module itself raised while importing
        raise _LoadError(f"cannot import {module_name}: {_describe(exc)}", exc) from exc
    for name in path.split("."):
        try:
            target = getattr(target, name)
        except Exception as exc:
            raise _LoadError(f"cannot find {spec}: {_describe(exc)}", exc) from exc
        if policy is not None and isinstance(target, type(sys)) and not _permitted(target.__name__, policy):
            raise _refuse(spec, f"reaches module {target.__name__!r}, which python jobs may not call")
    owner = getattr(target, "__module__", None)
    if (
        policy is not None
        and isinstance(owner, str)
        and _within(owner, policy.get("refuse", ()))
        and not _within(owner, policy.get("allow", ()))
    ):
        raise _refuse(spec, f"is a function of module {owner!r}, which python jobs may not call")
    if not callable(target):
        error = TypeError(f"not callable ({type(target).__name__})")
        raise _LoadError(f"cannot call {spec}: {error}", error)
    return target


def _takes_cronwire(function: Any, positional: int) -> bool:
    """Whether `function` has a parameter `cronwire` that the positional arguments leave free."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    for index, parameter in enumerate(parameters):
        if parameter.name != "cronwire":
            continue
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            return True
        return parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and index >= positional
    return False


def _value_reply(value: Any, limit: int) -> str:
    try:
        text = json.dumps({"value": value}, allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # not JSON: an object, NaN, a cycle
        text = json.dumps({"repr": _repr(value)[:_TEXT_LIMIT]})
    if len(text) > limit:
        text = json.dumps({"omitted": len(text)})
    return text


def _failure(error: str, exc: BaseException, trace: TracebackType | None) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, trace))
    sys.stdout.flush()
    sys.stderr.write(text)
    sys.stderr.flush()
    exception = {
        "type": _type_name(exc),
        "message": _message(exc)[:_TEXT_LIMIT],
        "traceback": text[-_TEXT_LIMIT:],
    }
    return json.dumps({"error": error[:_TEXT_LIMIT], "exception": exception})


def _describe(exc: BaseException) -> str:
    """`ValueError: bad input`, as the last line of a traceback reads."""
    message = _message(exc)
    return f"{_type_name(exc)}: {message}" if message else _type_name(exc)


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return object.__repr__(value)


def _write(path: str, text: str) -> None:
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(partial, path)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
