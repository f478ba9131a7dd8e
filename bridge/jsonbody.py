"""The one JSON loader for request bodies (REST ``read_json`` and MCP ``read_message``).

Python's ``json`` accepts what other parsers (Vault's Go decoder, JavaScript) do not, or not the same way:
``NaN``/``Infinity``, integers of any size, floats that overflow to infinity, and nesting deep enough to break
code further down. A body that passes here is one every consumer reads the same way:

- nesting of objects and arrays at most ``MAX_JSON_DEPTH`` levels (the top-level value is level 1);
- no ``NaN``, ``Infinity`` or ``-Infinity``;
- integers within JSON's interoperable range, ``|n| <= 2**53 - 1`` (RFC 8259 §6, I-JSON RFC 7493 §2.2);
- floats finite (``1e400`` is refused, not read as infinity); finite floats of any magnitude are kept.

Everything else is :class:`JsonBodyError` (the body is not JSON) or :class:`JsonLimitError` (it is JSON, beyond
a limit), both with a message that never quotes the body.

Speed: a body without a run of 16 digits (so every integer in it is safe) is parsed by orjson, which refuses
``NaN``/``Infinity`` and overflowing floats itself; anything orjson refuses, and any body with such a run, is
parsed again by the standard library with the checks above, so the answer and its message are the same either
way. :func:`dumps` is the one JSON encoder of the bridge's answers (orjson; the standard library for what orjson
cannot encode, such as an integer beyond 64 bits).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

MAX_SAFE_INTEGER = 2**53 - 1
_MAX_SAFE_DIGITS = len(str(MAX_SAFE_INTEGER))
_LONG_DIGITS = b"0" * _MAX_SAFE_DIGITS
"""A run of digits as long as the largest safe integer: the body may hold an unsafe one (or a float whose
digits orjson and the standard library might round apart): the careful parser decides. Looked for in the body
translated by :data:`_DIGITS_AS_ZERO` (a substring search: ~8x cheaper than ``re.search(rb"[0-9]{16}")``)."""
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x78 for byte in range(256))


class JsonBodyError(ValueError):
    """The body is not valid JSON."""


class JsonLimitError(JsonBodyError):
    """The body is JSON but beyond one of the limits above."""


def _constant(name: str) -> Any:
    raise JsonLimitError(f"{name} is not a JSON number; send finite numbers only.")


def _integer(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > _MAX_SAFE_DIGITS or abs(int(text)) > MAX_SAFE_INTEGER:
        raise JsonLimitError("An integer is outside JSON's safe range (|n| <= 2**53 - 1); send it as a string.")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonLimitError("A number is too large to be represented; send it as a string.")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def load_json(raw: bytes | str, *, max_depth: int) -> Any:
    """The decoded body, or :class:`JsonBodyError` / :class:`JsonLimitError`."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _LONG_DIGITS not in data.translate(_DIGITS_AS_ZERO):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # not JSON, or beyond a limit: the careful parser says which
        else:
            if _depth_exceeds(value, max_depth):
                raise JsonLimitError(f"The body nests objects/arrays deeper than {max_depth} levels.")
            return value
    try:
        value = json.loads(raw, parse_constant=_constant, parse_int=_integer, parse_float=_float)
    except JsonLimitError:
        raise
    except RecursionError:
        raise JsonLimitError(f"The body nests objects/arrays deeper than {max_depth} levels.") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise JsonBodyError("The body is not valid JSON.") from None
    if _depth_exceeds(value, max_depth):
        raise JsonLimitError(f"The body nests objects/arrays deeper than {max_depth} levels.")
    return value


def dumps(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (orjson; the standard library for what orjson refuses: integers beyond 64
    bits, keys that are not strings)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
