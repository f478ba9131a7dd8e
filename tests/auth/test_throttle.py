"""Failed authentication is throttled per source address (``AUTH_FAILURE_LIMIT``, default 30 per minute, then
429 with ``Retry-After``), with bounded memory. Through nginx: tests/test_nginx.py."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from tests.auth.conftest import MakeClient, hs256
from tests.auth.test_mtls import MTLS_ENV
from tests.conftest import API_KEY_ALICE
from tests.support.pki import PROXY_SECRET

WRONG = {"X-API-Key": "wrong-key-" + "w" * 20}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_one_failure_per_interval() -> None:
    from bridge.auth.throttle import AuthFailureThrottle

    clock = Clock()
    throttle = AuthFailureThrottle(30, 60.0, clock=clock)
    for _ in range(30):
        assert throttle.retry_after("10.0.0.1") is None
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 2  # one more every 60/30 s
    assert throttle.retry_after("10.0.0.2") is None  # others are not affected
    clock.now += 1.5
    assert throttle.retry_after("10.0.0.1") == 1
    clock.now += 0.5
    assert throttle.retry_after("10.0.0.1") is None
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 2
    clock.now += 61
    assert throttle.retry_after("10.0.0.1") is None
    assert len(throttle) == 0  # a refilled source is forgotten


def test_memory_is_bounded() -> None:
    from bridge.auth.throttle import AuthFailureThrottle

    throttle = AuthFailureThrottle(2, 60.0, max_sources=100, clock=Clock())
    for i in range(10_000):
        throttle.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(throttle) == 100
    throttle.failed("192.0.2.1")
    throttle.failed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") is not None  # the newest stay tracked


@pytest.mark.parametrize(("address", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # a host picks any address of its /64
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_source_key(address: str, key: str) -> None:
    from bridge.auth.throttle import source_key

    assert source_key(address) == key


async def get(client: TestClient[Any, Any], headers: dict[str, str] | None = None,
              path: str = "/whoami") -> tuple[int, dict[str, str]]:
    resp = await client.get(path, headers=headers or {})
    return resp.status, dict(resp.headers)


async def test_failed_logins_from_one_address_get_429(make_client: MakeClient) -> None:
    client = await make_client(env={"AUTH_FAILURE_LIMIT": "5"})
    with capture_logs() as logs:
        statuses = [(await get(client, WRONG))[0] for _ in range(5)]
        status, headers = await get(client, WRONG)
    assert statuses == [401] * 5
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 12
    assert [e["event"] for e in logs if e["event"].startswith("auth.failures")] == ["auth.failures.throttled"]
    resp = await client.get("/whoami", headers={"X-API-Key": API_KEY_ALICE})  # a guess can no longer be confirmed
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "too_many_auth_failures"
    assert (await get(client, path="/healthz"))[0] == 200  # public routes are not throttled


async def test_default_limit_is_30_per_minute(make_client: MakeClient) -> None:
    client = await make_client()
    bad_jwt = {"Authorization": "Bearer " + hs256({"sub": "alice"}, secret="not-the-secret-" + "x" * 32)}
    statuses = [(await get(client, bad_jwt if i % 2 else WRONG))[0] for i in range(31)]
    assert statuses == [401] * 30 + [429]


async def test_requests_without_a_credential_do_not_count(make_client: MakeClient) -> None:
    client = await make_client(env={"AUTH_FAILURE_LIMIT": "2"})
    assert [(await get(client))[0] for _ in range(10)] == [401] * 10
    assert (await get(client, {"X-API-Key": API_KEY_ALICE}))[0] == 200


async def test_zero_turns_it_off(make_client: MakeClient) -> None:
    client = await make_client(env={"AUTH_FAILURE_LIMIT": "0"})
    assert {(await get(client, WRONG))[0] for _ in range(40)} == {401}


@pytest.mark.parametrize("header_identity", ["true", "false"])
async def test_forwarded_for_is_believed_only_from_the_proven_proxy(make_client: MakeClient,
                                                                    header_identity: str) -> None:
    """With the proxy secret, failures count for the client address the proxy appended to X-Forwarded-For;
    without it X-Forwarded-For is the client's own claim and the direct peer is counted. The proxy is known by
    MTLS_TRUSTED_PROXIES and MTLS_PROXY_SECRET, with or without header identity (a plain load balancer)."""
    client = await make_client(env={**MTLS_ENV, "AUTH_MTLS_ENABLED": header_identity, "AUTH_FAILURE_LIMIT": "2"})
    proxy = {"X-Proxy-Secret": PROXY_SECRET}
    for _ in range(2):
        assert (await get(client, {**WRONG, **proxy, "X-Forwarded-For": "198.51.100.1, 192.0.2.10"}))[0] == 401
    assert (await get(client, {**WRONG, **proxy, "X-Forwarded-For": "192.0.2.10"}))[0] == 429
    assert (await get(client, {**WRONG, **proxy, "X-Forwarded-For": "192.0.2.11"}))[0] == 401
    # no secret: the forwarded address is not believed, every attempt counts against 127.0.0.1
    statuses = [(await get(client, {**WRONG, "X-Forwarded-For": f"192.0.2.{20 + i}"}))[0] for i in range(3)]
    assert statuses == [401, 401, 429]
