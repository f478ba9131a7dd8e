"""Structured logging: structlog JSON lines (or console), with redaction before the renderer, for every log line
of the process.

- Our own events are structlog key/value events; the values of sensitive keys are replaced (``redact_processor``).
- Every other logger (aiohttp's ``aiohttp.server``/``aiohttp.access``/``aiohttp.web``, ``asyncio``, warnings,
  anything a library logs) is routed from the standard ``logging`` module through the same processors, so it
  is rendered the same way and redacted too; so are uncaught exceptions (``sys.excepthook``, threads).
- Free text (a library's message, an exception's text) cannot be redacted by key, so every string value is also
  scrubbed (``scrub_text``): bytes reprs (a parser quoting raw request bytes, e.g. a header value), the values of
  credential headers (``X-API-Key: …``), bearer tokens, Vault tokens and user info in URLs.

The lines written on every request (the access line ``http.request``, ``mcp.tool.called``) go through
:func:`info_line`: the same event dict (the call's fields, then the ``structlog.contextvars``, ``level``,
``timestamp``), the same :func:`redact_processor`, the same JSON, written as one line; it only skips structlog's
proxy and the processors that have nothing to do for such a line, which cost more than the rest of the request's
logging together. Whenever the configuration in force is not :func:`configure_logging`'s JSON one (the console
format, a test's ``capture_logs``), it hands the line to structlog instead.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

import orjson
import structlog
from yarl import URL

REDACTED = "[redacted]"

SENSITIVE_KEYS = frozenset({
    "data", "value", "values", "secret", "secrets", "password", "plaintext", "ciphertext", "token",
    "client_token", "vault_token", "x-vault-token", "authorization", "x-api-key", "api_key", "cookie",
    "set-cookie", "secret_id", "jwt", "input", "signature", "hmac", "batch_input", "key_material",
    "private_key", "x-proxy-secret", "proxy_secret", "mtls_proxy_secret",
})

SAFE_FIELDS = frozenset({"level", "logger", "request_id", "trace_id", "route", "method", "auth_method", "agent",
                         "status", "duration_ms"})
"""Fields whose values the bridge builds from validated parts only; scrubbing them would only cost time."""

_SCRUBBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    # raw bytes quoted by a parser or a repr(): b'...' / b"..." (escapes included)
    (re.compile(r"""\bb'(?:[^'\\]|\\.)*(?:'|$)|\bb"(?:[^"\\]|\\.)*(?:"|$)""", re.DOTALL), "b'" + REDACTED + "'"),
    # credential headers written as "Name: value" or "Name=value", up to the end of the line
    (re.compile(r"(?i:\b(authorization|proxy-authorization|x-api-key|x-vault-token|x-proxy-secret|cookie|"
                r"set-cookie|x-ssl-client-cert)(\s*[:=]\s*)[^\r\n]*)"), r"\1\2" + REDACTED),
    (re.compile(r"(?i:\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,})"), r"\1 " + REDACTED),
    # user info in a URL: scheme://user:password@host
    (re.compile(r"(?i:\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@)"), r"\1" + REDACTED + "@"),
    # Vault tokens (service, batch, recovery; old and new formats)
    (re.compile(r"\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9_-]{20,}"), REDACTED),
)
_ANY = re.compile("|".join(f"(?:{pattern.pattern})" for pattern, _ in _SCRUBBERS), re.DOTALL)


def _may_need_scrubbing(text: str) -> bool:
    """False only for a text none of :data:`_SCRUBBERS` can match (each needs one of these literals; a Vault token
    needs a dot and 22 characters): a few substring tests, several times cheaper than the regular expression on
    the short texts of every access line (the event name, the JSON-RPC method, the tool). Non-ASCII text always
    goes to the regular expression (its case-insensitive matching knows more than ``str.lower``: dotless i, long s)."""
    if not text.isascii() or "b'" in text or 'b"' in text or "://" in text or ("." in text and len(text) >= 22):
        return True
    lowered = text.lower()
    return "x-" in lowered or "authorization" in lowered or "cookie" in lowered or "bearer" in lowered


def scrub_text(text: str) -> str:
    """Free text with raw bytes, credential header values, bearer/Vault tokens and URL user info removed."""
    if not _may_need_scrubbing(text) or not _ANY.search(text):
        return text
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


def safe_url(url: str) -> str:
    """A URL as it may be logged or shown: without user info (``https://user:pass@vault`` → ``https://vault``)."""
    try:
        parsed = URL(url)
    except ValueError:
        return scrub_text(url)
    return str(parsed.with_user(None)) if parsed.user is not None or parsed.password is not None else url


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 6:
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if str(k).lower() in SENSITIVE_KEYS else _redact(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray):
        return "b'" + REDACTED + "'"
    return value


def redact_processor(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace the values of sensitive keys (anywhere in the event, nested too) with ``[redacted]``, and scrub
    every string (the event text of a foreign logger and rendered exceptions included) except the access line's
    fields that the bridge itself made safe (route template, validated request id, agent id...)."""
    for key in list(event_dict):
        if key in SAFE_FIELDS:  # (none of them is sensitive: the common case, without lower-casing the key)
            continue
        if key.lower() in SENSITIVE_KEYS and key != "event":
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


class _BridgeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring again replaces it (and leaves other handlers alone)."""


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    structlog.get_logger("bridge.process").critical("process.uncaught_exception", exc_info=(kind, exc, tb))


def _log_uncaught_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        structlog.get_logger("bridge.process").critical(
            "process.uncaught_exception", thread=args.thread.name if args.thread else None,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def json_line(event_dict: Mapping[str, Any], *, default: Callable[[Any], Any] = repr, **_kw: Any) -> str:
    """An event as one compact JSON line (orjson; anything it cannot encode, such as an integer beyond 64 bits or
    a non-string key, through the standard library); objects JSON does not know go through ``default`` (structlog's
    renderer passes its own, which ends in ``repr``)."""
    try:
        return orjson.dumps(event_dict, default=default).decode()
    except TypeError:
        return json.dumps(event_dict, default=default, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class _LineSink:
    """Where :func:`info_line` writes while :func:`configure_logging`'s JSON configuration is in force."""

    processors: list[Any]  # structlog's list, as configured (a test's ``capture_logs`` edits it in place)
    renderer: Any
    info: bool  # the level lets info lines through
    stream: TextIO | None  # None: ``sys.stdout`` at the time of writing, as structlog's PrintLogger does


_sink: _LineSink | None = None
"""Set by :func:`configure_logging` (process-wide, as structlog's own configuration is)."""

_fallback = structlog.get_logger("bridge.access")


def info_line(event: str, fields: dict[str, Any]) -> None:
    """``structlog.get_logger().info(event, **fields)``, written directly (see the module docstring). ``fields``
    is consumed (it becomes the event dict)."""
    sink = _sink
    if sink is None or structlog.get_config()["processors"] is not sink.processors \
            or sink.processors[-1] is not sink.renderer:
        _fallback.info(event, **fields)
        return
    if not sink.info:
        return
    fields["event"] = event
    for key, value in structlog.contextvars.get_contextvars().items():
        fields.setdefault(key, value)
    fields.setdefault("level", "info")
    redact_processor(None, "info", fields)
    fields["timestamp"] = datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")
    line = json_line(fields) + "\n"
    stream = sink.stream if sink.stream is not None else sys.stdout
    with _LINE_LOCK:
        stream.write(line)  # one line, flushed at once (one write), as structlog's PrintLogger does
        stream.flush()


_LINE_LOCK = threading.Lock()


def configure_logging(level: str = "info", fmt: str = "json", *, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard ``logging`` module (process-wide, as logging is) for the service
    (stdout), or for a command whose stdout is its output (``stream=sys.stderr``)."""
    global _sink
    renderer: Any = (structlog.processors.JSONRenderer(serializer=json_line) if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    numeric = getattr(logging, level.upper())
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        redact_processor,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    _sink = _LineSink(processors, renderer, numeric <= logging.INFO, stream) if fmt == "json" else None
    # Everything logged through the standard library: the same processors, the same stream.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info,
                    redact_processor, structlog.processors.TimeStamper(fmt="iso", utc=True), renderer],
    )
    handler = _BridgeHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _BridgeHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_thread
