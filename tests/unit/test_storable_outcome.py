"""What job code produces, made storable on every backend (PostgreSQL holds no NUL in text or JSON,
and no NaN or infinity in JSON) and sendable to every client (protobuf's numbers are doubles)."""

from __future__ import annotations

import math

from cronwire_server.core.model import ExecutionState
from cronwire_server.executors.runtime import (
    MAX_RESULT_DEPTH,
    RunOutcome,
    storable_json,
    storable_outcome,
    storable_text,
)


def test_a_nul_character_and_a_lone_surrogate_become_the_replacement_character() -> None:
    assert storable_text("a\x00b\x00") == "a\ufffdb\ufffd"
    assert storable_text("a\ud800b\udfff") == "a\ufffdb\ufffd"
    assert storable_text("\ud83d\ude00") == "\U0001f600"  # a pair is the character it encodes
    plain = "plain \u00e9\U0001f600"
    assert storable_text(plain) is plain


def test_json_strings_and_keys_lose_their_nul_and_non_finite_numbers_become_null() -> None:
    value = {
        "k\x00": ["v\x00", math.nan, math.inf, -math.inf, 1.5, 2, True, None, {"n": (1, "x\x00")}],
        3: "t",
    }
    assert storable_json(value) == {
        "k\ufffd": ["v\ufffd", None, None, None, 1.5, 2, True, None, {"n": [1, "x\ufffd"]}],
        3: "t",
    }


def test_an_outcome_is_storable_in_each_of_its_texts_and_kept_as_is_when_it_already_is() -> None:
    plain = RunOutcome(ExecutionState.SUCCEEDED, output="ok\n", error="")
    assert storable_outcome(plain) is plain
    bad = RunOutcome(ExecutionState.FAILED, output="o\x00", error="e\x00", result={"r": "\x00"}, exit_code=1)
    assert storable_outcome(bad) == RunOutcome(
        ExecutionState.FAILED, output="o\ufffd", error="e\ufffd", result={"r": "\ufffd"}, exit_code=1
    )


def test_a_result_nested_deeper_than_the_api_can_return_is_omitted() -> None:
    def nested(depth: int) -> object:
        value: object = "leaf\x00"
        for level in range(depth):
            value = [value] if level % 2 else {"k": value}
        return value

    kept = str(storable_json(nested(MAX_RESULT_DEPTH)))
    assert "leaf\ufffd" in kept
    assert "omitted" not in kept
    assert storable_json(nested(MAX_RESULT_DEPTH + 1)) == {
        "omitted": f"a result nested more than {MAX_RESULT_DEPTH} levels deep"
    }
    assert storable_json(nested(5000))["omitted"]  # no RecursionError, however deep


def test_an_integer_no_double_holds_becomes_null() -> None:
    largest = int(1.7976931348623157e308)  # the largest double, exactly
    assert storable_json([largest, -largest, largest * 2, -(10**400), 2**53 + 1, True]) == [
        largest,
        -largest,
        None,
        None,
        2**53 + 1,  # a double holds it approximately, as protobuf will send it
        True,
    ]
