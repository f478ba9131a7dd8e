"""References: ``secret://<path>#<field>[@<version>]`` and ``lease://<lease_id>#password``, and ``{{…}}``
placeholders holding them.

A reference names one field of one secret in the caller's own namespace, so that an agent can use a value
without seeing it (brokered HTTP, Transit by reference, ``exec``)::

    secret://app/db#password          the field "password" of the latest version of app/db
    secret://app/db#password@3        ... of version 3
    secret://app/api#api%20key        the field "api key" (percent-encoded)

- ``path``: the bridge's own path rules (:func:`bridge.paths.validate_path`): relative, segments of
  ``[A-Za-z0-9_.=+@,-]``, at most 16 segments and 512 characters. ``#`` is outside that set, so the first ``#``
  ends the path.
- ``field``: the KV key exactly as stored, 1-256 characters after decoding, no control characters. In the
  reference it is written with the characters ``A-Z a-z 0-9 _ . - ~ + = , : ! $ * /`` as they are and every other
  character (a space, ``@``, ``#``, ``%``, ``{``, ``}``, non-ASCII ...) as ``%XX`` escapes of its UTF-8 bytes, so
  any key can be named and ``@`` can only start the version.
- ``version``: an optional positive integer (1-999999999, no leading zero) after the field.
- The scheme is exactly ``secret://`` (lower case); nothing may follow the version.

A **lease reference** names the password of a database login the bridge made for the caller (``db_creds``)
and holds for it, because the caller may not see it (a ``use``-only identity; docs/dynamic.md, "Database
passwords by reference")::

    lease://database/creds/mcp.alice.ro/AbC123xyz#password

- ``lease_id``: the login's lease id exactly as ``db_creds`` and ``lease_list`` answer it, 1-512 characters
  after decoding, no control characters; written with ``A-Z a-z 0-9 _ . - ~ + = , : ! $ * /`` as they are and
  every other character as ``%XX`` escapes of its UTF-8 bytes (Vault's lease ids need none). The first ``#``
  ends it.
- the field is ``password``, the only value the bridge holds for a lease; there is no version.
- The scheme is exactly ``lease://`` (lower case). A lease reference is the caller's own: another agent's is
  404 ``lease_not_found``, as its lease id is.

Lease references are accepted where a database password can be used without being seen: brokered HTTP
(placeholders, below) and ``vault-mcp-bridge exec`` (``--env``). Everything else that takes a reference
(Transit's ``plaintext_ref`` and ``input_ref``) takes ``secret://`` references only and answers a lease
reference with 400 ``invalid_reference`` saying so (:func:`parse_reference`; :func:`parse_any_reference` reads
both kinds).

A placeholder is ``{{secret://…}}`` or ``{{lease://…}}`` inside any string the caller sends (a header, the URL, a
body); spaces or tabs right inside the braces are allowed (``{{ secret://a#b }}``). Every ``{{`` followed by
``secret:`` or ``lease:`` (in any case) must be a well-formed placeholder: a typo is a 400 ``invalid_reference``,
never sent on as literal text. There is no escape for a literal ``{{secret:`` or ``{{lease:``. Error messages say
where and what is wrong, never echoing the string around it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import quote, unquote

from bridge.errors import InvalidPathError, InvalidReferenceError
from bridge.models import MAX_VERSION
from bridge.paths import validate_path

SCHEME = "secret://"
LEASE_SCHEME = "lease://"
LEASE_FIELDS = ("password",)
"""The values a lease reference can name (what the bridge holds for a database login)."""
MAX_LEASE_ID_LENGTH = 512
MAX_FIELD_LENGTH = 256
FIELD_SAFE = "_.-~+=,:!$*/"
"""Characters a field is written with as they are, besides letters and digits (``quote``'s ``safe``)."""
MAX_REFERENCE_LENGTH = len(SCHEME) + 512 + 1 + 3 * 4 * MAX_FIELD_LENGTH + 1 + 9
"""The longest well-formed reference (every field character a 4-byte UTF-8 sequence, escaped)."""
MAX_LEASE_REFERENCE_LENGTH = len(LEASE_SCHEME) + 3 * 4 * MAX_LEASE_ID_LENGTH + 1 + len("password")
MAX_PLACEHOLDERS = 64
"""The most placeholders one string may hold."""

_RAW_FIELD = re.compile(r"(?:[A-Za-z0-9_.~+=,:!$*/-]|%[0-9A-Fa-f]{2})+")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
_OPEN = re.compile(r"\{\{[ \t]*(?=[sS][eE][cC][rR][eE][tT]:|[lL][eE][aA][sS][eE]:)")
_CLOSE = re.compile(r"[ \t]*\}\}")
_REFERENCE_CHARS = re.compile(r"[A-Za-z0-9_.~+=,:!$*/@#%-]*")
REFERENCE_DOC = ("A reference is secret://<path>#<field> with an optional @<version>: the path as in the secret "
                 "routes, the field name with characters other than letters, digits and _ . - ~ + = , : ! $ * / "
                 "percent-encoded.")
LEASE_REFERENCE_DOC = ("A lease reference is lease://<lease_id>#password: the lease id as db_creds answers it, "
                       "characters other than letters, digits and _ . - ~ + = , : ! $ * / percent-encoded.")


@dataclass(frozen=True, slots=True, order=True)
class Reference:
    """One field of one secret in the caller's namespace; ``version`` ``None`` means the latest."""

    path: str
    field: str
    version: int | None = None

    def __str__(self) -> str:
        return format_reference(self)

    def at(self, version: int) -> Reference:
        """The same field pinned to ``version`` (what a read answers, so that later uses see the same value)."""
        return Reference(self.path, self.field, version)


@dataclass(frozen=True, slots=True, order=True)
class LeaseReference:
    """The ``field`` (``password``) of the caller's database login ``lease_id``, held by the bridge."""

    lease_id: str
    field: str = "password"

    def __str__(self) -> str:
        return format_lease_reference(self)


AnyReference: TypeAlias = Reference | LeaseReference
"""What a placeholder or an ``exec --env`` binding may name."""


class _LeaseMalformed(ValueError):
    """A malformed ``lease://`` reference (its message is the reason)."""


def _fail(reason: str, *, where: str = "", position: int | None = None, lease: bool = False) -> InvalidReferenceError:
    place = f" in {where}" if where else ""
    if position is not None:
        place += f" at character {position}"
    extra: dict[str, object] = {}
    if where:
        extra["where"] = where
    if position is not None:
        extra["position"] = position
    kind, doc = ("lease", LEASE_REFERENCE_DOC) if lease else ("secret", REFERENCE_DOC)
    return InvalidReferenceError(f"Invalid {kind} reference{place}: {reason}. {doc}", extra=extra)


def check_field(field: str) -> str:
    """A field name (a KV key): 1-256 characters, no control characters. Returns it unchanged."""
    if not field:
        raise ValueError("the field name is empty")
    if len(field) > MAX_FIELD_LENGTH:
        raise ValueError(f"the field name is longer than {MAX_FIELD_LENGTH} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in field):
        raise ValueError("the field name contains a control character")
    return field


def _parse(text: str) -> Reference:
    """The reference in ``text``; ``ValueError`` with the reason when malformed."""
    if len(text) > MAX_REFERENCE_LENGTH:
        raise ValueError("too long")
    if not text.startswith(SCHEME):
        raise ValueError("it must start with secret:// (lower case)")
    path, sep, tail = text[len(SCHEME):].partition("#")
    if not sep:
        raise ValueError("no #<field> after the path")
    try:
        path = validate_path(path)
    except InvalidPathError as exc:
        reason = exc.message.removeprefix("Invalid path: ").split(". Paths are", 1)[0]
        raise ValueError(f"the path is invalid ({reason})") from None
    raw_field, at, raw_version = tail.partition("@")
    if not raw_field:
        raise ValueError("the field name is empty")
    if not _RAW_FIELD.fullmatch(raw_field):
        raise ValueError("the field name has a character that must be percent-encoded, or a bad %XX escape")
    try:
        field = check_field(unquote(raw_field, errors="strict"))
    except UnicodeDecodeError:
        raise ValueError("the field name's escapes are not UTF-8") from None
    version: int | None = None
    if at:
        if not _VERSION.fullmatch(raw_version):
            raise ValueError(f"the version after @ must be an integer from 1 to {MAX_VERSION} (no leading zero, "
                             "nothing after it)")
        version = int(raw_version)
    return Reference(path, field, version)


def _parse_lease(text: str) -> LeaseReference:
    """The lease reference in ``text``; :class:`_LeaseMalformed` with the reason when malformed."""
    if len(text) > MAX_LEASE_REFERENCE_LENGTH:
        raise _LeaseMalformed("too long")
    raw_id, sep, field = text[len(LEASE_SCHEME):].partition("#")
    if not raw_id:
        raise _LeaseMalformed("the lease id is empty")
    if not sep:
        raise _LeaseMalformed("no #password after the lease id")
    if not _RAW_FIELD.fullmatch(raw_id):
        raise _LeaseMalformed("the lease id has a character that must be percent-encoded, or a bad %XX escape")
    try:
        lease_id = unquote(raw_id, errors="strict")
    except UnicodeDecodeError:
        raise _LeaseMalformed("the lease id's escapes are not UTF-8") from None
    if len(lease_id) > MAX_LEASE_ID_LENGTH:
        raise _LeaseMalformed(f"the lease id is longer than {MAX_LEASE_ID_LENGTH} characters")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in lease_id):
        raise _LeaseMalformed("the lease id contains a control character")
    if field not in LEASE_FIELDS:
        raise _LeaseMalformed(f"the field must be one of: {', '.join(LEASE_FIELDS)} (nothing after it)")
    return LeaseReference(lease_id, field)


def _parse_any(text: str) -> AnyReference:
    if text.startswith(LEASE_SCHEME):
        return _parse_lease(text)
    if not text.startswith(SCHEME):
        raise ValueError("it must start with secret:// or lease:// (lower case)")
    return _parse(text)


def parse_reference(text: str, *, where: str = "") -> Reference:
    """Parse ``secret://<path>#<field>[@<version>]``. Raises :class:`InvalidReferenceError` (400), also for a
    lease reference, with a reason that says where lease references are accepted."""
    if text.startswith(LEASE_SCHEME):
        raise _fail("a lease reference (lease://…) names a database password and is accepted only in http_request "
                    "placeholders and by vault-mcp-bridge exec; here a secret:// reference is needed", where=where)
    try:
        return _parse(text)
    except ValueError as exc:
        raise _fail(str(exc), where=where) from None


def parse_any_reference(text: str, *, where: str = "") -> AnyReference:
    """Parse a secret or a lease reference. Raises :class:`InvalidReferenceError` (400)."""
    try:
        return _parse_any(text)
    except ValueError as exc:
        raise _fail(str(exc), where=where, lease=isinstance(exc, _LeaseMalformed)) from None


def format_reference(ref: Reference) -> str:
    """The canonical text of ``ref`` (what :func:`parse_reference` reads back to the same reference)."""
    text = f"{SCHEME}{ref.path}#{quote(ref.field, safe=FIELD_SAFE)}"
    return text if ref.version is None else f"{text}@{ref.version}"


def format_lease_reference(ref: LeaseReference) -> str:
    """The canonical text of ``ref`` (what :func:`parse_any_reference` reads back to the same reference)."""
    return f"{LEASE_SCHEME}{quote(ref.lease_id, safe=FIELD_SAFE)}#{ref.field}"


@dataclass(frozen=True, slots=True)
class Placeholder:
    """A ``{{secret://…}}`` or ``{{lease://…}}`` found in a string: ``text[start:end]`` is the whole
    placeholder."""

    reference: AnyReference
    start: int
    end: int


def find_placeholders(text: str, *, where: str = "") -> list[Placeholder]:
    """Every ``{{secret://…}}`` and ``{{lease://…}}`` in ``text``, in order. Raises :class:`InvalidReferenceError`
    for a ``{{`` that introduces a ``secret:`` or ``lease:`` reference and is not a well-formed placeholder
    (unclosed, bad reference)."""
    found: list[Placeholder] = []
    pos = 0
    while True:
        opened = _OPEN.search(text, pos)
        if opened is None:
            return found
        if len(found) >= MAX_PLACEHOLDERS:
            raise _fail(f"more than {MAX_PLACEHOLDERS} placeholders in one string", where=where)
        body_start = opened.end()
        chars = _REFERENCE_CHARS.match(text, body_start)
        assert chars is not None  # the pattern matches the empty string
        closed = _CLOSE.match(text, chars.end())
        if closed is None:
            raise _fail("a {{secret:… or {{lease:… placeholder must hold only a reference and end with }}",
                        where=where, position=opened.start())
        try:
            ref = _parse_any(text[body_start:chars.end()])
        except ValueError as exc:
            raise _fail(str(exc), where=where, position=opened.start(),
                        lease=isinstance(exc, _LeaseMalformed)) from None
        found.append(Placeholder(ref, opened.start(), closed.end()))
        pos = closed.end()


def substitute(text: str, values: Mapping[AnyReference, str], *, where: str = "",
               encode: Callable[[str], str] | None = None) -> str:
    """``text`` with every placeholder replaced by its value (``encode(value)`` when given, e.g. percent-encoding
    in a URL). Every reference must be in ``values`` (a missing one is a bug of the caller: ``KeyError``)."""
    placeholders = find_placeholders(text, where=where)
    if not placeholders:
        return text
    parts: list[str] = []
    pos = 0
    for ph in placeholders:
        value = values[ph.reference]
        parts.append(text[pos:ph.start])
        parts.append(encode(value) if encode is not None else value)
        pos = ph.end
    parts.append(text[pos:])
    return "".join(parts)


def collect_references(texts: Iterable[tuple[str, str]]) -> list[AnyReference]:
    """The distinct references of several ``(where, text)`` strings, in order of first appearance."""
    seen: dict[AnyReference, None] = {}
    for where, text in texts:
        for ph in find_placeholders(text, where=where):
            seen.setdefault(ph.reference, None)
    return list(seen)


__all__ = ["LEASE_FIELDS", "LEASE_SCHEME", "MAX_FIELD_LENGTH", "SCHEME", "AnyReference", "LeaseReference",
           "Placeholder", "Reference", "check_field", "collect_references", "find_placeholders",
           "format_lease_reference", "format_reference", "parse_any_reference", "parse_reference", "substitute"]
