"""Jobs as templates on the client side: `arguments_schema` through the SDK, `jobs create/update
--arguments-schema`, `jobs describe`'s arguments, `jobs run --arg` checked before the call, and
`cronwire apply`, against a real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import cronwire
from cronwire.cli import EXIT_ERROR, EXIT_USAGE
from cronwire.client import Client
from tests.integration.client.test_cli import Run, cw  # noqa: F401  (the fixture)

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["region"],
    "additionalProperties": False,
    "properties": {
        "region": {"enum": ["eu", "us"], "description": "where the report is for"},
        "days": {"type": "integer", "minimum": 1, "default": 7, "description": "how many days back"},
        "hosts": {"type": "array", "items": {"type": "string"}},
        "dry_run": {"type": "boolean", "default": False},
    },
}


def test_sdk_creates_reads_updates_and_clears_a_schema(client: cronwire.Client) -> None:
    job = client.create_job("report", executor="noop", arguments_schema=SCHEMA)
    assert job.arguments_schema == SCHEMA
    assert client.get_job("report").arguments_schema == SCHEMA
    assert client.create_job("plain", executor="noop").arguments_schema is None

    # Other fields change without touching it; given, it is replaced; None clears it.
    assert client.update_job("report", description="d").arguments_schema == SCHEMA
    smaller = {"type": "object", "properties": {"days": {"type": "integer", "default": 1}}}
    assert client.update_job("report", arguments_schema=smaller).arguments_schema == smaller
    assert client.get_job("report").arguments_schema == smaller
    cleared = client.update_job("report", arguments_schema=None)
    assert cleared.arguments_schema is None
    assert client.get_job("report").arguments_schema is None

    with pytest.raises(cronwire.InvalidArgument) as refused:
        client.create_job("bad", executor="noop", arguments_schema={"type": "string"})
    assert [v.field for v in refused.value.field_violations] == ["job.arguments_schema.type"]
    with pytest.raises(cronwire.InvalidArgument) as refused:
        client.update_job("plain", arguments_schema={"properties": {"x": {"type": "nope"}}})
    assert refused.value.field_violations[0].field.startswith("job.arguments_schema")

    client.update_job("report", arguments_schema=SCHEMA)
    run = client.run_job("report", arguments={"region": "eu"})
    assert run.arguments == {"region": "eu", "days": 7, "dry_run": False}
    with pytest.raises(cronwire.InvalidArgument) as refused:
        client.run_job("report", arguments={"region": "mars"})
    assert [v.field for v in refused.value.field_violations] == ["arguments.region"]


async def test_async_sdk_arguments_schema_on_each_backend(aio_client: cronwire.AsyncClient) -> None:
    job = await aio_client.create_job("report", executor="noop", arguments_schema=SCHEMA)
    assert job.arguments_schema == SCHEMA
    assert (await aio_client.get_job("report")).arguments_schema == SCHEMA
    assert (await aio_client.list_jobs()).items[0].arguments_schema == SCHEMA
    assert (await aio_client.update_job(job, arguments_schema=None)).arguments_schema is None


def _schema_file(tmp_path: Path) -> str:
    path = tmp_path / "schema.yaml"
    path.write_text(
        "type: object\n"
        "required: [region]\n"
        "additionalProperties: false\n"
        "properties:\n"
        "  region: {enum: [eu, us], description: where the report is for}\n"
        "  days: {type: integer, minimum: 1, default: 7, description: how many days back}\n"
        "  hosts: {type: array, items: {type: string}}\n"
        "  dry_run: {type: boolean, default: false}\n"
    )
    return f"@{path}"


def test_cli_create_and_describe_show_the_arguments(cw: Run, tmp_path: Path) -> None:  # noqa: F811
    created = cw("jobs", "create", "report", "--executor", "noop", "--arguments-schema", json.dumps(SCHEMA))
    assert created.code == 0, created.err
    assert "arguments:       region (required), days, dry_run, hosts; no others\n" in created.out
    # From a YAML file, the same schema.
    from_file = cw(
        "jobs", "create", "report2", "--executor", "noop", "--arguments-schema", _schema_file(tmp_path)
    )
    assert from_file.code == 0, from_file.err
    assert cw("jobs", "get", "report2", "-o", "json").json()["arguments_schema"] == SCHEMA
    # json and yaml show the schema as it is.
    assert cw("jobs", "get", "report", "-o", "json").json()["arguments_schema"] == SCHEMA
    assert cw("jobs", "describe", "report", "-o", "json").json()["job"]["arguments_schema"] == SCHEMA
    assert "arguments_schema:\n" in cw("jobs", "get", "report", "-o", "yaml").out

    described = cw("jobs", "describe", "report")
    assert described.code == 0, described.err
    section = described.out.split("\narguments:\n")[1].split("\n\n")[0]
    assert section.splitlines() == [
        "  NAME     TYPE               REQUIRED  DEFAULT  DESCRIPTION",
        '  region   one of "eu", "us"  yes       -        where the report is for',
        "  days     integer, >= 1      no        7        how many days back",
        "  dry_run  boolean            no        false    -",
        "  hosts    array of string    no        -        -",
        "  other arguments: refused",
    ]
    assert cw("jobs", "create", "plain", "--executor", "noop").code == 0
    plain = cw("jobs", "describe", "plain").out
    assert "\narguments:\n  any (no arguments_schema)\n" in plain

    # Refused schemas name the flag; unreadable ones are bad usage.
    bad = cw("jobs", "create", "bad", "--executor", "noop", "--arguments-schema", '{"type": "string"}')
    assert bad.code == EXIT_ERROR
    assert "job.arguments_schema.type (--arguments-schema): " in bad.err
    assert cw("jobs", "create", "bad", "--executor", "noop", "--arguments-schema", "[1]").code == EXIT_USAGE
    missing = cw("jobs", "create", "bad", "--executor", "noop", "--arguments-schema", "@/nonexistent.yaml")
    assert missing.code == EXIT_USAGE
    assert "argument --arguments-schema: cannot read /nonexistent.yaml" in missing.err


def test_cli_update_sets_and_clears_the_schema(cw: Run) -> None:  # noqa: F811
    assert cw("jobs", "create", "report", "--executor", "noop").code == 0
    updated = cw("jobs", "update", "report", "--arguments-schema", json.dumps(SCHEMA), "-o", "json")
    assert updated.code == 0, updated.err
    assert updated.json()["arguments_schema"] == SCHEMA
    # Another flag leaves it as it is.
    assert (
        cw("jobs", "update", "report", "--description", "d", "-o", "json").json()["arguments_schema"]
        == SCHEMA
    )
    cleared = cw("jobs", "update", "report", "--no-arguments-schema", "-o", "json")
    assert cleared.code == 0, cleared.err
    assert cleared.json()["arguments_schema"] is None
    both = cw("jobs", "update", "report", "--no-arguments-schema", "--arguments-schema", "{}")
    assert both.code == EXIT_USAGE


def test_cli_run_checks_the_arguments_before_the_call(
    cw: Run,  # noqa: F811
    client: cronwire.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert (
        cw("jobs", "create", "report", "--executor", "noop", "--arguments-schema", json.dumps(SCHEMA)).code
        == 0
    )
    calls: list[tuple[Any, ...]] = []
    real_run_job = Client.run_job

    def spy(self: Client, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real_run_job(self, *args, **kwargs)

    monkeypatch.setattr(Client, "run_job", spy)

    refused = cw(
        "jobs", "run", "report", "--arg", "region=mars", "--arg", "days=0", "--arg", 'hosts=["a", 2]',
        "--arg", "colour=red",
    )  # fmt: skip
    assert refused.code == EXIT_ERROR
    # One line per argument, in the client's own words (the server's refusal would be one line
    # naming the flag, `arguments.region (--arg): ... [INVALID_ARGUMENT]`).
    assert refused.err.splitlines() == [
        "cronwire: error: arguments.colour: unknown argument; known: days, dry_run, hosts, region",
        "cronwire: error: arguments.days: 0 is less than the minimum of 1",
        "cronwire: error: arguments.hosts[1]: 2 is not of type 'string'",
        "cronwire: error: arguments.region: 'mars' is not one of ['eu', 'us']",
    ]
    missing = cw("jobs", "run", "report", "--arg", "days=3")
    assert (missing.code, missing.err) == (EXIT_ERROR, "cronwire: error: arguments.region: required\n")
    assert calls == []
    assert client.list_executions(namespace="default").items == []

    # Accepted: `--arg` values are JSON, or text when not JSON; the defaults are filled in.
    accepted = cw(
        "jobs", "run", "report", "--arg", "region=eu", "--arg", 'hosts=["a"]', "--wait", "-o", "json"
    )
    assert accepted.code == 0, accepted.err
    assert accepted.json()["arguments"] == {"region": "eu", "hosts": ["a"], "days": 7, "dry_run": False}
    assert len(calls) == 1
    given = cw("jobs", "run", "report", "--arg", "region=us", "--arg", "days=30", "-o", "json")
    assert given.json()["arguments"] == {"region": "us", "days": 30, "dry_run": False}

    # A job without a schema takes any arguments, as before.
    assert cw("jobs", "create", "plain", "--executor", "noop").code == 0
    free = cw("jobs", "run", "plain", "--arg", "anything=goes", "-o", "json")
    assert free.code == 0, free.err
    assert free.json()["arguments"] == {"anything": "goes"}
    # A job that does not exist is named as before.
    gone = cw("jobs", "run", "nowhere", "--arg", "a=1")
    assert gone.code == EXIT_ERROR
    assert "not found" in gone.err


def test_apply_creates_updates_and_clears_a_schema(cw: Run, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "jobs.yaml"

    def apply(schema_yaml: str) -> Any:
        path.write_text("jobs:\n  - name: report\n    executor: noop\n" + schema_yaml)
        return cw("apply", "-f", str(path))

    with_schema = (
        "    arguments_schema:\n"
        "      type: object\n"
        "      required: [region]\n"
        "      properties:\n"
        "        region: {enum: [eu, us]}\n"
        "        days: {type: integer, default: 7}\n"
    )
    first = apply(with_schema)
    assert first.code == 0, first.err
    assert "job namespaces/default/jobs/report created" in first.out
    wanted = {
        "type": "object",
        "required": ["region"],
        "properties": {"region": {"enum": ["eu", "us"]}, "days": {"type": "integer", "default": 7}},
    }
    stored = cw("jobs", "get", "report", "-o", "json").json()
    assert stored["arguments_schema"] == wanted

    again = apply(with_schema)
    assert "job namespaces/default/jobs/report unchanged" in again.out, again.out

    changed = apply(with_schema.replace("default: 7", "default: 14"))
    assert changed.code == 0, changed.err
    assert "job namespaces/default/jobs/report updated: arguments_schema" in changed.out
    run = cw("jobs", "run", "report", "--arg", "region=eu", "-o", "json").json()
    assert run["arguments"] == {"region": "eu", "days": 14}

    # What `jobs get -o yaml` prints applies as it is.
    printed = cw("jobs", "get", "report", "-o", "yaml").out
    path.write_text("jobs:\n  - " + printed.replace("\n", "\n    ").rstrip() + "\n")
    assert "job namespaces/default/jobs/report unchanged" in cw("apply", "-f", str(path)).out

    refused = apply("    arguments_schema: {type: string}\n")
    assert refused.code == EXIT_ERROR
    assert "cronwire: error: jobs[0].arguments_schema.type: " in refused.err

    cleared = apply("    arguments_schema: null\n")
    assert cleared.code == 0, cleared.err
    assert "job namespaces/default/jobs/report updated: arguments_schema" in cleared.out
    assert cw("jobs", "get", "report", "-o", "json").json()["arguments_schema"] is None
