"""Secrets that jobs reference by name, resolved by the worker at run time and kept out of records.

A job's shell/python `env` values and http `headers` values may be `{"secret": "NAME"}`
instead of text. The job stores only the reference, so Get/List, events and the
database never hold the value. When an execution runs, the worker resolves each
reference (`Secrets.resolve_parameters`) from the secrets file (`--secrets-file`,
read again whenever it changes) or else from the variable `CRONWIRE_SECRET_<NAME>`
(upper-cased, `-` as `_`). Every value it resolved is then masked as `***`
(`Redactor`) in the output before it is stored or streamed, in the error and in
the result, and so are its escaped forms (JSON, `repr`, URL-encoded, base64).

A secret belongs to namespaces: in the file, `NAME: {value: ..., namespaces: [a, b]}`
(`"*"` for every namespace). A job may use only the secrets of its own namespace:
a reference to another namespace's is refused at CreateJob/UpdateJob, and any
reference it may not use fails the run (the file may have changed in between),
with one message whether the secret is undefined or another namespace's. A secret
defined nowhere is accepted at create (it may be defined before the job runs), so
the names of secrets, not their values, can be told apart by an editor. The
older flat form `NAME: value`, and every `CRONWIRE_SECRET_*` variable, is a
secret of every namespace (fit for a server with one tenant; the server logs a
warning naming them). Masking cannot catch a
value the job transforms (reversed, then base64-encoded): scoping is what keeps
a namespace from printing another's secrets.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
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
    "escaped_forms",
    "has_references",
    "namespace_of",
]

MASK = "***"
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,127}$"
# The parameters whose values may be secret references: {name: reference} mappings.
SECRET_PARAMETERS = ("env", "headers")
_NAME = re.compile(NAME_PATTERN)
# In a secrets file's `namespaces`: every namespace.
EVERY_NAMESPACE = "*"

_log = logging.getLogger(__name__)


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


def namespace_of(resource_name: str) -> str:
    """`namespaces/a/executions/e-1` -> `a`."""
    prefix, _, rest = resource_name.partition("/")
    return rest.partition("/")[0] if prefix == "namespaces" else ""


def references(parameters: Mapping[str, Any]) -> Iterable[tuple[str, str, str]]:
    """(parameter, key, secret name) of each reference in `parameters`."""
    for field in SECRET_PARAMETERS:
        mapping = parameters.get(field)
        if isinstance(mapping, Mapping):
            for key, value in mapping.items():
                name = reference_name(value)
                if name is not None:
                    yield field, str(key), name


def has_references(parameters: Mapping[str, Any]) -> bool:
    return any(
        isinstance(mapping, Mapping) and any(reference_name(v) is not None for v in mapping.values())
        for mapping in (parameters.get(field) for field in SECRET_PARAMETERS)
    )


@dataclasses.dataclass(frozen=True)
class _Secret:
    value: str
    namespaces: frozenset[str]  # {"*"}: every namespace

    def allows(self, namespace: str) -> bool:
        return EVERY_NAMESPACE in self.namespaces or namespace in self.namespaces


class Secrets:
    """Where secret values come from: the secrets file, then `CRONWIRE_SECRET_*` variables."""

    def __init__(self, path: str = "", environ: Mapping[str, str] = os.environ) -> None:
        self._path = path
        self._environ = environ
        self._lock = threading.Lock()
        self._loaded_for: tuple[int, int, int] | None = None
        self._secrets: dict[str, _Secret] = {}

    def resolve_parameters(
        self, parameters: dict[str, Any], namespace: str
    ) -> tuple[dict[str, Any], list[str]]:
        """`parameters` with every reference replaced by its value, and the values used.

        SecretError for a secret `namespace` may not use (or that is undefined) or an
        unreadable secrets file.
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
                    values[key] = self.value(name, namespace)
                    used.append(values[key])
            resolved[field] = values
        return resolved, used

    def refusals(self, parameters: Mapping[str, Any], namespace: str) -> list[tuple[str, str, str]]:
        """(parameter, key, why) of each reference to a secret of other namespaces. A secret
        defined nowhere is let through (it may be defined before the job runs, and a replica
        without the worker role may not have the secrets): the run fails then, naming it. Names
        that are not secret names are left to the parameters' schema."""
        found: list[tuple[str, str, str]] = []
        for field, key, name in references(parameters):
            if not _NAME.fullmatch(name):
                continue
            secret = self._lookup(name)
            if secret is not None and not secret.allows(namespace):
                found.append((field, key, self._refusal(name, namespace)))
        return found

    def value(self, name: str, namespace: str) -> str:
        if not _NAME.fullmatch(name):
            raise SecretError(f"{name!r} is not a secret name")
        secret = self._lookup(name)
        if secret is None or not secret.allows(namespace):
            # One message for both: the run's error tells nothing of the secrets of others.
            raise SecretError(self._refusal(name, namespace))
        return secret.value

    def _lookup(self, name: str) -> _Secret | None:
        secret = self._from_file().get(name)
        if secret is None:
            found = self._environ.get(environment_variable(name))
            secret = _Secret(found, frozenset({EVERY_NAMESPACE})) if found is not None else None
        return secret

    def _refusal(self, name: str, namespace: str) -> str:
        where = f"the secrets file {self._path} or " if self._path else ""
        return (
            f"secret {name!r} is not defined for namespace {namespace!r}: define it for that "
            f"namespace in {where}the server's environment as {environment_variable(name)}"
        )

    def warn_unscoped(self) -> None:
        """Log the secrets every namespace may use (flat entries, variables); SecretError if the
        file cannot be read."""
        names = sorted(n for n, s in self._from_file().items() if EVERY_NAMESPACE in s.namespaces)
        variables = sorted(v for v in self._environ if v.startswith("CRONWIRE_SECRET_"))
        if names or variables:
            _log.warning(
                "secrets usable by every namespace: %s; give each its namespaces in the secrets "
                "file (NAME: {value: ..., namespaces: [...]}) unless this server has one tenant",
                ", ".join(names + variables),
            )

    def _from_file(self) -> dict[str, _Secret]:
        """The file's secrets, parsed again when its inode, size or modification time change."""
        if not self._path:
            return {}
        with self._lock:
            try:
                stat = os.stat(self._path)
                stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                if stamp != self._loaded_for:
                    self._secrets = _parse(self._path)
                    self._loaded_for = stamp
            except OSError as error:
                raise SecretError(
                    f"cannot read the secrets file {self._path}: {error.strerror or error}"
                ) from None
            return self._secrets


def _parse(path: str) -> dict[str, _Secret]:
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
    secrets: dict[str, _Secret] = {}
    for name, entry in document.items():
        where = f"the secrets file {path}: {str(name)!r}"
        if isinstance(entry, dict):
            if set(entry) != {"value", "namespaces"}:
                raise SecretError(f'{where} must have a value and namespaces (a list; "*" for every one)')
            value, namespaces = entry["value"], entry["namespaces"]
            if (
                not isinstance(namespaces, list)
                or not namespaces
                or not all(isinstance(n, str) and n for n in namespaces)
            ):
                raise SecretError(
                    f'{where}: namespaces must be a list of namespace names ("*" for every one)'
                )
        else:
            value, namespaces = entry, [EVERY_NAMESPACE]
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise SecretError(f"{where}: the value must be a string")
        secrets[str(name)] = _Secret(str(value), frozenset(namespaces))
    return secrets


def escaped_forms(value: str) -> set[str]:
    """`value` as a program may print it escaped: JSON (ASCII or not), `repr` of the text and of
    its UTF-8 bytes, URL-encoded, base64; the value itself included."""
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        repr(value.encode())[2:-1],
        value.encode("unicode_escape").decode("ascii"),
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value, safe=""),
    }
    encoded = value.encode()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.add(encode(encoded).decode("ascii").rstrip("="))
    return {form for form in forms if form}


class Redactor:
    """Masks the resolved secret values, and their escaped forms, in what a run produces.

    Output arrives in chunks that may split a value: `feed` holds back the end of the
    text while it could be the start of a value, and `close` releases it.
    """

    def __init__(self, values: list[str]) -> None:
        # Longest first, so that a value containing another is masked whole.
        self._values = sorted({form for v in values if v for form in escaped_forms(v)}, key=len, reverse=True)
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
