"""Redaction of secret values, and of the forms they take on the way, from text and bytes.

A value ``v`` is replaced by ``[redacted:<label>]`` (the label is the secret's fingerprint in the broker, the
environment variable's name in ``exec``) wherever it appears as:

- itself;
- base64 of its UTF-8 bytes, standard and URL-safe alphabets, with and without ``=`` padding; and, for values of
  5 bytes or more, the characters of its base64 that do not depend on neighbouring bytes when ``v`` sits at any
  of the three byte offsets inside a longer base64 text (``Authorization: Basic base64(user:v)`` echoed back);
  the one or two characters at each edge of such an embedded match mix in a few bits of the neighbours and of
  ``v``'s first and last byte, and are left;
- URL-encoded: ``quote`` (``/`` kept or escaped), ``quote_plus``, JavaScript's ``encodeURIComponent``, each with
  upper- and lower-case hex escapes;
- JSON-string-escaped: ``\\uXXXX`` escapes of non-ASCII (lower and upper case hex) or raw UTF-8, ``/`` kept or
  escaped as ``\\/``;
- HTML-escaped (``&amp;`` ... with and without quote escapes).

All forms of all values are matched in one left-to-right pass, the longest form first at each position, so a
value that contains another value is replaced whole and no replacement text is ever matched again.

Bytes are matched with the UTF-8 encoding of every form. :class:`StreamRedactor` redacts a byte stream that
arrives in chunks (a child's stdout) exactly as if it had come in one piece: it holds back the shortest tail that
could still grow into a match, and nothing else. A value of a single character would replace every occurrence of
that character: correct, and the answer is then mostly markers. A process or server that transforms a value in
any other way (reverses, hex-encodes, encrypts it) is not caught: redaction is a safety net, not the guarantee.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MIN_EMBEDDED_BASE64_CORE = 6
"""Embedded base64 matches (a value inside a longer base64 text) are used only when at least this many
characters are fixed by the value alone (values of 5+ bytes); shorter ones would match unrelated text."""
_LABEL = re.compile(r"[A-Za-z0-9_.:+/=-]{1,200}")
_PERCENT = re.compile(r"%[0-9A-F]{2}")
_UNICODE_ESCAPE = re.compile(r"\\u[0-9a-f]{4}")


def _lower_hex(text: str) -> str:
    return _PERCENT.sub(lambda m: m.group(0).lower(), text)


def _embedded_base64(raw: bytes) -> set[str]:
    """The characters of base64 fixed by ``raw`` alone when it starts at byte offset 0, 1 or 2 of a longer
    encoded text, standard and URL-safe alphabets."""
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode().rstrip("=")
        first = -(-8 * offset // 6)  # ceil: the first character made of the value's bits only
        last = 8 * (offset + len(raw)) // 6  # exclusive: characters entirely within the value's bits
        core = encoded[first:last]
        if len(core) >= MIN_EMBEDDED_BASE64_CORE:
            cores.add(core)
            cores.add(core.replace("+", "-").replace("/", "_"))
    return cores


def value_forms(value: str) -> set[str]:
    """Every form of ``value`` that is redacted (``value`` itself included); empty for an empty value."""
    if not value:
        return set()
    raw = value.encode("utf-8")
    forms = {value}
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    forms |= {std, std.rstrip("="), url, url.rstrip("=")}
    forms |= _embedded_base64(raw)
    for encoded in (quote(value, safe=""), quote(value, safe="/"), quote_plus(value), quote_plus(value, safe="/"),
                    quote(value, safe="!'()*~")):
        forms |= {encoded, _lower_hex(encoded)}
    for ascii_only in (True, False):
        escaped = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/")}
        upper = _UNICODE_ESCAPE.sub(lambda m: "\\u" + m.group(0)[2:].upper(), escaped)
        forms |= {upper, upper.replace("/", "\\/")}
    forms |= {html.escape(value, quote=True), html.escape(value, quote=False)}
    forms.discard("")
    return forms


def marker(label: str) -> str:
    return f"[redacted:{label}]"


class Redactor:
    """Replaces every form of the given values by ``[redacted:<label>]``.

    ``secrets`` are ``(value, label)`` pairs; labels are fingerprints or names (letters, digits and
    ``_ . : + / = -``, so that a marker never breaks the JSON, header or URL it lands in). Empty values are
    ignored (there is nothing to hide).
    """

    def __init__(self, secrets: Iterable[tuple[str, str]]) -> None:
        table: dict[str, str] = {}
        for value, label in secrets:
            if not _LABEL.fullmatch(label):
                raise ValueError("a redaction label is 1-200 of A-Z a-z 0-9 _ . : + / = -")
            for form in value_forms(value):
                table.setdefault(form, marker(label))
        ordered = sorted(table, key=lambda form: (-len(form), form))
        self._text_markers = table
        self._bytes_markers = {form.encode(): text.encode() for form, text in table.items()}
        self.forms: tuple[str, ...] = tuple(ordered)
        self.byte_forms: tuple[bytes, ...] = tuple(form.encode() for form in ordered)
        self._text = re.compile("|".join(re.escape(f) for f in ordered)) if ordered else None
        self._bytes = re.compile(b"|".join(re.escape(f) for f in self.byte_forms)) if ordered else None
        self.max_form_bytes = max((len(f) for f in self.byte_forms), default=0)

    def __bool__(self) -> bool:
        return self._text is not None

    def redact_text(self, text: str) -> tuple[str, int]:
        """``text`` redacted, and the number of replacements."""
        if self._text is None:
            return text, 0
        return self._text.subn(lambda m: self._text_markers[m.group(0)], text)

    def redact_bytes(self, data: bytes) -> tuple[bytes, int]:
        """``data`` redacted (forms matched as UTF-8 bytes), and the number of replacements."""
        if self._bytes is None:
            return data, 0
        return self._bytes.subn(lambda m: self._bytes_markers[m.group(0)], data)

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)

    # -- for StreamRedactor ----------------------------------------------------------------------------------

    def _pending_start(self, data: bytes, start: int) -> int:
        """The earliest position ``i >= start`` where ``data[i:]`` is a proper prefix of some form (more bytes
        could still make it a match), or ``len(data)``."""
        end = len(data)
        best = end
        for form in self.byte_forms:
            lowest = max(start, end - len(form) + 1)
            if lowest >= best:
                continue
            first = form[:1]
            i = data.find(first, lowest, best)
            while i != -1:
                if form.startswith(data[i:]):
                    best = i
                    break
                i = data.find(first, i + 1, best)
        return best

    def _redact_prefix(self, data: bytes) -> tuple[bytes, bytes, int]:
        """Split ``data`` into (the redacted part that no further bytes can change, the raw tail to keep,
        replacements)."""
        assert self._bytes is not None
        out: list[bytes] = []
        count = 0
        pos = 0
        for match in self._bytes.finditer(data):
            hold = self._pending_start(data, pos)
            if hold <= match.start():  # a longer form might still match from here on
                out.append(data[pos:hold])
                return b"".join(out), data[hold:], count
            out.append(data[pos:match.start()])
            out.append(self._bytes_markers[match.group(0)])
            count += 1
            pos = match.end()
        hold = self._pending_start(data, pos)
        out.append(data[pos:hold])
        return b"".join(out), data[hold:], count


class StreamRedactor:
    """Redacts a byte stream fed in chunks; the output equals :meth:`Redactor.redact_bytes` of the whole stream.

    ``feed`` returns what can be released now; at the end ``close`` returns the rest. At most
    ``max_form_bytes - 1`` bytes are ever held, and only while they could be the start of a form.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._pending = b""
        self.redactions = 0

    def feed(self, chunk: bytes) -> bytes:
        if not self._redactor:
            return chunk
        data = self._pending + chunk
        released, self._pending, count = self._redactor._redact_prefix(data)
        self.redactions += count
        return released

    def close(self) -> bytes:
        data, self._pending = self._pending, b""
        out, count = self._redactor.redact_bytes(data)
        self.redactions += count
        return out


__all__ = ["Redactor", "StreamRedactor", "marker", "value_forms"]
