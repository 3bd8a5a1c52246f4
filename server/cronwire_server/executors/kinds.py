"""The parameters of the built-in executor kinds: JSON schemas and examples.

Schemas are JSON Schema draft 2020-12 and are sent to clients by ListJobTypes,
so every property carries a description. `errorMessage` (the ajv-errors
convention, an annotation validators ignore) replaces jsonschema's generic
text where that would be cryptic.
"""

from __future__ import annotations

from typing import Any

from cronwire_server.secrets import NAME_PATTERN

_DRAFT = "https://json-schema.org/draft/2020-12/schema"
# Rejects a subschema's instance outright; carries its own message.
_FORBIDDEN: dict[str, Any] = {"not": {}}

# A value given as text, or as a reference to a secret the server resolves when the job runs.
_TEXT_OR_SECRET: dict[str, Any] = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["secret"],
            "properties": {
                "secret": {
                    "type": "string",
                    "pattern": NAME_PATTERN,
                    "description": "The name of a secret, resolved by the server when the job runs.",
                }
            },
        },
    ],
    "errorMessage": 'must be a string or {"secret": "NAME"}, NAME a letter then letters, digits, - or _',
}
_ENV = {
    "type": "object",
    "additionalProperties": _TEXT_OR_SECRET,
    "description": (
        "Environment variables for the run, set over a fresh environment with nothing of the "
        "server's (PATH, HOME, USER, LOGNAME, LANG of the job's user). A value may be "
        '{"secret": "NAME"} of a secret of the job\'s namespace: the server puts in the '
        "secret's value when the job runs, and masks it in the output."
    ),
}
_WORKING_DIR = {
    "type": "string",
    "minLength": 1,
    "description": (
        "The directory the process starts in; its user must be able to use it. Defaults to a "
        "new directory of the run's own, removed when the run ends."
    ),
}

SHELL_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT,
    "title": "shell",
    "description": (
        'Runs a program. Give `argv`; a shell command line (`command`) only with `"shell": true`.'
    ),
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "argv": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": 'The program and its arguments, run without a shell, e.g. `["echo", "hello"]`.',
        },
        "command": {
            "type": "string",
            "minLength": 1,
            "description": 'A command line run by `/bin/sh -c`; only with `"shell": true`.',
        },
        "shell": {
            "type": "boolean",
            "default": False,
            "description": "Run `command` through a shell instead of `argv` directly.",
        },
        "env": _ENV,
        "working_dir": _WORKING_DIR,
    },
    "if": {"required": ["shell"], "properties": {"shell": {"const": True}}},
    "then": {
        "required": ["command"],
        "properties": {
            "argv": {**_FORBIDDEN, "errorMessage": 'not allowed with "shell": true; give command instead'}
        },
    },
    "else": {
        "required": ["argv"],
        "properties": {
            "command": {**_FORBIDDEN, "errorMessage": 'only allowed with "shell": true; give argv instead'}
        },
    },
}

PYTHON_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT,
    "title": "python",
    "description": "Calls a Python function `module:function` in a subprocess, so it can be timed out.",
    "type": "object",
    "additionalProperties": False,
    "required": ["callable"],
    "properties": {
        "callable": {
            "type": "string",
            "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
            "errorMessage": "must be `module:function`, e.g. `myapp.tasks:cleanup`",
            "description": "The function to call, as `module:function` (`myapp.tasks:cleanup`).",
        },
        "args": {"type": "array", "description": "Positional arguments, as JSON values."},
        "kwargs": {"type": "object", "description": "Keyword arguments, as JSON values."},
        "python": {
            "type": "string",
            "minLength": 1,
            "description": "The interpreter, e.g. a virtualenv's `bin/python`. Defaults to the server's.",
        },
        "env": _ENV,
        "working_dir": _WORKING_DIR,
    },
}

HTTP_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT,
    "title": "http",
    "description": "Calls a webhook. The run succeeds when the response status is an expected one.",
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {
            "type": "string",
            "format": "uri",
            "pattern": r"^https?://[^\s/?#@]+(?:[/?#]\S*)?$",
            "errorMessage": "must be an absolute http:// or https:// URL",
            "description": "The URL to call; `http` or `https`.",
        },
        "method": {
            "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"],
            "default": "POST",
            "description": "The HTTP method.",
        },
        "headers": {
            "type": "object",
            "additionalProperties": _TEXT_OR_SECRET,
            "description": (
                'Request headers. A value may be {"secret": "NAME"}: the server puts in the '
                "secret's value when the job runs, and masks it in the output."
            ),
        },
        "body": {"type": "string", "description": "The request body, sent as is. Not with `json`."},
        "json": {"description": "A JSON value sent as the body (`application/json`). Not with `body`."},
        "expected_status": {
            "type": "array",
            "items": {"type": "integer", "minimum": 100, "maximum": 599},
            "uniqueItems": True,
            "description": "The status codes that mean success. Empty or absent means any 2xx.",
        },
    },
    "dependentSchemas": {
        "body": {
            "properties": {
                "json": {**_FORBIDDEN, "errorMessage": "not allowed together with body; give one of them"}
            }
        }
    },
}

NOOP_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT,
    "title": "noop",
    "description": "Runs nothing and records its arguments; for trying schedules out.",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sleep_seconds": {
            "type": "number",
            "minimum": 0,
            "maximum": 3600,
            "description": "How long the run lasts, in seconds. Defaults to 0.",
        },
    },
}

# A queue or task name: what a worker announces and a worker key is scoped to.
QUEUE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_QUEUE_NAME_MESSAGE = (
    "must be a letter or digit, then letters, digits, '.', '_' or '-'; at most 63 characters"
)

REMOTE_SCHEMA: dict[str, Any] = {
    "$schema": _DRAFT,
    "title": "remote",
    "description": (
        "Runs on a remote worker: a process of yours, in any language, connected to the server "
        "with WorkerService and serving the job's `queue`. The run waits QUEUED until such a "
        "worker has a free slot. Its arguments are the execution's; give the job an "
        "`arguments_schema` to have them checked when runs are queued."
    ),
    "type": "object",
    "additionalProperties": False,
    "required": ["queue"],
    "properties": {
        "queue": {
            "type": "string",
            "pattern": QUEUE_NAME_PATTERN,
            "errorMessage": _QUEUE_NAME_MESSAGE,
            "description": "The queue whose workers run the job, e.g. `billing`.",
        },
        "task": {
            "type": "string",
            "pattern": QUEUE_NAME_PATTERN,
            "errorMessage": _QUEUE_NAME_MESSAGE,
            "description": (
                "The task the worker runs, e.g. `send-invoices` (a worker's registered function). "
                "Only workers that announce it, or announce no task names, are given the run."
            ),
        },
    },
}

SHELL_EXAMPLE: dict[str, Any] = {
    "argv": ["pg_dump", "--format=custom", "--file=/backups/app.dump", "app"],
    "env": {"PGHOST": "db.internal", "PGPASSWORD": {"secret": "db-password"}},
    "working_dir": "/srv/backups",
}
PYTHON_EXAMPLE: dict[str, Any] = {
    "callable": "myapp.tasks:purge_sessions",
    "args": [30],
    "kwargs": {"dry_run": False},
}
HTTP_EXAMPLE: dict[str, Any] = {
    "url": "https://hooks.example.com/reports/daily",
    "method": "POST",
    "headers": {"Authorization": {"secret": "reports-webhook-auth"}},
    "json": {"report": "daily"},
    "expected_status": [200, 202],
}
NOOP_EXAMPLE: dict[str, Any] = {"sleep_seconds": 2}
REMOTE_EXAMPLE: dict[str, Any] = {"queue": "billing", "task": "send-invoices"}
