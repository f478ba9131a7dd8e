"""Intake links: stateless, signed, short-lived, bound to one agent, one secret path and one expected version.

A link is ``{base}/intake/<token>``, the token ``i1.<payload>.<mac>``: ``payload`` is base64url (no padding) of
compact JSON ``{"a": agent, "p": path, "c": cas, "f": [[field, multiline], …], "d": description,
"x": expires_at, "n": nonce}``, ``mac`` base64url of HMAC-SHA256 over ``i1.<payload>`` with the intake key. Any
replica holding the key verifies a link without a shared store; a link is single-use through the consumed-nonce
record of :mod:`bridge.intake.store`, written when it is submitted.

The key: ``INTAKE_SECRET`` (or ``INTAKE_SECRET_FILE``) when set; else derived from ``MCP_SESSION_SECRET``, so
replicas that share that secret (and ``WORKERS`` processes, which inherit one generated session secret) share it
too; else a random key per process (a link then works only on the replica that made it). Derived keys are an
HMAC of a fixed label, so an intake key is never the session key, and nothing else signed by the bridge can pass
for a link.

An intake request is named to its agent by a shorter **reference** (the ``elicitation_id`` of
``kv_request_input``, the id ``kv_request_input_status`` takes): ``<expires_at>.<nonce>.<path, base64url>.<mac>``,
the MAC (128 bits) over the rest and the agent with the intake key. It says which link (its record's name is the
first two parts), which secret, and until when; it is not the link: nobody can submit values with it.

The token is not secret from the human who opens it (its payload is readable); it is a capability to write
values into one secret once. Anyone who gets the link before it is used can use it: it expires after
``INTAKE_TTL`` (10 minutes), and the human who finds it used knows something is wrong.

Form protection (CSRF) is a double submit bound to the link: the form page sets a random cookie (``HttpOnly``,
``SameSite=Strict``, ``Path=/intake/``) and puts ``HMAC(key, "csrf" | nonce | cookie)`` in a hidden field; a
submission must carry both, matching.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridge.config import IDENT_RE, Settings
from bridge.errors import IntakeError, InvalidPathError, InvalidRequestError
from bridge.models import MAX_VERSION
from bridge.paths import validate_path
from bridge.references import check_field

MAX_FIELDS = 16
MAX_FIELD_NAME = 128
MAX_LABEL = 64
MAX_FIELD_DESCRIPTION = 200
MAX_FIELD_TEXT = 2048
"""The most characters of all fields' names, labels and descriptions together (the link carries them)."""
MAX_DESCRIPTION = 500
MAX_PAYLOAD = 8000
"""The most characters of a link's base64url payload."""
_KEY_LABEL = b"vault-mcp-bridge intake link key v1"
_TOKEN = re.compile(r"i1\.([A-Za-z0-9_-]{16,8000})\.([A-Za-z0-9_-]{43})")
_REF = re.compile(r"(\d{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{1,1400})\.([A-Za-z0-9_-]{22})")


@dataclass(frozen=True, slots=True)
class IntakeField:
    """A value the human is asked for: ``name`` is the KV key it is stored under; ``multiline`` gives a text
    area (PEM keys, certificates) instead of a password input; ``label`` (default: the name) and
    ``description`` are shown on the form (the agent's words, like its note)."""

    name: str
    multiline: bool = False
    label: str = ""
    description: str = ""

    def encode(self) -> list[object]:
        """The payload entry: ``[name, multiline]``, then label and description when set."""
        entry: list[object] = [self.name, self.multiline]
        if self.label or self.description:
            entry += [self.label, self.description] if self.description else [self.label]
        return entry

    @classmethod
    def decode(cls, entry: list[object]) -> IntakeField:
        name, multiline, *rest = entry
        if len(rest) > 2 or not all(isinstance(text, str) for text in [name, *rest]):
            raise ValueError("not a field")
        return cls(str(name), bool(multiline), *(str(text) for text in rest))


@dataclass(frozen=True, slots=True)
class IntakeTicket:
    """A verified (or just issued) intake link."""

    agent: str
    path: str
    cas: int
    fields: tuple[IntakeField, ...]
    description: str
    expires_at: int
    nonce: str
    token: str

    @property
    def intake_id(self) -> str:
        """``<expires_at>.<nonce>``: the consumed-nonce record's name (its expiry first, so old records can be
        found by listing, without reading them)."""
        return f"{self.expires_at}.{self.nonce}"


@dataclass(frozen=True, slots=True)
class IntakeRef:
    """What an agent's reference to one of its intake requests names (see the module docstring): enough to
    find the link's record and to say which secret, never enough to submit values."""

    agent: str
    path: str
    expires_at: int
    nonce: str

    @property
    def intake_id(self) -> str:
        return f"{self.expires_at}.{self.nonce}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_text(what: str, text: str, limit: int, *, newlines: bool = False) -> None:
    if len(text) > limit:
        raise ValueError(f"{what} is longer than {limit} characters")
    if any((ord(ch) < 0x20 and not (newlines and ch == "\n")) or 0x7F <= ord(ch) <= 0x9F for ch in text):
        raise ValueError(f"{what} has a control character")


def check_request(agent: str, path: str, cas: int, fields: Sequence[IntakeField], description: str) -> None:
    """What an intake request may hold; ``ValueError`` with the reason otherwise."""
    if not IDENT_RE.match(agent):
        raise ValueError("the agent id is not valid")
    try:
        validate_path(path)
    except InvalidPathError as exc:
        raise ValueError(exc.message) from None
    if isinstance(cas, bool) or not isinstance(cas, int) or not 0 <= cas <= MAX_VERSION:
        raise ValueError(f"cas is the secret's current version, 0 to {MAX_VERSION} (0: it must not exist yet)")
    if not 1 <= len(fields) <= MAX_FIELDS:
        raise ValueError(f"ask for 1 to {MAX_FIELDS} fields")
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError("a field is asked for twice")
    for spec in fields:
        check_field(spec.name)
        if len(spec.name) > MAX_FIELD_NAME:
            raise ValueError(f"a field name is longer than {MAX_FIELD_NAME} characters")
        _check_text("a field label", spec.label, MAX_LABEL)
        _check_text("a field description", spec.description, MAX_FIELD_DESCRIPTION)
    if sum(len(f.name) + len(f.label) + len(f.description) for f in fields) > MAX_FIELD_TEXT:
        raise ValueError(f"the fields' names, labels and descriptions together are longer than {MAX_FIELD_TEXT} "
                         "characters")
    _check_text("the description", description, MAX_DESCRIPTION, newlines=True)


class IntakeCodec:
    """Issues and verifies intake links. ``clock`` is injectable for the expiry tests."""

    def __init__(self, key: bytes, ttl_seconds: float, *, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the intake key must be at least 32 bytes")
        self._key = key
        self.ttl = ttl_seconds
        self._clock = clock

    @staticmethod
    def derive_key(secret: str) -> bytes:
        return hmac.new(hashlib.sha256(secret.encode()).digest(), _KEY_LABEL, hashlib.sha256).digest()

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.time) -> IntakeCodec:
        """Keyed by ``INTAKE_SECRET``, else derived from ``MCP_SESSION_SECRET``, else random (see the module)."""
        secret = settings.intake_secret or settings.mcp_session_secret
        key = cls.derive_key(secret.get_secret_value()) if secret is not None else secrets.token_bytes(32)
        return cls(key, settings.intake_ttl, clock=clock)

    def now(self) -> float:
        return self._clock()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def mac(self, purpose: str, body: str) -> str:
        """A MAC of ``body`` for another use of the intake key (``purpose`` separates the uses, so that nothing
        made for one passes for another, nor for a link)."""
        return self._mac(f"{purpose}\0{body}")

    def issue(self, *, agent: str, path: str, cas: int, fields: Sequence[IntakeField],
              description: str = "") -> IntakeTicket:
        """A new link. Raises :class:`InvalidRequestError` (400) for a request outside the limits."""
        description = description.strip()
        try:
            check_request(agent, path, cas, fields, description)
        except ValueError as exc:
            raise InvalidRequestError(f"Invalid input request: {exc}.") from None
        expires_at = int(self._clock() + self.ttl)
        nonce = _b64(secrets.token_bytes(16))
        payload = {"a": agent, "p": path, "c": cas, "f": [f.encode() for f in fields],
                   "d": description, "x": expires_at, "n": nonce}
        encoded = _b64(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        if len(encoded) > MAX_PAYLOAD:
            raise InvalidRequestError("Invalid input request: the request does not fit into a link; shorten the "
                                      "description, labels or field descriptions.")
        body = "i1." + encoded
        token = f"{body}.{self._mac(body)}"
        return IntakeTicket(agent, path, cas, tuple(fields), description, expires_at, nonce, token)

    def verify(self, token: str) -> IntakeTicket:
        """The link's ticket. Raises :class:`IntakeError`: 404 ``intake_invalid`` (malformed, forged, altered),
        410 ``intake_expired``."""
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise _invalid()
        body = token.rsplit(".", 1)[0]
        if not hmac.compare_digest(match.group(2), self._mac(body)):
            raise _invalid()
        try:
            data = json.loads(_unb64(match.group(1)))
            fields = tuple(IntakeField.decode(entry) for entry in data["f"])
            ticket = IntakeTicket(data["a"], data["p"], data["c"], fields, data["d"], int(data["x"]),
                                  str(data["n"]), token)
            check_request(ticket.agent, ticket.path, ticket.cas, ticket.fields, ticket.description)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _invalid() from None  # signed by us but not ours to read: a key shared with something else
        if self._clock() >= ticket.expires_at:
            raise IntakeError("This link has expired. Ask the agent for a new one.", code="intake_expired",
                              status=410)
        return ticket

    def ref_id(self, ticket: IntakeTicket) -> str:
        """The agent's reference to this link's request (see the module docstring)."""
        body = f"{ticket.intake_id}.{_b64(ticket.path.encode())}"
        return f"{body}.{self.mac('ref', ticket.agent + chr(0) + body)[:22]}"

    def read_ref(self, value: str, agent: str) -> IntakeRef | None:
        """The request a reference names, if it is one of ours and ``agent``'s; else ``None``."""
        match = _REF.fullmatch(value)
        if match is None:
            return None
        body = value.rsplit(".", 1)[0]
        if not hmac.compare_digest(match.group(4), self.mac("ref", agent + chr(0) + body)[:22]):
            return None
        try:
            path = validate_path(_unb64(match.group(3)).decode())
        except (InvalidPathError, UnicodeDecodeError, binascii.Error, ValueError):
            return None
        return IntakeRef(agent, path, int(match.group(1)), match.group(2))

    def csrf_token(self, ticket: IntakeTicket, cookie: str) -> str:
        return self._mac(f"csrf\0{ticket.nonce}\0{cookie}")

    def csrf_ok(self, ticket: IntakeTicket, cookie: str | None, submitted: str | None) -> bool:
        if not cookie or not submitted:
            return False
        return hmac.compare_digest(submitted, self.csrf_token(ticket, cookie))


def _invalid() -> IntakeError:
    return IntakeError("This link is not valid (mistyped, altered, or made by another bridge). Ask the agent for "
                       "a new one.", code="intake_invalid", status=404)


__all__ = ["MAX_DESCRIPTION", "MAX_FIELDS", "IntakeCodec", "IntakeField", "IntakeRef", "IntakeTicket",
           "check_request"]
