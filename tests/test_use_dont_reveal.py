"""Issue 12, "Done when": a canary corpus of 20 values of different shapes is stored (by an operator, in Vault), then
used through every tool and route by an identity with ``use`` but not ``read``. No value, in any of its forms (raw,
base64 standard and URL-safe with and without padding, URL-encoded, JSON-escaped), appears in any MCP message or
REST answer the bridge sent, any line it logged (a real ``vault-mcp-bridge serve`` process at ``LOG_LEVEL=debug``,
child-token mode), any audit record (``AUDIT_LOG``) or the ``/metrics`` scrape. Brokered requests reach only the
allowed host (a recording server on 127.0.0.1, listed explicitly); a server no secret lists receives nothing;
wrapped values unwrap exactly once (``hvac``). MCP resources answer what ``kv_read`` answers; values a human types
into intake links (``kv_request_input``) come back to the agent as the same fingerprints ``kv_read`` gives; every
tool ``tools/list`` offers this identity is called (but those of the dynamic engines, proven with PostgreSQL in
``tests/service/test_lease_references.py``).

Why it cannot flake: every value is distinctive (random suffixes, or characters that occur nowhere else); known
random tokens of the answers (ciphertexts, HMACs, signatures, fingerprints, wrapping tokens and accessors) are
masked before the search; and a base64 form shorter than 12 characters counts only as a whole token (a leak of an
encoded short value is one; a chance match inside a longer random text is not)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import hvac
import hvac.exceptions
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from devtools.devvault import DevVault
from tests.support.approle import BridgeCreds
from tests.support.reveal import Admin
from tests.support.servers import BridgeProcess

pytestmark = pytest.mark.integration

USE_KEY = "corpus-use-key-" + "c" * 20
MCP_VERSION = "2026-07-28"


def corpus() -> list[str]:
    """20 values of different shapes; all but the two very short ones carry a random suffix."""
    tag = secrets.token_hex(4)
    return [
        f"it's \"quoted\" and 'single' {tag}",
        f"pässwörd-ünïcødé-☃-𝄞-{tag}",
        f"line1-{tag}\nline2\r\nline3",
        json.dumps({"user": "admin", "pass": f"j50n-{tag}"}),
        f"https://user:p4ss-{tag}@db.example.com:5432/app?sslmode=require&x=1",
        base64.b64encode(f"base64-looking-{tag}".encode()).decode(),
        "ÿ§☃¡",  # very short: four characters found nowhere else
        "q%+/\\",  # very short ASCII: five characters with %, +, / and a backslash
        secrets.token_urlsafe(1500),  # long
        f"100%-pure-%41%42-{tag}",
        f"a+b+c==plus+{tag}",
        f"/etc/passwd/slashes/{tag}",
        f"  leading and trailing spaces {tag}  ",
        f"C:\\Users\\admin\\{tag}\\n",
        f"tab\there\x07bell-{tag}",
        f"-----BEGIN PRIVATE KEY-----\nMIIB{tag}\n-----END PRIVATE KEY-----\n",
        f"<script>alert('{tag}')</script>&amp;",
        f"🔑🗝️secret🔐{tag}",
        f"a=1&b=2&token={tag}",
        f"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig-{tag}_x",
    ]


def forms(value: str) -> set[str]:
    """Every form searched for: raw, base64 (standard and URL-safe, with and without padding), URL-encoded
    (``quote`` with ``/`` escaped or kept, ``quote_plus``; upper- and lower-case hex), JSON-escaped (ASCII-only or
    not; ``/`` or ``\\/``)."""
    raw = value.encode()
    std, url = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    out = {value, std, std.rstrip("="), url, url.rstrip("=")}
    for encoded in (quote(value, safe=""), quote(value, safe="/"), quote_plus(value)):
        out |= {encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), encoded)}
    for ascii_only in (True, False):
        escaped = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
        out |= {escaped, escaped.replace("/", "\\/")}
    return out


_B64 = "A-Za-z0-9+/=_-"
_MASKS = (
    re.compile(r"vault:v[0-9]+:[A-Za-z0-9+/=]+"),  # ciphertexts, signatures, HMACs
    re.compile(r"hmac-sha256:v[0-9]+:[A-Za-z0-9_-]+"),  # fingerprints (also inside [redacted:...])
    re.compile(r"\b[sbh]\.[A-Za-z0-9]{20,}"),  # Vault tokens (the wrapping tokens)
    re.compile(r"(?<![A-Za-z0-9+/=_.-])[A-Za-z0-9]{24}(?![A-Za-z0-9+/=_.-])"),  # token accessors
)


def mask(text: str) -> str:
    for pattern in _MASKS:
        text = pattern.sub("<masked>", text)
    return text


def finder(values: list[str]) -> Callable[[str], list[tuple[int, str]]]:
    """``find(text)``: the (corpus index, form) of every occurrence in ``text`` (masked first)."""
    plain: list[tuple[int, str]] = []
    tokens: list[tuple[int, re.Pattern[str]]] = []
    for index, value in enumerate(values):
        for form in forms(value):
            if re.fullmatch(f"[{_B64}]+", form) and len(form) < 12:
                tokens.append((index, re.compile(f"(?<![{_B64}]){re.escape(form)}(?![{_B64}])")))
            else:
                plain.append((index, form))

    def find(text: str) -> list[tuple[int, str]]:
        masked = mask(text)
        found = [(index, form) for index, form in plain if form in masked]
        found += [(index, pattern.pattern) for index, pattern in tokens if pattern.search(masked)]
        return found

    return find


# -- the destinations ------------------------------------------------------------------------------------------

@dataclass
class Recorder:
    """A destination on 127.0.0.1 recording every request; it echoes the secret it received in several encodings
    (so the bridge has something to redact)."""

    received: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    server: TestServer | None = None

    def app(self) -> web.Application:
        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            self.received.append((request.method, request.path_qs, dict(request.headers), body))
            secret = json.loads(body)["secret"] if body else request.headers.get("X-Token", "")
            raw = secret.encode()
            resp = web.json_response({"got": secret, "b64": base64.b64encode(raw).decode(),
                                      "b64url": base64.urlsafe_b64encode(raw).decode().rstrip("="),
                                      "quoted": quote(secret, safe=""), "query": request.query_string})
            resp.headers["X-Echo"] = base64.b64encode(raw).decode()
            return resp

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        return app

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None  # noqa: PT018
        return self.server.port


# -- the transcript --------------------------------------------------------------------------------------------

@dataclass
class Transcript:
    """Everything the bridge sent back, as text: REST answers (status line headers and body), MCP messages."""

    rest: list[str] = field(default_factory=list)
    mcp: list[str] = field(default_factory=list)


class Agent:
    """The use-only identity, over REST and MCP (raw JSON-RPC POSTs), recording every answer."""

    def __init__(self, session: aiohttp.ClientSession, url: str, transcript: Transcript) -> None:
        self.session = session
        self.url = url
        self.transcript = transcript
        self.mcp_id = 0
        self.tools_called: set[str] = set()

    async def rest(self, method: str, path: str, *, json_body: Any = None, params: dict[str, str] | None = None,
                   expect: int | None = 200) -> Any:
        async with self.session.request(method, self.url + path, json=json_body, params=params,
                                        headers={"X-API-Key": USE_KEY}) as resp:
            text = await resp.text()
            self.transcript.rest.append(f"{resp.status} {dict(resp.headers)}\n{text}")
            if expect is not None:
                assert resp.status == expect, (method, path, resp.status, text[:500])
            return json.loads(text) if text else None

    async def rpc(self, method: str, params: dict[str, Any], *, name: str | None = None) -> dict[str, Any]:
        """One 2026-07-28 request (``name``: the ``Mcp-Name`` header of tools/call and resources/read)."""
        self.mcp_id += 1
        body = {"jsonrpc": "2.0", "id": self.mcp_id, "method": method, "params": {
            **params, "_meta": {"io.modelcontextprotocol/protocolVersion": MCP_VERSION,
                                "io.modelcontextprotocol/clientCapabilities": {},
                                "io.modelcontextprotocol/clientInfo": {"name": "corpus", "version": "0"}}}}
        headers = {"X-API-Key": USE_KEY, "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": MCP_VERSION, "Mcp-Method": method}
        if name is not None:
            headers["Mcp-Name"] = name
        async with self.session.post(self.url + "/mcp", json=body, headers=headers) as resp:
            text = await resp.text()
            self.transcript.mcp.append(f"{resp.status} {dict(resp.headers)}\n{text}")
        message: dict[str, Any] = json.loads(text)
        return message

    async def tool(self, name: str, arguments: dict[str, Any], *, error: str | None = None) -> dict[str, Any]:
        self.tools_called.add(name)
        message = await self.rpc("tools/call", {"name": name, "arguments": arguments}, name=name)
        if "error" in message:  # an HTTP-level refusal (insufficient_scope)
            assert error is not None, message
            assert message["error"]["data"]["code"] == error, message
            return dict(message["error"])
        result: dict[str, Any] = message["result"]
        if error is None:
            assert result["isError"] is False, result
        else:
            assert result["structuredContent"]["error"]["code"] == error, result
        return dict(result["structuredContent"])


def unwrap(bao: DevVault, token: str) -> dict[str, Any]:
    answer: dict[str, Any] = hvac.Client(url=bao.addr, token=token).sys.unwrap()
    return answer


async def test_a_use_only_identity_never_receives_a_value(
        spawn_bridge: Callable[..., BridgeProcess], bao: DevVault, bridge_creds: BridgeCreds, admin: Admin,
        aiohttp_server: Callable[..., Any], tmp_path: Path) -> None:
    values = corpus()
    assert len(values) == 20
    assert len(set(values)) == 20
    listed, unlisted = Recorder(), Recorder()
    listed.server = await aiohttp_server(listed.app(), host="127.0.0.1")
    unlisted.server = await aiohttp_server(unlisted.app(), host="127.0.0.1")
    folder = f"corpus-{uuid.uuid4().hex[:10]}"
    paths = [f"{folder}/c{i:02d}" for i in range(20)]
    for path, value in zip(paths, values, strict=True):  # an operator stores them, never through the bridge
        await admin.write(path, {"value": value})
        await admin.policy(path, allowed_hosts=f"127.0.0.1:{listed.port}")
    audit_log = tmp_path / "audit.log"
    bridge = await asyncio.to_thread(spawn_bridge, {
        "VAULT_ADDR": bao.addr, "VAULT_ROLE_ID": bridge_creds.role_id, "VAULT_SECRET_ID": bridge_creds.secret_id,
        "CHILD_TOKEN_ENABLED": "true", "LOG_LEVEL": "debug", "AUDIT_LOG": str(audit_log),
        "METRICS_AGENT_LABELS": "true", "RATE_LIMIT_REQUESTS": "100000",
        "API_KEYS_JSON": json.dumps({USE_KEY: {"agent": "alice", "scopes": ["use", "write", "list"]}})})
    transcript = Transcript()
    refs: list[str] = []
    async with aiohttp.ClientSession() as session:
        agent = Agent(session, bridge.url, transcript)
        await agent.rest("GET", "/whoami")
        await agent.tool("whoami", {})
        await agent.rest("POST", "/transit/keys", json_body={"key": "signer", "type": "ed25519"})
        await agent.tool("transit_create_key", {"key": "signer", "type": "ed25519"})
        listing = await agent.rest("GET", "/secrets", params={"prefix": folder + "/"})
        assert sorted(listing["keys"]) == [p.rsplit("/", 1)[1] for p in paths]  # names only
        await agent.tool("kv_list", {"prefix": folder + "/"})

        for path, value in zip(paths, values, strict=True):
            # reads: references and fingerprints, REST and MCP, latest and a version
            read = await agent.rest("GET", f"/secrets/{path}")
            ref = read["fields"]["value"]["reference"]
            refs.append(ref)
            assert ref == f"secret://{path}#value@1"
            assert (await agent.tool("kv_read", {"path": path}))["fields"] == read["fields"]
            await agent.rest("GET", f"/secrets/{path}", params={"version": "1"})
            await agent.rest("GET", f"/secrets/{path}:metadata")
            await agent.tool("kv_metadata", {"path": path})

            # wrapped delivery: REST and MCP, each unwrapped exactly once by the consumer
            for wrapped in (await agent.rest("GET", f"/secrets/{path}", params={"wrap_ttl": "60s"}),
                            await agent.tool("kv_read", {"path": path, "wrap_ttl": "1m"})):
                token = wrapped["wrap_info"]["token"]
                data = await asyncio.to_thread(unwrap, bao, token)
                assert data["data"]["data"] == {"value": value}
                with pytest.raises(hvac.exceptions.InvalidRequest):
                    await asyncio.to_thread(unwrap, bao, token)

            # Transit by reference; decrypt and verify need read
            enc = await agent.rest("POST", "/transit/encrypt", json_body={"key": "k", "plaintext_ref": ref})
            await agent.tool("transit_encrypt", {"key": "k", "plaintext_ref": ref})
            await agent.rest("POST", "/transit/decrypt", json_body={"key": "k", "ciphertext": enc["ciphertext"]},
                             expect=403)
            await agent.tool("transit_decrypt", {"key": "k", "ciphertext": enc["ciphertext"]},
                             error="insufficient_scope")
            await agent.rest("POST", "/transit/rewrap", json_body={"key": "k", "ciphertext": enc["ciphertext"]})
            await agent.rest("POST", "/transit/hmac", json_body={"key": "k", "input_ref": ref})
            await agent.tool("transit_hmac", {"key": "k", "batch_input": [{"input_ref": ref}]})
            sig = await agent.rest("POST", "/transit/sign", json_body={"key": "signer", "input_ref": ref})
            await agent.tool("transit_sign", {"key": "signer", "input_ref": ref})
            await agent.rest("POST", "/transit/verify", json_body={
                "key": "signer", "input": "eA==", "signature": sig["signature"]}, expect=403)

            # brokered HTTP: the value goes to the listed server in the body, the query and (single-line) a header
            placeholder = f"{{{{{ref}}}}}"
            request: dict[str, Any] = {
                "method": "POST", "url": f"http://127.0.0.1:{listed.port}/hook?v={placeholder}",
                "headers": {"Content-Type": "application/json"},
                "body": json.dumps({"secret": placeholder})}
            if not re.search(r"[\x00-\x1f\x7f]", value) and value == value.strip():  # HTTP trims header values
                request["headers"]["X-Token"] = placeholder
            for answer in (await agent.rest("POST", "/broker/http", json_body=request),
                           await agent.tool("http_request", request)):
                assert answer["status"] == 200
                assert answer["redactions"] >= 4
            method, path_qs, headers, body = listed.received[-1]
            assert method == "POST"
            assert json.loads(body) == {"secret": value}
            assert path_qs == f"/hook?v={quote(value, safe='')}"
            if "X-Token" in request["headers"]:
                assert headers["X-Token"] == value
            elsewhere = {**request, "url": f"http://127.0.0.1:{unlisted.port}/steal"}
            await agent.rest("POST", "/broker/http", json_body=elsewhere, expect=403)
            await agent.tool("http_request", elsewhere, error="broker_host_not_allowed")

            # writes answer path, version, timestamps; the use identity may patch and write, not delete
            await agent.rest("PATCH", f"/secrets/{path}", json_body={"data": {"note": "patched"}})
            await agent.tool("kv_patch", {"path": path, "data": {"note": None}})
            await agent.rest("DELETE", f"/secrets/{path}", expect=403)
            await agent.rest("POST", f"/secrets/{path}:destroy", json_body={"versions": [1]}, expect=403)
            await agent.rest("POST", f"/secrets/{path}:undelete", json_body={"versions": [1]})
        scratch = f"{folder}/scratch"
        await agent.rest("PUT", f"{'/secrets/'}{scratch}", json_body={"data": {"n": 1}})
        await agent.tool("kv_write", {"path": scratch, "data": {"n": 2}})
        await agent.tool("kv_undelete", {"path": scratch, "versions": [1]})
        await agent.tool("kv_delete", {"path": scratch}, error="insufficient_scope")
        await agent.tool("kv_destroy", {"path": scratch, "versions": [1]}, error="insufficient_scope")
        await agent.tool("transit_random", {}, error="insufficient_scope")
        await agent.tool("transit_verify", {"key": "signer", "input": "eA==", "signature": "vault:v1:AA=="},
                         error="insufficient_scope")
        await agent.tool("transit_rewrap", {"key": "k", "ciphertext": enc["ciphertext"]})

        # MCP resources: the list names secrets, a read answers exactly what kv_read answers this identity
        listed_uris: list[str] = []
        cursor: str | None = None
        while True:
            page = (await agent.rpc("resources/list", {"cursor": cursor} if cursor else {}))["result"]
            listed_uris += [r["uri"] for r in page["resources"]]
            cursor = page.get("nextCursor")
            if cursor is None:
                break
        assert {f"vault://kv/{p}" for p in paths} <= set(listed_uris)
        for path in paths:
            uri = f"vault://kv/{path}"
            read = (await agent.rpc("resources/read", {"uri": uri}, name=uri))["result"]
            content = json.loads(read["contents"][0]["text"])
            assert content["fields"] == (await agent.tool("kv_read", {"path": path}))["fields"]

        # intake: a human types each value into a one-time form; the agent (REST and MCP) learns its fingerprint,
        # which is the fingerprint kv_read gives for the same value
        typed = [v for v in values if not re.search(r"[\x00-\x1f\x7f]", v)]  # a form field holds no control character
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as human:
            for i, value in enumerate(typed):
                target = f"{folder}/intake{i:02d}"
                ask = {"path": target, "fields": ["value"], "description": "the corpus"}
                asked = (await agent.tool("kv_request_input", ask) if i % 2 else
                         await agent.rest("POST", f"/secrets/{target}:request-input",
                                          json_body={"fields": ["value"]}))
                form = await (await human.get(asked["url"])).text()
                csrf = re.search(r'name="csrf" value="([^"]+)"', form)
                assert csrf is not None
                async with human.post(asked["url"], data={"csrf": csrf.group(1), "f0": value}) as resp:
                    assert resp.status == 200, await resp.text()
                status = (await agent.tool("kv_request_input_status", {"path": target, "id": asked["elicitation_id"]})
                          if i % 2 == 0 else
                          await agent.rest("GET", f"/secrets/{target}:request-input",
                                           params={"id": asked["elicitation_id"]}))
                assert (status["status"], status["stored"]) == ("stored", True)
                again = await agent.rest("GET", f"/secrets/{target}")
                assert again["fields"]["value"]["fingerprint"] == status["fingerprints"]["value"]
                original = await agent.rest("GET", f"/secrets/{paths[values.index(value)]}")
                assert original["fields"]["value"]["fingerprint"] == status["fingerprints"]["value"]  # same value
        await agent.tool("lease_list", {})

        # every tool this identity may call was called (those of dynamic engines, which this Vault has not
        # mounted, are proven the same way with PostgreSQL in tests/service/test_lease_references.py)
        offered = {t["name"] for t in (await agent.rpc("tools/list", {}))["result"]["tools"]}
        assert offered - agent.tools_called == {"db_creds", "pki_sign", "ssh_sign", "lease_renew"}
        async with session.get(bridge.url + "/metrics") as resp:
            metrics = await resp.text()
    bridge.stop()  # flush and close: the log is complete

    assert unlisted.received == []  # the server no secret lists received nothing
    assert len(listed.received) == 40  # each value, REST and MCP, to the listed host only
    log = bridge.log_path.read_text(errors="replace")
    audit = audit_log.read_text()
    find = finder(values)
    leaks = {f"rest #{i}": find(text) for i, text in enumerate(transcript.rest)}
    leaks |= {f"mcp #{i}": find(text) for i, text in enumerate(transcript.mcp)}
    leaks |= {"log": find(log), "audit": find(audit), "metrics": find(metrics)}
    assert {where: found for where, found in leaks.items() if found} == {}
    assert len(transcript.rest) > 300
    assert len(transcript.mcp) > 200

    # the search finds what it looks for: the listed server did receive every value, and the logs are real
    assert [i for i in range(20) if not any(index == i for index, _ in find(
        "\n".join(body.decode() for *_, body in listed.received)))] == []
    events = {json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")}
    assert {"http.request", "broker.request.sent", "broker.request.refused"} <= events
    assert any(json.loads(line)["level"] == "debug" for line in log.splitlines() if line.startswith("{"))
    assert sum(1 for line in audit.splitlines() if '"operation":"http_request"' in line) == 80
    assert refs == [f"secret://{p}#value@1" for p in paths]
