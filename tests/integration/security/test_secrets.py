"""Secrets referenced by jobs, against a real `cronwire-server` process: the value reaches the
program, the webhook and the Python function, and appears nowhere else — not in the job as read
back, events, output, the log stream, errors or the server's log."""

from __future__ import annotations

import base64
import json
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from google.protobuf import json_format

from cronwire.v1 import (
    event_service_pb2,
    execution_pb2,
    execution_service_pb2,
    job_pb2,
    job_service_pb2,
)
from cronwire.v1.event_service_pb2_grpc import EventServiceStub
from cronwire.v1.execution_service_pb2_grpc import ExecutionServiceStub
from cronwire.v1.job_service_pb2_grpc import JobServiceStub
from cronwire_server.secrets import MASK, Redactor, SecretError, Secrets
from tests.support import ServerProcess, start_server, status_details, wait_for

PARENT = "namespaces/vault"
DB_PASSWORD = "s3cr3t-db-pw-7f1c"
ROTATED = "r0tated-db-pw-0042-longer"
API_TOKEN = "Bearer tok-91ab-e5"
PY_TOKEN = "py-token-5e7a"
# Another namespace's, one with characters that escaping changes, and a header value ending in a newline.
OTHER_TOKEN = "other-ns-token-3b9d"
QUOTED = 'q"uo\\te-9f3a\u00e9'
NEWLINE_TOKEN = "Bearer nl-77c2\n"
VALUES = (DB_PASSWORD, ROTATED, API_TOKEN, PY_TOKEN, OTHER_TOKEN, QUOTED, NEWLINE_TOKEN.strip())
ENDED = {
    execution_pb2.EXECUTION_STATE_SUCCEEDED,
    execution_pb2.EXECUTION_STATE_FAILED,
    execution_pb2.EXECUTION_STATE_TIMED_OUT,
    execution_pb2.EXECUTION_STATE_CANCELLED,
}


class Receiver(BaseHTTPRequestHandler):
    """Records the Authorization header it gets and echoes it in the response body."""

    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        value = self.headers.get("Authorization", "")
        Receiver.seen.append(value)
        body = f"you sent {value}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def secrets_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "secrets.yaml"
    # JSON, which YAML reads too.
    path.write_text(
        json.dumps(
            {
                "db-password": DB_PASSWORD,
                "py_token": PY_TOKEN,
                "other-token": {"value": OTHER_TOKEN, "namespaces": ["elsewhere"]},
                "vault-quoted": {"value": QUOTED, "namespaces": ["vault", "elsewhere"]},
                "nl-token": {"value": NEWLINE_TOKEN, "namespaces": ["vault"]},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, secrets_file: Path) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("vault")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CRONWIRE_SECRET_API_TOKEN", API_TOKEN)
        running = start_server(
            f"sqlite:///{workdir / 'cronwire.db'}",
            workdir,
            "--secrets-file",
            str(secrets_file),
            "--allow-private-networks",
            "--log-level",
            "DEBUG",
        )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as channel:
        yield channel


def create_job(channel: grpc.Channel, job_id: str, executor: str, parameters: dict[str, Any]) -> job_pb2.Job:
    job = json_format.ParseDict({"executor": executor, "parameters": parameters}, job_pb2.Job())
    request = job_service_pb2.CreateJobRequest(parent=PARENT, job_id=job_id, job=job)
    return JobServiceStub(channel).CreateJob(request).job


def run(channel: grpc.Channel, job: str) -> execution_pb2.Execution:
    started = JobServiceStub(channel).RunJob(job_service_pb2.RunJobRequest(name=job)).execution
    executions = ExecutionServiceStub(channel)

    def ended() -> execution_pb2.Execution | None:
        got = executions.GetExecution(execution_service_pb2.GetExecutionRequest(name=started.name)).execution
        return got if got.state in ENDED else None

    return wait_for(ended, 20, f"{started.name} to end")


def streamed(channel: grpc.Channel, execution: execution_pb2.Execution) -> str:
    request = execution_service_pb2.StreamExecutionLogsRequest(name=execution.name)
    return "".join(chunk.data for chunk in ExecutionServiceStub(channel).StreamExecutionLogs(request))


def assert_hidden(text: str) -> None:
    for value in VALUES:
        assert value not in text
    # Nor the start of one cut off by a chunk or a bound.
    assert "s3cr3t-" not in text
    assert "r0tated-" not in text


def test_a_shell_job_gets_its_secret_and_nothing_shows_it(
    channel: grpc.Channel, server: ServerProcess
) -> None:
    # The value is printed whole, then cut in two by a pause longer than the live-output flush.
    def part(chars: str) -> str:
        return f'printf %s "$(printf %s "$DB_PASSWORD" | cut -c{chars})"'

    script = f'echo "password=$DB_PASSWORD"; {part("1-7")}; sleep 0.6; {part("8-")}; echo'
    reference = {"DB_PASSWORD": {"secret": "db-password"}}
    job = create_job(channel, "dump", "shell", {"shell": True, "command": script, "env": reference})
    assert json_format.MessageToDict(job.parameters)["env"] == reference
    done = run(channel, job.name)
    assert done.state == execution_pb2.EXECUTION_STATE_SUCCEEDED, done.error
    # Masked only when the program printed exactly the value: so it got it.
    assert done.output == f"password={MASK}\n{MASK}\n"
    assert streamed(channel, done) == done.output

    jobs = JobServiceStub(channel)
    got = jobs.GetJob(job_service_pb2.GetJobRequest(name=job.name)).job
    assert json_format.MessageToDict(got.parameters)["env"] == reference
    listed = jobs.ListJobs(job_service_pb2.ListJobsRequest(parent=PARENT))
    assert_hidden(str(got) + str(listed) + str(done))


def test_an_http_job_sends_its_secret_header(channel: grpc.Channel, receiver: str) -> None:
    reference = {"Authorization": {"secret": "api-token"}}  # from CRONWIRE_SECRET_API_TOKEN
    job = create_job(channel, "hook", "http", {"url": receiver, "headers": reference})
    done = run(channel, job.name)
    assert done.state == execution_pb2.EXECUTION_STATE_SUCCEEDED, done.error
    assert Receiver.seen[-1] == API_TOKEN
    assert done.output == f"you sent {MASK}\n"
    assert_hidden(str(done) + streamed(channel, done))


def test_a_python_job_gets_its_secret_and_its_result_is_masked(channel: grpc.Channel, tmp_path: Path) -> None:
    (tmp_path / "token_job.py").write_text(
        "import os\n\n"
        "def main():\n"
        "    print('token', os.environ['TOKEN'])\n"
        "    return {'token': os.environ['TOKEN']}\n"
    )
    parameters = {
        "callable": "token_job:main",
        "working_dir": str(tmp_path),
        "env": {"TOKEN": {"secret": "py_token"}},
    }
    job = create_job(channel, "python", "python", parameters)
    done = run(channel, job.name)
    assert done.state == execution_pb2.EXECUTION_STATE_SUCCEEDED, done.error
    assert json_format.MessageToDict(done.result) == {"token": MASK}
    assert done.output == f"token {MASK}\n"
    assert_hidden(str(done) + streamed(channel, done))


def test_the_secrets_file_is_read_again_when_it_changes(channel: grpc.Channel, secrets_file: Path) -> None:
    job = create_job(
        channel,
        "rotated",
        "shell",
        {"argv": ["sh", "-c", 'echo "$PW"'], "env": {"PW": {"secret": "db-password"}}},
    )
    original = secrets_file.read_text()
    try:
        secrets_file.write_text(original.replace(DB_PASSWORD, ROTATED))
        done = run(channel, job.name)
    finally:
        secrets_file.write_text(original)
    assert done.output == f"{MASK}\n"
    assert_hidden(str(done))


def test_an_undefined_secret_fails_the_run_naming_it(channel: grpc.Channel) -> None:
    # Accepted at create: it may be defined before the job runs.
    job = create_job(
        channel, "missing", "shell", {"argv": ["true"], "env": {"X": {"secret": "no-such-secret"}}}
    )
    done = run(channel, job.name)
    assert done.state == execution_pb2.EXECUTION_STATE_FAILED
    assert "secret 'no-such-secret' is not defined for namespace 'vault'" in done.error
    assert "CRONWIRE_SECRET_NO_SUCH_SECRET" in done.error


def test_another_namespaces_secret_is_refused_at_create_and_update(channel: grpc.Channel) -> None:
    secret = "other-token"
    jobs = JobServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        create_job(
            channel, f"refused-{secret}", "shell", {"argv": ["true"], "env": {"X": {"secret": secret}}}
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    violations, _ = status_details(caught.value)
    assert list(violations) == ["job.parameters.env.X"]
    assert f"secret {secret!r} is not defined for namespace 'vault'" in violations["job.parameters.env.X"]
    with pytest.raises(grpc.RpcError) as missing:
        jobs.GetJob(job_service_pb2.GetJobRequest(name=f"{PARENT}/jobs/refused-{secret}"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

    job = create_job(channel, f"updated-{secret}", "http", {"url": "http://127.0.0.1:9/"})
    change = json_format.ParseDict(
        {
            "name": job.name,
            "parameters": {"url": "http://127.0.0.1:9/", "headers": {"X-Key": {"secret": secret}}},
        },
        job_pb2.Job(),
    )
    with pytest.raises(grpc.RpcError) as caught:
        jobs.UpdateJob(job_service_pb2.UpdateJobRequest(job=change, update_mask={"paths": ["parameters"]}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    violations, _ = status_details(caught.value)
    assert list(violations) == ['job.parameters.headers["X-Key"]']
    got = jobs.GetJob(job_service_pb2.GetJobRequest(name=job.name)).job
    assert "headers" not in json_format.MessageToDict(got.parameters)


def test_a_secret_taken_from_the_namespace_after_create_fails_the_run(
    channel: grpc.Channel, secrets_file: Path
) -> None:
    job = create_job(channel, "scoped", "shell", {"argv": ["true"], "env": {"X": {"secret": "vault-quoted"}}})
    original = secrets_file.read_text()
    try:
        secrets_file.write_text(
            original.replace('"namespaces": ["vault", "elsewhere"]', '"namespaces": ["elsewhere"]')
        )
        done = run(channel, job.name)
    finally:
        secrets_file.write_text(original)
    assert done.state == execution_pb2.EXECUTION_STATE_FAILED
    assert "secret 'vault-quoted' is not defined for namespace 'vault'" in done.error
    assert "CRONWIRE_SECRET_VAULT_QUOTED" in done.error
    assert_hidden(str(done))


def test_escaped_forms_of_a_value_are_masked(channel: grpc.Channel) -> None:
    script = (
        "import base64, json, os, urllib.parse; v = os.environ['Q']; "
        "print(json.dumps(v)); print(json.dumps(v, ensure_ascii=False)); print(repr(v)); "
        "print(repr(v.encode())); print(urllib.parse.quote(v)); print(base64.b64encode(v.encode()).decode())"
    )
    parameters = {"argv": [sys.executable, "-c", script], "env": {"Q": {"secret": "vault-quoted"}}}
    done = run(channel, create_job(channel, "escaped", "shell", parameters).name)
    assert done.state == execution_pb2.EXECUTION_STATE_SUCCEEDED, done.error
    assert "9f3a" not in done.output, done.output
    assert "OWYzY" not in done.output, done.output  # base64 of the value's end
    assert done.output.count(MASK) == 6, done.output


def test_a_header_value_ending_in_a_newline_is_not_quoted_in_the_error(channel: grpc.Channel) -> None:
    parameters = {"url": "http://127.0.0.1:9/", "headers": {"Authorization": {"secret": "nl-token"}}}
    done = run(channel, create_job(channel, "newline", "http", parameters).name)
    assert done.state == execution_pb2.EXECUTION_STATE_FAILED
    assert "nl-77c2" not in str(done)
    assert done.error == "header Authorization: its value holds a line break or control character"


def test_a_bad_reference_is_refused_at_create_naming_the_field(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        create_job(
            channel, "bad", "http", {"url": "http://127.0.0.1/", "headers": {"X-Key": {"secret": "a b"}}}
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    violations, _ = status_details(caught.value)
    assert list(violations) == ['job.parameters.headers["X-Key"]']
    with pytest.raises(grpc.RpcError):
        JobServiceStub(channel).GetJob(job_service_pb2.GetJobRequest(name=f"{PARENT}/jobs/bad"))


def test_no_value_in_events_or_the_server_log(channel: grpc.Channel, server: ServerProcess) -> None:
    job = create_job(channel, "evented", "shell", {"argv": ["env"], "env": {"PW": {"secret": "db-password"}}})
    failed = create_job(
        channel, "failing", "shell", {"argv": ["false"], "env": {"PW": {"secret": "db-password"}}}
    )
    assert run(channel, job.name).output.count(MASK) == 1
    assert run(channel, failed.name).state == execution_pb2.EXECUTION_STATE_FAILED
    events = EventServiceStub(channel)
    history: list[str] = []
    page = event_service_pb2.ListEventsRequest(parent=PARENT, page_size=1000)

    def all_listed() -> event_service_pb2.ListEventsResponse | None:
        # An event is listed once numbered, which may follow its run's commit by a moment.
        found = events.ListEvents(page)
        return found if len(found.events) >= 8 else None

    listed = wait_for(all_listed, 10, "the runs' events to be listed")
    history.extend(str(e) for e in listed.events)
    assert len(history) >= 8
    # A watcher that replays the same history sees it the same way.
    # (after_sequence 0 would mean "from now on")
    first, last = listed.events[0].sequence, listed.events[-1].sequence
    watch = events.WatchEvents(
        event_service_pb2.WatchEventsRequest(parent=PARENT, after_sequence=first), timeout=20
    )
    try:
        for response in watch:
            history.extend(str(e) for e in response.events)
            if any(e.sequence >= last for e in response.events):
                break
    finally:
        watch.cancel()
    assert len(history) >= 2 * len(listed.events) - 1
    assert_hidden("\n".join(history))
    assert "EXECUTION_SUCCEEDED" in "\n".join(history)
    assert_hidden(server.log())


def test_redactor_masks_values_split_across_chunks() -> None:
    redactor = Redactor(["abcdef", "abc"])
    out = [redactor.feed(chunk) for chunk in ("xx ab", "cd", "ef yy a", "bc zz ab")]
    out.append(redactor.close())
    assert "".join(out) == f"xx {MASK} yy {MASK} zz ab"
    # Cut off in the middle of a value: what was held back is masked.
    cut = Redactor(["abcdef"])
    assert cut.feed("out: abc") == "out: "
    assert cut.close(truncated=True) == MASK


def test_secrets_file_before_environment_and_bad_files_name_no_value(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"db-password": "from-file"}))
    environ = {"CRONWIRE_SECRET_DB_PASSWORD": "from-env", "CRONWIRE_SECRET_ONLY_ENV": "env-value"}
    secrets = Secrets(str(path), environ)
    assert secrets.value("db-password", "any") == "from-file"
    assert secrets.value("only-env", "any") == "env-value"
    parameters, used = secrets.resolve_parameters(
        {"argv": ["x"], "env": {"A": {"secret": "only-env"}, "B": "plain"}}, "any"
    )
    assert parameters["env"] == {"A": "env-value", "B": "plain"}
    assert used == ["env-value"]
    path.write_text('db-password: "unclosed\n')
    with pytest.raises(SecretError, match=r"not valid YAML or JSON at line \d") as caught:
        secrets.value("db-password", "any")
    assert "unclosed" not in str(caught.value)
    path.write_text("- a list\n")
    with pytest.raises(SecretError, match="must hold a mapping"):
        secrets.value("db-password", "any")
    path.unlink()
    with pytest.raises(SecretError, match="cannot read the secrets file"):
        secrets.value("db-password", "any")


def test_a_secret_is_used_by_its_namespaces_only(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text(
        "scoped: {value: s-1, namespaces: [a, b]}\n"
        "everyone: {value: e-1, namespaces: ['*']}\n"
        "flat: f-1\n"  # the older form: every namespace
    )
    secrets = Secrets(str(path), {"CRONWIRE_SECRET_FROM_ENV": "v-1"})
    assert secrets.value("scoped", "b") == "s-1"
    assert secrets.value("everyone", "c") == "e-1"
    assert secrets.value("flat", "c") == "f-1"
    assert secrets.value("from-env", "c") == "v-1"
    with pytest.raises(SecretError) as refused:
        secrets.value("scoped", "c")
    with pytest.raises(SecretError) as undefined:
        secrets.value("nothing", "c")
    # The same answer for both: nothing tells a namespace that another has a secret of that name.
    refusal = str(refused.value).replace("scoped", "X").replace("SCOPED", "X")
    assert refusal == str(undefined.value).replace("nothing", "X").replace("NOTHING", "X")
    assert "s-1" not in str(refused.value)
    parameters = {"env": {"A": {"secret": "scoped"}, "B": "plain"}, "headers": {"H": {"secret": "flat"}}}
    assert secrets.refusals(parameters, "a") == []
    assert [(field, key) for field, key, _ in secrets.refusals(parameters, "c")] == [("env", "A")]
    # Undefined: accepted at create, refused when the job runs.
    assert secrets.refusals({"env": {"A": {"secret": "nothing"}}}, "c") == []
    for bad in ("x: {value: v}\n", "x: {value: v, namespaces: []}\n", "x: {value: v, namespaces: a}\n"):
        path.write_text(bad)
        with pytest.raises(SecretError, match="namespaces"):
            secrets.value("x", "a")


def test_redactor_masks_escaped_forms() -> None:
    value = 'pa"ss\\wörd\n'
    redactor = Redactor([value])
    text = "\n".join(
        [
            json.dumps(value),
            json.dumps(value, ensure_ascii=False),
            repr(value),
            repr(value.encode()),
            urllib.parse.quote(value),
            base64.b64encode(value.encode()).decode(),
        ]
    )
    masked = redactor.text(text)
    assert "ss" not in masked, masked
    assert "cyJ" not in masked, masked
