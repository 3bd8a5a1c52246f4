"""Secrets that jobs reference by name, resolved by the worker at run time and kept out of records.

A job's shell/python `env` values and http `headers` values may be `{"secret": "NAME"}`
instead of text. The job stores only the reference, so Get/List, events and the
database never hold the value. When an execution runs, the worker resolves each
reference (`Secrets.resolve_parameters`) from the secrets file (`--secrets-file`:
a YAML or JSON mapping of name to value, read again whenever it changes) or else
from the variable `CRONWIRE_SECRET_<NAME>` (upper-cased, `-` as `_`). Every value it
resolved is then masked as `***` (`Redactor`) in the output before it is stored or
streamed, in the error and in the result. An undefined secret fails the execution
with an error naming the secret.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML ships no annotations

from cronwire_server.executors.runtime import RunOutcome

__all__ = [
    "MASK",
    "NAME_PATTERN",
    "SECRET_PARAMETERS",
    "Redactor",
    "SecretError",
    "Secrets",
    "environment_variable",
    "has_references",
]

MASK = "***"
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,127}$"
# The parameters whose values may be secret references: {name: reference} mappings.
SECRET_PARAMETERS = ("env", "headers")
_NAME = re.compile(NAME_PATTERN)


class SecretError(Exception):
    """A secret cannot be resolved; the message names it and never holds a value."""


def environment_variable(name: str) -> str:
    """`db-password` -> `CRONWIRE_SECRET_DB_PASSWORD`."""
    return "CRONWIRE_SECRET_" + name.upper().replace("-", "_")


def reference_name(value: Any) -> str | None:
    """The secret's name if `value` is a reference `{"secret": NAME}`, else None."""
    if isinstance(value, Mapping) and set(value) == {"secret"} and isinstance(value["secret"], str):
        return value["secret"]
    return None


def has_references(parameters: Mapping[str, Any]) -> bool:
    return any(
        isinstance(mapping, Mapping) and any(reference_name(v) is not None for v in mapping.values())
        for mapping in (parameters.get(field) for field in SECRET_PARAMETERS)
    )


class Secrets:
    """Where secret values come from: the secrets file, then `CRONWIRE_SECRET_*` variables."""

    def __init__(self, path: str = "", environ: Mapping[str, str] = os.environ) -> None:
        self._path = path
        self._environ = environ
        self._lock = threading.Lock()
        self._loaded_for: tuple[int, int, int] | None = None
        self._values: dict[str, str] = {}

    def resolve_parameters(self, parameters: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """`parameters` with every reference replaced by its value, and the values used.

        SecretError for an undefined secret or an unreadable secrets file.
        """
        resolved = dict(parameters)
        used: list[str] = []
        for field in SECRET_PARAMETERS:
            mapping = parameters.get(field)
            if not isinstance(mapping, Mapping):
                continue
            values: dict[str, Any] = {}
            for key, value in mapping.items():
                name = reference_name(value)
                if name is None:
                    values[key] = value
                else:
                    values[key] = self.value(name)
                    used.append(values[key])
            resolved[field] = values
        return resolved, used

    def value(self, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise SecretError(f"{name!r} is not a secret name")
        found = self._from_file().get(name)
        if found is None:
            found = self._environ.get(environment_variable(name))
        if found is None:
            where = f"the secrets file {self._path} or " if self._path else ""
            raise SecretError(
                f"secret {name!r} is not defined: set it in {where}the server's "
                f"environment as {environment_variable(name)}"
            )
        return found

    def _from_file(self) -> dict[str, str]:
        """The file's mapping, parsed again when its inode, size or modification time change."""
        if not self._path:
            return {}
        with self._lock:
            try:
                stat = os.stat(self._path)
                stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if stamp != self._loaded_for:
                    self._values = _parse(self._path)
                    self._loaded_for = stamp
            except OSError as error:
                raise SecretError(
                    f"cannot read the secrets file {self._path}: {error.strerror or error}"
                ) from None
            return self._values


def _parse(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as handle:
        try:
            # YAML 1.1 is a superset of JSON as far as secrets files go.
            document = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            # The parser's message may quote the file: only its position is safe to report.
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise SecretError(f"the secrets file {path} is not valid YAML or JSON{where}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise SecretError(f"the secrets file {path} must hold a mapping of secret names to values")
    values: dict[str, str] = {}
    for name, value in document.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise SecretError(f"the secrets file {path}: the value of {str(name)!r} must be a string")
        values[str(name)] = str(value)
    return values


class Redactor:
    """Masks the resolved secret values in what a run produces.

    Output arrives in chunks that may split a value: `feed` holds back the end of the
    text while it could be the start of a value, and `close` releases it.
    """

    def __init__(self, values: list[str]) -> None:
        # Longest first, so that a value containing another is masked whole.
        self._values = sorted({v for v in values if v}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, self._values))) if self._values else None
        self._longest = len(self._values[0]) if self._values else 0
        self._held = ""

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def feed(self, chunk: str) -> str:
        """The part of the output so far that is safe to pass on, masked."""
        if self._pattern is None:
            return chunk
        text = self._held + chunk
        cut = self._unfinished_from(text)
        self._held = text[cut:]
        return self.text(text[:cut])

    def close(self, truncated: bool = False) -> str:
        """What `feed` held back, masked. When the output was cut off, a held back start of a
        value is masked as a whole: the rest of it was dropped, so it may well be one."""
        held, self._held = self._held, ""
        if truncated and held and self._unfinished_from(held) == 0:
            return MASK
        return self.text(held)

    def _unfinished_from(self, text: str) -> int:
        """Where the end of `text` that may be a value continued by later output begins:
        the earliest position from which the rest is a proper start of a value, outside any
        whole value found; len(text) when there is none."""
        assert self._pattern is not None
        window = max(0, len(text) - self._longest + 1)
        inside = [(m.start(), m.end()) for m in self._pattern.finditer(text, max(0, window - self._longest))]
        for position in range(window, len(text)):
            if any(start < position < end for start, end in inside):
                continue
            rest = text[position:]
            if any(len(value) > len(rest) and value.startswith(rest) for value in self._values):
                return position
        return len(text)

    def outcome(self, outcome: RunOutcome) -> RunOutcome:
        """The outcome with the values masked in its output, error and result."""
        if self._pattern is None:
            return outcome
        output = outcome.output
        if outcome.output_truncated:
            cut = self._unfinished_from(output)
            output = self.text(output[:cut]) + (MASK if cut < len(output) else "")
        else:
            output = self.text(output)
        return dataclasses.replace(
            outcome,
            output=output,
            error=self.text(outcome.error),
            result=self._masked(outcome.result),
        )

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self._masked(v) for v in value]
        if isinstance(value, dict):
            return {self._masked(k): self._masked(v) for k, v in value.items()}
        return value
