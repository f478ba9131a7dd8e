"""Redaction of values and their encoded forms (bridge/broker/redact.py), one-shot and streamed."""

from __future__ import annotations

import base64
import html
import json
import random
from urllib.parse import quote, quote_plus

import pytest

from bridge.broker.redact import Redactor, _embedded_base64, value_forms

CANARIES = [
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "p@ss w/rd+&=?#%\"\\'<>",
    "pässwörd-ü€-日本",
    "line1\nline2\ttab",
    "a",
    "xyz12",
    "-----BEGIN KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n-----END KEY-----\n",
]


def independent_forms(value: str) -> list[str]:
    """The forms the issue names, computed here without the module under test."""
    raw = value.encode()
    forms = [value, base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("="),
             base64.urlsafe_b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
             quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1]]
    return [f for f in forms if f]


@pytest.mark.parametrize("value", CANARIES)
def test_every_named_form_is_replaced(value: str) -> None:
    redactor = Redactor([(value, "fp:1")])
    for form in independent_forms(value):
        text = f"\u3014{form}\u3015"  # delimiters that are in no canary
        out, count = redactor.redact_text(text)
        assert out == "\u3014[redacted:fp:1]\u3015", form
        assert count == 1
        data, count = redactor.redact_bytes(text.encode())
        assert data == "\u3014[redacted:fp:1]\u3015".encode()
        assert count == 1


def test_html_and_js_forms() -> None:
    value = "a<b>&\"c' d(e)*!"
    redactor = Redactor([(value, "f")])
    for form in (html.escape(value), html.escape(value, quote=False), quote(value, safe="!'()*~"),
                 quote(value, safe="").lower().replace("%", "%")):
        assert redactor.redact_text(f"x{form}y")[0] == "x[redacted:f]y"
    # lower-case percent escapes and upper-case \\u escapes
    value2 = "é/ü x"
    r2 = Redactor([(value2, "f")])
    assert r2.redact_text(quote(value2, safe="").lower())[0] == "[redacted:f]"
    assert r2.redact_text(json.dumps(value2)[1:-1].replace("\\u00e9", "\\u00E9").replace("\\u00fc", "\\u00FC"))[0] \
        == "[redacted:f]"
    assert r2.redact_text(json.dumps(value2)[1:-1].replace("/", "\\/"))[0] == "[redacted:f]"


@pytest.mark.parametrize("prefix", ["", "u", "us", "user:", "longer prefix:"])
@pytest.mark.parametrize("suffix", ["", "!", "!!", "!!!"])
def test_value_inside_a_longer_base64_text(prefix: str, suffix: str) -> None:
    """``Authorization: Basic base64(user:value)`` echoed back: the bits fixed by the value alone are gone."""
    value = "s3cr3t-v4lue"
    redactor = Redactor([(value, "f")])
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode((prefix + value + suffix).encode()).decode()
        out, count = redactor.redact_text(f"Basic {blob}")
        assert count == 1
        assert "[redacted:f]" in out
        rest = out.removeprefix("Basic ")
        assert value not in rest
        left, _right = rest.split("[redacted:f]")
        assert len(left) <= len(blob) - len(value) * 4 // 3 + 2  # only edge characters remain


def test_short_values_have_no_embedded_base64_forms() -> None:
    """Under 5 bytes the value fixes fewer than 6 base64 characters at some offset: no embedded forms then."""
    assert _embedded_base64(b"abcd") == set()
    cores = _embedded_base64(b"abcde")
    assert cores
    assert all(len(core) >= 6 for core in cores)
    assert value_forms("") == set()


def test_longest_value_wins_and_markers_are_not_matched_again() -> None:
    redactor = Redactor([("abc", "short"), ("xxabcxx", "long"), ("redacted", "r")])
    out, count = redactor.redact_text("xxabcxx abc [redacted:short]")
    # 'redacted' inside the input's own marker text is a value here: replaced; markers produced are never re-read
    assert out == "[redacted:long] [redacted:short] [[redacted:r]:short]"
    assert count == 3


def test_labels_are_checked() -> None:
    with pytest.raises(ValueError, match="label"):
        Redactor([("v", 'bad"label')])
    assert not Redactor([("", "x")])
    assert Redactor([]).redact_text("abc") == ("abc", 0)


@pytest.mark.parametrize("value", [*CANARIES[:4], CANARIES[6]])
def test_stream_equals_one_shot_for_every_split(value: str) -> None:
    redactor = Redactor([(value, "f"), ("other-secret-value", "g")])
    forms = sorted(independent_forms(value))
    data = ("start " + " mid ".join(forms) + " other-secret-value " + value[: len(value) // 2] + " end").encode()
    expected, _ = redactor.redact_bytes(data)
    for cut in range(len(data) + 1):
        stream = redactor.stream()
        out = stream.feed(data[:cut]) + stream.feed(data[cut:]) + stream.close()
        assert out == expected, cut


def test_stream_random_chunking_and_holds_only_possible_prefixes() -> None:
    value = "tok-" + "9" * 30
    redactor = Redactor([(value, "f")])
    data = (("noise " * 50) + value + ("more " * 50) + base64.b64encode(value.encode()).decode()).encode() * 5
    expected, count = redactor.redact_bytes(data)
    assert count == 10
    rng = random.Random(7)
    for _ in range(50):
        stream = redactor.stream()
        out = bytearray()
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 40)
            out += stream.feed(data[pos:pos + step])
            pos += step
        out += stream.close()
        assert bytes(out) == expected
    stream = redactor.stream()
    assert stream.feed(b"plain text with no secret\n") == b"plain text with no secret\n"  # nothing held back
    assert stream.feed(b"ends with tok-99") == b"ends with "  # could still become the value
    assert stream.feed(b"x") == b"tok-99x"
    assert stream.close() == b""
