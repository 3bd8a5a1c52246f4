"""The executor kinds' JSON schemas and the field paths of parameter violations."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from cronwire_server.core.errors import InvalidArgument
from cronwire_server.executors import registry
from cronwire_server.executors.address_policy import HttpPolicy
from cronwire_server.executors.runners import Runners


def violations(kind: str, parameters: Any) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        registry.validate_parameters(kind, parameters)
    return {v.field: v.description for v in caught.value.violations}


def test_the_builtin_kinds() -> None:
    assert [kind.name for kind in registry.all_kinds()] == ["http", "noop", "python", "remote", "shell"]
    assert registry.get_kind("shell") is registry.KINDS["shell"]


@pytest.mark.parametrize("kind", registry.all_kinds(), ids=lambda kind: kind.name)
def test_every_schema_is_draft_2020_12_and_its_example_valid(kind: registry.ExecutorKind) -> None:
    Draft202012Validator.check_schema(kind.parameters_schema)
    assert kind.parameters_schema["additionalProperties"] is False
    assert kind.example, "an example shows at least one parameter"
    registry.validate_parameters(kind.name, kind.example)


@pytest.mark.parametrize("kind", registry.all_kinds(), ids=lambda kind: kind.name)
def test_every_property_is_described(kind: registry.ExecutorKind) -> None:
    assert kind.description
    for name, prop in kind.parameters_schema["properties"].items():
        assert prop.get("description"), f"{kind.name}.{name} has no description"


def test_unknown_kind_lists_the_known_ones() -> None:
    found = violations("cobol", {})
    assert list(found) == ["executor"]
    assert "'cobol'" in found["executor"]
    assert "http, noop, python, remote, shell" in found["executor"]
    assert list(violations("", {})) == ["executor"]


def test_shell_argv_is_required() -> None:
    assert violations("shell", {}) == {"parameters.argv": "required"}
    assert "non-empty" in violations("shell", {"argv": []})["parameters.argv"]


def test_shell_command_needs_shell_true() -> None:
    found = violations("shell", {"command": "ls | wc -l"})
    assert "shell" in found["parameters.command"]
    assert found["parameters.argv"] == "required"
    assert "parameters.command" in violations("shell", {"command": "ls", "shell": False})
    registry.validate_parameters("shell", {"command": "ls | wc -l", "shell": True})


def test_shell_true_takes_command_not_argv() -> None:
    assert violations("shell", {"shell": True}) == {"parameters.command": "required"}
    found = violations("shell", {"shell": True, "command": "ls", "argv": ["ls"]})
    assert list(found) == ["parameters.argv"]


def test_nested_violation_paths() -> None:
    found = violations("shell", {"argv": ["echo", 3], "env": {"OK": "1", "BAD-NAME": 2}})
    assert set(found) == {"parameters.argv[1]", 'parameters.env["BAD-NAME"]'}
    assert found["parameters.argv[1]"] == "3 is not of type 'string'"
    status = violations("http", {"url": "https://example.com", "expected_status": [200, 700]})
    assert list(status) == ["parameters.expected_status[1]"]


def test_unknown_parameters_are_named() -> None:
    found = violations("shell", {"argv": ["true"], "cwd": "/tmp"})
    assert list(found) == ["parameters.cwd"]
    assert "working_dir" in found["parameters.cwd"]


def test_parameters_must_be_an_object() -> None:
    assert list(violations("noop", ["not", "an", "object"])) == ["parameters"]


@pytest.mark.parametrize(
    "url", ["ftp://example.com/file", "example.com/hook", "https://", "javascript:alert(1)"]
)
def test_http_url_must_be_http_or_https(url: str) -> None:
    assert "http" in violations("http", {"url": url})["parameters.url"]


def test_http_rules() -> None:
    registry.validate_parameters("http", {"url": "http://127.0.0.1:8080/hook?x=1"})
    assert set(violations("http", {})) == {"parameters.url"}
    assert set(violations("http", {"url": "https://example.com", "method": "get"})) == {"parameters.method"}
    both = violations("http", {"url": "https://example.com", "body": "{}", "json": {}})
    assert list(both) == ["parameters.json"]


def test_python_callable_is_module_colon_function() -> None:
    registry.validate_parameters("python", {"callable": "pkg.mod:Class.method", "args": [1], "kwargs": {}})
    assert "module:function" in violations("python", {"callable": "pkg.mod.func"})["parameters.callable"]
    assert set(violations("python", {})) == {"parameters.callable"}


def test_noop_accepts_nothing_or_a_bounded_sleep() -> None:
    registry.validate_parameters("noop", {})
    registry.validate_parameters("noop", {"sleep_seconds": 0.5})
    assert set(violations("noop", {"sleep_seconds": -1})) == {"parameters.sleep_seconds"}
    assert set(violations("noop", {"sleep_seconds": 3601})) == {"parameters.sleep_seconds"}


def test_all_violations_are_reported_together() -> None:
    found = violations("http", {"url": "ftp://x", "method": "FETCH", "timeout": 3})
    assert set(found) == {"parameters.url", "parameters.method", "parameters.timeout"}


@pytest.mark.parametrize("kind", registry.all_kinds(), ids=lambda kind: kind.name)
def test_every_kind_record_is_complete(kind: registry.ExecutorKind) -> None:
    # Its example passes its schema and its own checks under the default policy, and its
    # factory makes a runner: a new kind cannot be half registered.
    registry.validate_parameters(kind.name, kind.example, registry.ExecutorPolicy())
    runner = kind.runner(registry.ExecutorPolicy())
    assert callable(getattr(runner, "run", None))
    assert Runners().runner_for(kind.name).__class__ is runner.__class__


def test_kind_checks_beyond_the_schema_use_the_servers_policy() -> None:
    with pytest.raises(InvalidArgument) as caught:
        registry.validate_parameters("http", {"url": "http://127.0.0.1:8080/hook"}, registry.ExecutorPolicy())
    assert [v.field for v in caught.value.violations] == ["parameters.url"]
    allow_private = registry.ExecutorPolicy(http=HttpPolicy(allow_private=True))
    registry.validate_parameters("http", {"url": "http://127.0.0.1:8080/hook"}, allow_private)

    refused = registry.ExecutorPolicy()
    with pytest.raises(InvalidArgument) as caught:
        registry.validate_parameters("python", {"callable": "os:system"}, refused)
    assert [v.field for v in caught.value.violations] == ["parameters.callable"]
    allowed = registry.ExecutorPolicy(entry=registry.EntryPolicy(allow=("os",)))
    registry.validate_parameters("python", {"callable": "os:getcwd"}, allowed)
