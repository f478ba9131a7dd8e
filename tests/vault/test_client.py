"""The Vault client's one choke point: URL and header building, the status → exception table, the envelope,
session ownership; against the fake Vault (to see the wire) and the real OpenBao."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bridge.vault.api import quote_path
from bridge.vault.client import VaultClient
from bridge.vault.errors import (
    VaultConnectionError,
    VaultError,
    VaultHTTPError,
    VaultInvalidRequestError,
    VaultNotFoundError,
    VaultPermissionDeniedError,
    VaultRateLimitedError,
    VaultSealedError,
    VaultServerError,
    VaultTimeoutError,
    VaultUnavailableError,
    VaultUnsupportedMediaError,
    error_for_status,
)
from bridge.vault.models import VaultResponse
from bridge.vault.transport import AiohttpTransport, RawAnswer
from devtools.devvault import DevVault
from devtools.fakevault import FakeVault
from devtools.memvault import MemoryRequest, MemoryTransport, answer


@pytest.mark.parametrize(("status", "errors", "cls"), [
    (400, ["bad"], VaultInvalidRequestError),
    (403, ["permission denied"], VaultPermissionDeniedError),
    (404, [], VaultNotFoundError),
    (415, ["PATCH requires"], VaultUnsupportedMediaError),
    (429, ["quota"], VaultRateLimitedError),
    (500, ["boom"], VaultServerError),
    (501, [], VaultServerError),
    (599, [], VaultServerError),
    (502, [], VaultUnavailableError),
    (503, ["standby"], VaultUnavailableError),
    (503, ["Vault is sealed"], VaultSealedError),
    (504, [], VaultUnavailableError),
    (405, ["unsupported operation"], VaultInvalidRequestError),
    (412, [], VaultInvalidRequestError),
])
def test_status_table(status: int, errors: list[str], cls: type[VaultHTTPError]) -> None:
    exc = error_for_status(status, errors, retry_after=3.0)
    assert type(exc) is cls
    assert isinstance(exc, VaultError)
    assert exc.status == status
    assert exc.errors == errors
    assert exc.retry_after == 3.0
    assert str(exc).startswith(f"vault answered {status}")


def test_error_detail_flattens_vaults_multierror() -> None:
    exc = error_for_status(403, ["1 error occurred:\n\t* permission denied\n\n"])
    assert exc.detail == "1 error occurred: permission denied"
    assert "\n" not in str(exc)


def test_quote_path() -> None:
    assert quote_path("mcp/alice/a b?c#d%e") == "mcp/alice/a%20b%3Fc%23d%25e"
    assert quote_path("mcp.alice.k") == "mcp.alice.k"


def test_envelope() -> None:
    resp = VaultResponse.from_body(200, {"request_id": "r1", "data": {"a": 1}, "auth": None, "lease_duration": 5,
                                         "renewable": True, "warnings": ["w"], "wrap_info": None})
    assert (resp.data, resp.request_id, resp.lease_duration, resp.renewable, resp.warnings) == (
        {"a": 1}, "r1", 5, True, ("w",))
    empty = VaultResponse.from_body(204, None)
    assert empty.status == 204
    assert empty.data is None
    assert empty.warnings == ()


def test_no_repr_shows_a_token() -> None:
    """The auth block's and a wrapped answer's tokens are SecretStr: no repr, str or log line can show them."""
    resp = VaultResponse.from_body(200, {
        "auth": {"client_token": "s.SECRET-client-token", "accessor": "acc", "policies": ["p"], "lease_duration": 60,
                 "renewable": True, "token_type": "service"},
        "wrap_info": {"token": "s.SECRET-wrapping-token", "ttl": 120}})
    assert resp.auth is not None
    assert resp.wrap_info is not None
    assert resp.auth.client_token.get_secret_value() == "s.SECRET-client-token"
    assert resp.wrap_info.token.get_secret_value() == "s.SECRET-wrapping-token"
    assert (resp.auth.policies, resp.auth.lease_duration, resp.auth.token_type) == (("p",), 60, "service")
    for shown in (repr(resp), str(resp), repr(resp.auth), repr(resp.wrap_info)):
        assert "SECRET" not in shown


@pytest.fixture
async def fake_client(fake_vault: FakeVault) -> AsyncIterator[VaultClient]:
    async with VaultClient(fake_vault.addr, namespace="team1", timeout=2) as c:
        yield c


async def test_wire_format(fake_vault: FakeVault, fake_client: VaultClient) -> None:
    await fake_client.kv.write("secret", "mcp/alice/a b", {"pw": "x"}, token=fake_vault.root_token)
    req = fake_vault.calls("secret/")[-1]
    assert req.method == "POST"
    assert req.path == "secret/data/mcp/alice/a%20b"
    assert req.headers["X-Vault-Token"] == fake_vault.root_token
    assert req.headers["X-Vault-Namespace"] == "team1"
    assert req.headers["X-Vault-Request"] == "true"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"] == "vault-mcp-bridge"
    assert req.json == {"data": {"pw": "x"}}
    for r in fake_vault.requests:  # the token never travels in a URL
        assert fake_vault.root_token not in r.path
        assert fake_vault.root_token not in str(r.query)


async def test_per_call_token_and_no_token(fake_vault: FakeVault, fake_client: VaultClient) -> None:
    child = fake_vault.issue_token(policies=["x"])
    await fake_client.auth_token.lookup_self(token=child)
    assert fake_vault.requests[-1].token == child
    await fake_client.sys.health()
    assert "X-Vault-Token" not in fake_vault.requests[-1].headers


async def test_patch_sends_merge_patch(fake_vault: FakeVault, fake_client: VaultClient) -> None:
    await fake_client.kv.write("secret", "p", {"a": 1}, token=fake_vault.root_token)
    await fake_client.kv.patch("secret", "p", {"a": None, "b": 2}, token=fake_vault.root_token)
    req = fake_vault.calls("secret/", method="PATCH")[-1]
    assert req.headers["Content-Type"] == "application/merge-patch+json"


async def test_list_is_get_with_list_true(fake_vault: FakeVault, fake_client: VaultClient) -> None:
    root = fake_vault.root_token
    await fake_client.kv.write("secret", "mcp/alice/d/x", {"a": 1}, token=root)
    assert await fake_client.kv.list("secret", "mcp/alice/d/", token=root) == ["x"]
    req = fake_vault.requests[-1]
    assert (req.method, req.path, req.query) == ("GET", "secret/metadata/mcp/alice/d/", {"list": "true"})
    assert await fake_client.kv.list("secret", "mcp/alice/empty/", token=root) == []


async def test_caller_session_is_not_closed(fake_vault: FakeVault) -> None:
    async with aiohttp.ClientSession() as session:
        client = VaultClient(fake_vault.addr, session=session)
        await client.sys.health()
        await client.close()
        assert not session.closed
    owned = VaultClient(fake_vault.addr)
    await owned.sys.health()
    assert isinstance(owned.transport, AiohttpTransport)
    session_ref = owned.transport._session
    await owned.close()
    assert session_ref is not None
    assert session_ref.closed


@pytest.mark.integration
async def test_against_openbao(bao: DevVault) -> None:
    async with VaultClient(bao.addr) as c:
        me = await c.auth_token.lookup_self(token=bao.root_token)
        assert me.policies == ("root",)
        assert me.is_root
        health = await c.sys.health()
        assert health.sealed is False
        assert health.version
        with pytest.raises(VaultNotFoundError) as nf:
            await c.request("GET", "secret/data/does/not/exist", operation="t", token=bao.root_token)
        assert nf.value.errors == []
        with pytest.raises(VaultNotFoundError) as nomount:
            await c.request("GET", "nomount/foo", operation="t", token=bao.root_token)
        assert "no handler for route" in nomount.value.detail
        with pytest.raises(VaultPermissionDeniedError) as denied:
            await c.auth_token.lookup_self(token="s.not-a-token-000000000000")
        assert denied.value.errors == ["permission denied"]
        assert "s.not-a-token" not in str(denied.value)


# -- through an in-memory transport (no socket) --------------------------------------------------------------

async def test_an_in_memory_transport_drives_the_whole_client() -> None:
    """The Transport seam: envelope and typed results, the status table with Vault's Retry-After, one retry of a
    read after a dropped connection (never of a write), timeouts; the token only in its header."""
    drops = {"GET": 1, "POST": 1}

    def vault(request: MemoryRequest) -> RawAnswer:
        if request.path == "sys/health":
            raise TimeoutError
        if request.path.startswith("secret/data/gone"):
            return answer(404, {"errors": [], "data": {"metadata": {"version": 2, "deletion_time": "t",
                                                                     "destroyed": False}}})
        if request.path.startswith("secret/data/busy"):
            return answer(429, {"errors": ["quota"]}, retry_after="7")
        if drops.get(request.method):
            drops[request.method] -= 1
            raise ConnectionError("reset")
        return answer(200, {"request_id": "r", "data": {"data": {"pw": "x"}, "metadata": {"version": 3}}})

    transport = MemoryTransport(vault)
    async with VaultClient("http://vault.test", transport=transport, timeout=1, retry_backoff=0.001) as client:
        secret = await client.kv.read("secret", "mcp/alice/db", token="s.child")
        assert (secret.data, secret.metadata.version) == ({"pw": "x"}, 3)
        assert [r.method for r in transport.requests] == ["GET", "GET"]  # dropped once, retried once
        assert transport.requests[-1].token == "s.child"
        assert all("s.child" not in r.path and "s.child" not in str(r.query) for r in transport.requests)
        with pytest.raises(VaultConnectionError):
            await client.kv.write("secret", "mcp/alice/db", {"pw": "y"}, token="s.child")
        assert [r.method for r in transport.requests].count("POST") == 1  # a write is never retried
        with pytest.raises(VaultNotFoundError) as gone:
            await client.kv.read("secret", "gone", token="t")
        assert gone.value.version_meta is not None
        assert (gone.value.version_meta.version, gone.value.version_meta.deletion_time) == (2, "t")
        with pytest.raises(VaultRateLimitedError) as busy:
            await client.kv.read("secret", "busy", token="t")
        assert busy.value.retry_after == 7.0
        with pytest.raises(VaultTimeoutError):
            await client.sys.health()
    assert transport.closed


@pytest.mark.parametrize("raw", [
    b'{"data": {"n": 123456789012345678901234567890, "f": 1.5}}',  # a 30-digit integer: exact (stdlib)
    b'{"data": {"n": 1234567890123456, "v": "s"}}',  # exactly 16 digits
    b'{"data": {"n": 123456789012345, "t": "2026-12-01T19:37:09.123456789Z"}}',  # 15 digits: orjson
    b'{"data": {"v": "\xc3\xa9", "id": "0123456789abcdef0123456789"}}',
    b'{"data": {"x": NaN}}',  # orjson refuses it, the standard library reads it
    b'[1, 2, 3]',
])
def test_loads_reads_what_json_loads_reads(raw: bytes) -> None:
    """Vault's answers are parsed to the values ``json.loads`` gives, whichever parser the digit check picks."""
    import json
    import math

    from bridge.vault.client import _loads

    got, want = _loads(raw), json.loads(raw)
    if raw == b'{"data": {"x": NaN}}':
        assert math.isnan(got["data"]["x"])
    else:
        assert got == want
        assert json.dumps(got) == json.dumps(want)  # the same types too (an int stays an int)
