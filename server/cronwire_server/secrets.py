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
        if not _NAME.match(name):
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
        # Longest first, so a value that contains another is masked whole.
        self._values = sorted({v for v in values if v}, key=len, reverse=True)
        self._held = ""

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, MASK)
        return text

    def feed(self, chunk: str) -> str:
        """The part of the output so far that is safe to pass on."""
        if not self._values:
            return chunk
        text = self.text(self._held + chunk)
        keep = self._unfinished(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def close(self, truncated: bool = False) -> str:
        """What `feed` held back. When the output was cut off, a held back start of a value is
        masked: the rest of it was dropped, so it may well be one."""
        held, self._held = self._held, ""
        return MASK if truncated and held else held

    def _unfinished(self, text: str) -> int:
        """Length of the longest end of `text` that begins some value without completing it."""
        longest = 0
        for value in self._values:
            for size in range(min(len(value) - 1, len(text)), longest, -1):
                if text.endswith(value[:size]):
                    longest = size
                    break
        return longest

    def outcome(self, outcome: RunOutcome) -> RunOutcome:
        """The outcome with the values masked in its output, error and result."""
        if not self._values:
            return outcome
        output = self.text(outcome.output)
        if outcome.output_truncated and (cut := self._unfinished(output)):
            output = output[: len(output) - cut] + MASK
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
