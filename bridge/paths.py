"""Secret paths and list prefixes: what an agent may name, and where it lands in Vault.

An agent's secret ``p`` lives at ``{KV_MOUNT}/data/{DEFAULT_PREFIX}/{agent}/{p}``. Paths are relative and built
from segments of the safe set ``[A-Za-z0-9_.=+@,-]`` (1-128 characters, not ``.`` or ``..``), separated by
single ``/``, at most 16 segments and 512 characters. Paths arrive percent-decoded exactly once; a ``%`` left
after that (double encoding) is refused, as are backslashes, control characters and everything outside the set.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from bridge.errors import InvalidPathError

MAX_PATH_LENGTH = 512
MAX_SEGMENTS = 16
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.=+@,-]{1,128}$")
SAFE_SET_DOC = "letters, digits and _ . = + @ , - in segments separated by single '/'"
# the same rules as JSON-schema patterns, for the API documents (validation itself is done below)
PATH_PATTERN = r"^[A-Za-z0-9_.=+@,-]{1,128}(/[A-Za-z0-9_.=+@,-]{1,128}){0,15}$"
PREFIX_PATTERN = r"^$|^[A-Za-z0-9_.=+@,-]{1,128}(/[A-Za-z0-9_.=+@,-]{1,128}){0,15}/?$"


def _fail(reason: str) -> InvalidPathError:
    return InvalidPathError(f"Invalid path: {reason}. Paths are relative, use {SAFE_SET_DOC}, "
                            f"at most {MAX_SEGMENTS} segments and {MAX_PATH_LENGTH} characters.")


def _check_segments(value: str, *, allow_trailing_slash: bool) -> str:
    if len(value) > MAX_PATH_LENGTH:
        raise _fail("too long")
    if "%" in value:
        raise _fail("still percent-encoded after decoding")
    if "\\" in value:
        raise _fail("backslash")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise _fail("control character")
    if value.startswith("/"):
        raise _fail("absolute path")
    body = value[:-1] if allow_trailing_slash and value.endswith("/") else value
    segments = body.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise _fail("too many segments")
    for seg in segments:
        if seg == "":
            raise _fail("empty segment")
        if seg in (".", ".."):
            raise _fail("'.' or '..' segment")
        if not SEGMENT_RE.match(seg):
            raise _fail("character outside the safe set")
    return value


def validate_path(value: str | None) -> str:
    """A secret's relative path (already decoded once). Raises :class:`InvalidPathError`."""
    if not value:
        raise _fail("empty")
    return _check_segments(value, allow_trailing_slash=False)


def validate_prefix(value: str | None) -> str:
    """A list prefix: empty (the agent's root) or a relative path that may end with ``/``."""
    if not value:
        return ""
    return _check_segments(value, allow_trailing_slash=True)


def decode_raw(raw: str) -> str:
    """Decode a raw URL path component exactly once (the router's own decoding is not trusted)."""
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise _fail("not valid UTF-8") from None


def agent_path(prefix: str, agent: str, path: str) -> str:
    """The path below the KV mount: ``{prefix}/{agent}/{path}``."""
    return f"{prefix}/{agent}/{path}" if path else f"{prefix}/{agent}/"
