"""The driver's JSON documents are read by `sql_engine.json_loads`: quicker than `json.loads` for
the empty object and list, and for UTF-8 bytes, with the same values."""

from __future__ import annotations

import json

import pytest

from cronwire_server.storage.sql_engine import json_loads

DOCUMENTS = [
    "{}",
    "[]",
    "null",
    "0",
    '""',
    '{"interval": {"seconds": 3600.0}}',
    '["a", 1, 2.5, true, false, null, {"b": []}]',
    '{"text": "caf\\u00e9 \\ud83d\\ude00", "raw": "café 😀"}',
    "  {}  ",
    "[ ]",
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_json_loads_reads_what_json_loads_reads(document: str) -> None:
    assert json_loads(document) == json.loads(document)
    assert json_loads(document.encode()) == json.loads(document)


@pytest.mark.parametrize("document", [b"{}", b"[]", "{}", "[]"])
def test_each_empty_document_read_is_a_new_value(document: bytes | str) -> None:
    # Rows keep what they read, and callers may fill it: no two reads share one value.
    first, second = json_loads(document), json_loads(document)
    assert first == second == json.loads(document)
    assert first is not second


@pytest.mark.parametrize(
    ("document", "error"),
    [("{", json.JSONDecodeError), (b"[1,", json.JSONDecodeError), (b"\xff", UnicodeDecodeError)],
)
def test_invalid_documents_fail_as_with_json_loads(document: bytes | str, error: type[Exception]) -> None:
    with pytest.raises(error):
        json.loads(document)
    with pytest.raises(error):
        json_loads(document)
