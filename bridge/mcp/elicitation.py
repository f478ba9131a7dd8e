"""URL-mode elicitation for ``kv_request_input``: the intake link goes to the human through the MCP client, never
into the model's context; the tool's result is only ``{path, status, stored, version, fingerprints}``.

**2025-11-25** (``2025-11-25/client/elicitation.mdx`` §URL Mode Elicitation Requests, §Completion Notifications;
``2025-11-25/basic/transports.mdx`` §Sending Messages to the Server, item 6). A client that declares
``capabilities.elicitation.url`` in ``initialize`` (negotiating 2025-11-25, the first revision with URL mode) gets a
session id that says so (flag ``u``, :mod:`bridge.mcp.session`: stateless, signed). Its ``tools/call`` of
``kv_request_input`` runs the operation as any tool call (scope, audit), and is then answered with an SSE stream
(``text/event-stream``) on that POST, carrying, in order:

1. the server's request ``elicitation/create`` ``{"mode": "url", "elicitationId", "url", "message"}`` (JSON-RPC id
   ``vmb-intake:<elicitationId>``; ``elicitationId`` is the request's reference, :mod:`bridge.intake.token`);
2. a ``: keepalive`` comment every 15 s while nobody has submitted (proxies and clients keep the stream open);
3. ``notifications/elicitation/complete`` ``{"elicitationId"}`` once the values are stored (or the write failed);
4. the ``tools/call`` response: the final result.

The client answers (1) with a separate POST (202). ``accept`` only means the human agreed to open the link, so the
call keeps waiting; ``decline``, ``cancel`` or an error voids the link (on any replica: the reference is verified
with the intake key and the caller's identity) and ends the call with status ``declined``/``cancelled``. The
stream has no event ids (the bridge offers no resumption), so the SHOULD-priming event of the transport does not
apply. Why not the ``-32042`` URLElicitationRequiredError: it says a request *cannot be processed until* the user
completes an elicitation and is retried unchanged afterwards; here the elicitation is the work itself, and a retry
of the unchanged call would ask again. The issue asks for ``elicitation/create``, and its flow (server waits,
then "continue processing") is exactly this.

**2026-07-28** (``2026-07-28/basic/patterns/mrtr.mdx``; ``2026-07-28/client/elicitation.mdx`` §URL Mode Flow).
Servers no longer send requests; a client that declares ``elicitation.url`` in the request's
``_meta["io.modelcontextprotocol/clientCapabilities"]`` gets, for the first call, an ``InputRequiredResult``:
``{"resultType": "input_required", "inputRequests": {"intake": {"method": "elicitation/create", "params":
{"mode": "url", "message", "url"}}}, "requestState"}`` (no ``elicitationId``: removed in this revision). The
``requestState`` is ``rs1.<payload>.<mac>``, HMAC-protected with the intake key (purpose ``mrtr``), binding the
agent, the tool, a digest of the arguments, the link and its expiry (mrtr.mdx §Server Requirements 4-5: it is
attacker-controlled input). The client retries the same call with ``inputResponses`` and ``requestState``:
``accept`` → the bridge answers at once if the request is settled, else holds the retry open on an SSE stream
(keep-alive comments, the spec's "it may need to block until the request is fulfilled") until it is, and answers
the final result; ``decline``/``cancel`` voids the link and answers ``declined``/``cancelled``; no answer for
``intake`` → the same ``InputRequiredResult`` again (§Error Handling). A retry is no new request for input: no
second link, no second audit record of ``kv_request_input`` (its scope is checked again).

**Clients without URL mode** (no capability, form mode only, or an older revision) get the ordinary result:
``status: "pending"``, the ``url`` to give the human and the ``elicitation_id`` for ``kv_request_input_status``.

Waiting ends when the request settles (stored, failed, declined, cancelled; the status is read from the intake
store every ``poll`` seconds, at once when the submission lands on this process) or expires (status ``expired``),
when the client has gone (noticed at the next keep-alive), or when the bridge stops (``status: "pending"`` with the
``elicitation_id``, for ``kv_request_input_status`` on another replica). A waiting call holds one of the agent's
``AGENT_MAX_INFLIGHT`` slots for that long (at most ``INTAKE_TTL``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from bridge.auth.identity import Identity
from bridge.errors import BridgeError
from bridge.intake.flow import CLAIM_GRACE
from bridge.intake.token import IntakeRef
from bridge.mcp.protocol import INVALID_PARAMS, RpcError, rpc_result
from bridge.mcp.tools import result_content
from bridge.models import IntakeOut
from bridge.operations.intake import REQUEST_INPUT
from bridge.routing import RATE_DECISION, REQUEST_ID
from bridge.service.intake import IntakeService, iso

log = structlog.get_logger("bridge.mcp")

URL_FLAG = "u"
"""The session-id flag of a 2025-11-25 client that declared URL-mode elicitation."""
URL_MODE_VERSIONS = frozenset({"2025-11-25"})
"""Handshake revisions that know URL-mode elicitation."""
INPUT_KEY = "intake"
"""The key of the elicitation in ``inputRequests`` / ``inputResponses`` (2026-07-28)."""
REQUEST_PREFIX = "vmb-intake:"
"""The JSON-RPC id of an ``elicitation/create`` request: this prefix and the elicitation id (2025-11-25)."""
STATE_PREFIX = "rs1."
KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 2.0

Result = dict[str, Any]


def url_mode(capabilities: Any) -> bool:
    """Whether client capabilities declare URL-mode elicitation (``{"elicitation": {"url": {}}}``; an empty
    ``elicitation`` object means form mode only)."""
    elicitation = capabilities.get("elicitation") if isinstance(capabilities, dict) else None
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)


def session_flags(version: str, capabilities: Any) -> str:
    """The session-id flags of an ``initialize`` (see :data:`URL_FLAG`)."""
    return URL_FLAG if version in URL_MODE_VERSIONS and url_mode(capabilities) else ""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _digest(arguments: Any) -> str:
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return _b64(hashlib.sha256(canonical.encode()).digest()[:16])


class Elicitations:
    """URL-mode elicitation of ``kv_request_input`` for both eras (see the module docstring)."""

    def __init__(self, intake: IntakeService, *, keepalive: float = KEEPALIVE_SECONDS,
                 poll: float = POLL_SECONDS) -> None:
        self._intake = intake
        self._flow = intake.flow
        self.keepalive = keepalive
        self.poll = poll
        self._closing = False

    async def on_shutdown(self, app: web.Application) -> None:
        """The app is stopping: waiting calls answer at once with ``status: "pending"`` and the
        ``elicitation_id``, so the agent can ask ``kv_request_input_status`` (on another replica) later."""
        self._closing = True
        self._flow.waiters.wake_all()

    @staticmethod
    def handles(tool: Any) -> bool:
        return isinstance(tool, str) and tool == REQUEST_INPUT

    # -- 2025-11-25: elicitation/create on the call's SSE stream -------------------------------------------

    async def legacy_call(self, request: web.Request, msg_id: str | int, identity: Identity,
                          first: Result) -> web.StreamResponse:
        """Answer a ``tools/call`` whose first result is ``first``: pending → the SSE stream, else as it is."""
        pending = self._pending(first, identity)
        if pending is None:
            return rpc_result(msg_id, first)
        ref, out = pending
        eid = out.elicitation_id or ""
        stream = await _open_stream(request)
        asked = await _send(stream, {"jsonrpc": "2.0", "id": REQUEST_PREFIX + eid, "method": "elicitation/create",
                                     "params": {"mode": "url", "elicitationId": eid, "url": out.url,
                                                "message": _message(ref)}})
        log.info("mcp.elicitation.sent", agent=identity.subject, path=ref.path, intake_id=ref.intake_id,
                 era="2025-11-25")
        final = await self._wait(stream, ref, eid) if asked else None
        if final is None:
            return stream
        if final.status in ("stored", "failed"):
            await _send(stream, {"jsonrpc": "2.0", "method": "notifications/elicitation/complete",
                                 "params": {"elicitationId": eid}})
        await _send(stream, {"jsonrpc": "2.0", "id": msg_id, "result": _result(final)})
        await _close(stream)
        return stream

    async def on_response(self, identity: Identity, msg_id: Any, body: dict[str, Any]) -> None:
        """The client's answer to an ``elicitation/create`` (a POST of a JSON-RPC response): ``decline``,
        ``cancel`` or an error voids the link; ``accept`` changes nothing (the human agreed to open it)."""
        if not isinstance(msg_id, str) or not msg_id.startswith(REQUEST_PREFIX):
            return
        ref = self._flow.read_ref(msg_id[len(REQUEST_PREFIX):], identity.subject)
        if ref is None:
            log.info("mcp.elicitation.unknown_response", agent=identity.subject)
            return
        result = body.get("result")
        action = result.get("action") if isinstance(result, dict) else None
        log.info("mcp.elicitation.answered", agent=identity.subject, intake_id=ref.intake_id,
                 action=action if action in ("accept", "decline", "cancel") else "error")
        if action == "accept":
            return
        await self._flow.decline(ref, "declined" if action == "decline" else "cancelled")

    # -- 2026-07-28: InputRequiredResult, retried -----------------------------------------------------------

    async def modern_call(self, request: web.Request, msg_id: str | int, identity: Identity, params: dict[str, Any],
                          first: Callable[[], Awaitable[Result]],
                          finish: Callable[[Result], Result]) -> Result | web.StreamResponse:
        """A ``tools/call`` of a client with URL mode: the first call (``first()`` runs the operation) answers
        an ``InputRequiredResult``; the retry the outcome (``finish`` adds ``resultType`` and ``_meta`` to a
        result sent on a stream)."""
        name = params.get("name")
        arguments = params.get("arguments") if params.get("arguments") is not None else {}
        state = params.get("requestState")
        if state is None:
            result = await first()
            pending = self._pending(result, identity)
            if pending is None:
                return result
            ref, out = pending
            return self._input_required(identity, name, arguments, ref, out.url or "", out.elicitation_id or "")
        ref, url, eid = self._read_state(state, identity, name, arguments)
        responses = params.get("inputResponses")
        answer = responses.get(INPUT_KEY) if isinstance(responses, dict) else None
        if not isinstance(answer, dict):
            return self._input_required(identity, name, arguments, ref, url, eid)  # ask again (§Error Handling)
        action = answer.get("action")
        if action not in ("accept", "decline", "cancel"):
            raise RpcError(INVALID_PARAMS, "Invalid params: inputResponses.intake.action must be accept, decline or "
                                           "cancel.")
        log.info("mcp.elicitation.answered", agent=identity.subject, intake_id=ref.intake_id, action=action)
        if action != "accept":
            await self._flow.decline(ref, "declined" if action == "decline" else "cancelled")
        out = await self._intake.outcome(ref)
        if out.status != "pending":
            return _result(out)
        stream = await _open_stream(request)
        final = await self._wait(stream, ref, eid)
        if final is None:
            return stream
        await _send(stream, {"jsonrpc": "2.0", "id": msg_id, "result": finish(_result(final))})
        await _close(stream)
        return stream

    def _input_required(self, identity: Identity, name: Any, arguments: Any, ref: IntakeRef, url: str,
                        eid: str) -> Result:
        payload = {"a": identity.subject, "t": name, "d": _digest(arguments), "e": eid, "u": url,
                   "x": ref.expires_at}
        body = STATE_PREFIX + _b64(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        log.info("mcp.elicitation.sent", agent=identity.subject, path=ref.path, intake_id=ref.intake_id,
                 era="2026-07-28")
        return {
            "resultType": "input_required",
            "inputRequests": {INPUT_KEY: {"method": "elicitation/create", "params": {
                "mode": "url", "message": _message(ref), "url": url}}},
            "requestState": f"{body}.{self._flow.codec.mac('mrtr', body)}",
        }

    def _read_state(self, state: Any, identity: Identity, name: Any, arguments: Any) -> tuple[IntakeRef, str, str]:
        """The request a ``requestState`` names, if it is ours, the caller's, for this very call and not stale;
        else -32602."""
        invalid = RpcError(INVALID_PARAMS, "Invalid params: requestState is not one this server issued for this "
                                           "call (or it is stale); call the tool again without it.")
        if not isinstance(state, str) or not state.startswith(STATE_PREFIX) or len(state) > 16384:
            raise invalid
        body, _, mac = state.rpartition(".")
        if not body or not hmac.compare_digest(mac, self._flow.codec.mac("mrtr", body)):
            raise invalid
        try:
            raw = body[len(STATE_PREFIX):]
            payload = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
            agent, tool, digest, eid, url = (str(payload[k]) for k in ("a", "t", "d", "e", "u"))
            expires_at = int(payload["x"])
        except (ValueError, KeyError, TypeError):
            raise invalid from None
        if agent != identity.subject or tool != name or digest != _digest(arguments):
            raise invalid
        if self._flow.codec.now() >= expires_at + self._flow.codec.ttl:
            raise invalid
        ref = self._flow.read_ref(eid, identity.subject)
        if ref is None:
            raise invalid
        return ref, url, eid

    # -- shared -----------------------------------------------------------------------------------------------

    def _pending(self, first: Result, identity: Identity) -> tuple[IntakeRef, IntakeOut] | None:
        """The request a successful ``kv_request_input`` result names (``None`` for an error result)."""
        structured = first.get("structuredContent")
        if first.get("isError") or not isinstance(structured, dict) or structured.get("status") != "pending":
            return None
        out = IntakeOut.model_validate(structured)
        ref = self._flow.read_ref(out.elicitation_id or "", identity.subject)
        return (ref, out) if ref is not None and out.url else None

    async def _wait(self, stream: web.StreamResponse, ref: IntakeRef, eid: str) -> IntakeOut | None:
        """Until the request settles (its final status), the client has gone (``None``) or the app stops (status
        ``pending`` with the ``elicitation_id`` to poll); a keep-alive comment every ``keepalive`` seconds."""
        last_write = time.monotonic()
        with self._flow.waiters.watch(ref.intake_id) as changed:
            while True:
                changed.clear()
                try:
                    out = await self._intake.outcome(ref)
                except BridgeError as exc:  # Vault unavailable for a moment: ask again
                    log.warning("mcp.elicitation.status_failed", intake_id=ref.intake_id, code=exc.code)
                    if self._flow.codec.now() >= ref.expires_at + CLAIM_GRACE:
                        return IntakeOut(path=ref.path, status="failed", stored=False, code=exc.code)
                    out = None
                if out is not None and out.status != "pending":
                    log.info("mcp.elicitation.settled", intake_id=ref.intake_id, status=out.status)
                    return out
                if self._closing:
                    return IntakeOut(path=ref.path, status="pending", stored=False, elicitation_id=eid,
                                     expires_at=iso(ref.expires_at))
                timeout = min(self.poll, max(0.0, last_write + self.keepalive - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
                if time.monotonic() - last_write >= self.keepalive:
                    if not await _write(stream, b": keepalive\n\n"):
                        log.info("mcp.elicitation.client_gone", intake_id=ref.intake_id)
                        return None
                    last_write = time.monotonic()


def _message(ref: IntakeRef) -> str:
    return (f"Agent '{ref.agent}' asks you to provide values for its secret '{ref.path}' in Vault. Open the link "
            "and type them into the form there: they go straight to Vault, and the agent is only told that they "
            "were stored.")


def _result(out: IntakeOut) -> Result:
    return result_content(out.model_dump(mode="json", exclude_none=True), is_error=False)


async def _open_stream(request: web.Request) -> web.StreamResponse:
    """A ``text/event-stream`` answer; headers the middlewares would add after the handler (too late for a
    stream) are set now."""
    stream = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                     "Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"})
    request_id = request.get(REQUEST_ID)
    if request_id:
        stream.headers["X-Request-Id"] = request_id
    decision = request.get(RATE_DECISION)
    if decision is not None:
        for name, value in decision.headers().items():
            stream.headers[name] = value
    await stream.prepare(request)
    return stream


async def _write(stream: web.StreamResponse, data: bytes) -> bool:
    try:
        await stream.write(data)
    except (ConnectionError, RuntimeError):  # the client has gone (aiohttp: ClientConnectionResetError)
        return False
    return True


async def _send(stream: web.StreamResponse, message: dict[str, Any]) -> bool:
    """One JSON-RPC message as an SSE ``message`` event (JSON escapes every line break, so one ``data`` line)."""
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    return await _write(stream, f"event: message\ndata: {data}\n\n".encode())


async def _close(stream: web.StreamResponse) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await stream.write_eof()


__all__ = ["INPUT_KEY", "REQUEST_PREFIX", "URL_FLAG", "Elicitations", "session_flags", "url_mode"]
