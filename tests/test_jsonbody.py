"""The one JSON loader for request bodies (``bridge/jsonbody.py``): depth, ``NaN``/``Infinity``, safe integers,
finite floats. Through the bridge (400 before Vault): ``tests/test_json_limits.py``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.jsonbody import MAX_SAFE_INTEGER, JsonBodyError, JsonLimitError, load_json
from tests.test_json_limits import nested

# -- the loader ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}', str(2**53), str(-(2**53)),
                                  "1" * 5000, "1e400", "-1e400", "[" * 100_000 + "]" * 100_000])
def test_refused_numbers_and_depth(text: str) -> None:
    with pytest.raises(JsonLimitError):
        load_json(text, max_depth=32)


@pytest.mark.parametrize(("text", "value"), [
    (str(MAX_SAFE_INTEGER), MAX_SAFE_INTEGER), (str(-MAX_SAFE_INTEGER), -MAX_SAFE_INTEGER), ("1e300", 1e300),
    ("-0", 0), ("0.5", 0.5), ('"NaN"', "NaN"), ("[]", []),
])
def test_kept_values(text: str, value: Any) -> None:
    assert load_json(text, max_depth=32) == value


def test_depth_counts_containers() -> None:
    assert load_json(json.dumps(nested(32)), max_depth=32) == nested(32)
    with pytest.raises(JsonLimitError):
        load_json(json.dumps(nested(33)), max_depth=32)
    assert load_json(json.dumps([[[1]]]), max_depth=3) == [[[1]]]
    with pytest.raises(JsonLimitError):
        load_json(json.dumps([[[[]]]]), max_depth=3)


def test_not_json_is_a_body_error() -> None:
    for text in (b"{", b"\xff", b"", b"{'a': 1}"):
        with pytest.raises(JsonBodyError) as info:
            load_json(text, max_depth=32)
        assert not isinstance(info.value, JsonLimitError)
