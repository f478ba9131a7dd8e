"""The circuit breaker as a pure state machine (fake clock), and its hook in the Vault client."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.errors import from_vault_error
from bridge.vault.breaker import CircuitBreaker, CircuitOpenError, counts_as_failure, retry_after_header
from bridge.vault.client import VaultClient
from bridge.vault.errors import (
    VaultConnectionError,
    VaultNotFoundError,
    VaultPermissionDeniedError,
    VaultSealedError,
    VaultTimeoutError,
    VaultUnavailableError,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> str:
    return breaker.state  # read through a function: mypy would narrow the property across calls


def make(threshold: int = 3, cooldown: float = 2.0) -> tuple[CircuitBreaker, Clock, list[tuple[str, str]]]:
    clock = Clock()
    changes: list[tuple[str, str]] = []
    breaker = CircuitBreaker(threshold, cooldown, clock=clock, on_change=lambda a, b: changes.append((a, b)))
    return breaker, clock, changes


def test_opens_after_threshold_consecutive_failures() -> None:
    b, clock, changes = make()
    for _ in range(2):
        assert b.before_call() is False
        b.on_failure()
    assert state(b) == "closed"
    b.on_success()  # a success resets the count
    for _ in range(2):
        b.before_call()
        b.on_failure()
    assert state(b) == "closed"
    b.before_call()
    b.on_failure()
    assert state(b) == "open"
    assert changes == [("closed", "open")]
    with pytest.raises(CircuitOpenError) as info:
        b.before_call()
    assert info.value.retry_after == pytest.approx(2.0)
    clock.now += 1.5
    with pytest.raises(CircuitOpenError) as info:
        b.before_call()
    assert info.value.retry_after == pytest.approx(0.5)
    assert retry_after_header(info.value.retry_after) == "1"


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    b, clock, changes = make()
    for _ in range(3):
        b.before_call()
        b.on_failure()
    clock.now += 2.0
    assert state(b) == "half_open"
    assert b.before_call() is True  # the probe
    with pytest.raises(CircuitOpenError):
        b.before_call()  # everyone else still fails fast while the probe is out
    b.on_success(probe=True)
    assert state(b) == "closed"
    assert b.before_call() is False
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_failed_probe_reopens_for_another_cooldown() -> None:
    b, clock, _ = make()
    for _ in range(3):
        b.before_call()
        b.on_failure()
    clock.now += 2.5
    assert b.before_call() is True
    b.on_failure(probe=True)
    assert state(b) == "open"
    assert b.retry_after() == pytest.approx(2.0)
    clock.now += 2.0
    assert b.before_call() is True  # next probe


def test_cancelled_probe_frees_the_slot() -> None:
    b, clock, _ = make()
    for _ in range(3):
        b.before_call()
        b.on_failure()
    clock.now += 2.0
    assert b.before_call() is True
    b.record(asyncio.CancelledError(), probe=True)
    assert state(b) == "half_open"
    assert b.before_call() is True


def test_disabled_breaker_never_opens() -> None:
    b, _, _ = make(threshold=0)
    for _ in range(100):
        assert b.before_call() is False
        b.on_failure()
    assert state(b) == "closed"


def test_what_counts_as_an_outage() -> None:
    assert counts_as_failure(VaultConnectionError("x"))
    assert counts_as_failure(VaultTimeoutError("x"))
    assert counts_as_failure(VaultUnavailableError(503, ["standby"]))
    assert not counts_as_failure(VaultSealedError(503, ["Vault is sealed"]))  # answers fast with its own 503
    assert not counts_as_failure(VaultNotFoundError(404, []))
    assert not counts_as_failure(VaultPermissionDeniedError(403, ["permission denied"]))
    assert not counts_as_failure(CircuitOpenError(1.0))


def test_slow_answers_to_expensive_calls_are_not_outages() -> None:
    """A Transit call's cost is the agent's choice: its timeout (or a gateway's 504) says nothing about Vault."""
    for slow in (VaultTimeoutError("x"), VaultUnavailableError(504, [])):
        assert counts_as_failure(slow)
        assert not counts_as_failure(slow, expensive=True)
    # still outages, whatever the call: no connection, a standby, a proxy's 502/503
    for down in (VaultConnectionError("x"), VaultUnavailableError(503, ["standby"]), VaultUnavailableError(502, [])):
        assert counts_as_failure(down, expensive=True)


def test_a_slow_expensive_probe_learns_nothing() -> None:
    b, clock, _ = make()
    for _ in range(3):
        b.before_call()
        b.on_failure()
    clock.now += 2.0
    assert b.before_call() is True
    b.record(VaultTimeoutError("x"), probe=True, expensive=True)
    assert state(b) == "half_open"  # neither closed nor re-opened: the next call probes again
    assert b.before_call() is True
    b.record(None, probe=True)
    assert state(b) == "closed"
    for _ in range(10):  # closed: a run of slow expensive calls never opens it
        b.before_call()
        b.record(VaultTimeoutError("x"), expensive=True)
    assert state(b) == "closed"


def test_open_circuit_renders_503_with_retry_after() -> None:
    err = from_vault_error(CircuitOpenError(1.2))
    assert (err.status, err.code, err.headers["Retry-After"]) == (503, "vault_unavailable", "2")


async def test_client_fails_fast_when_open_and_probes_after_cooldown() -> None:
    """Against a fake Vault that refuses connections, then comes back."""
    hits: list[str] = []

    async def read(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"data": {"data": {"k": "v"}, "metadata": {"version": 1}}})

    fake = web.Application()
    fake.router.add_get("/v1/{tail:.*}", read)
    server = TestServer(fake, host="127.0.0.1")
    await server.start_server()
    port = server.port
    await server.close()  # nothing listens now: connection refused

    clock = Clock()
    breaker = CircuitBreaker(2, 5.0, clock=clock)
    async with VaultClient(f"http://127.0.0.1:{port}", timeout=2, breaker=breaker, retry_backoff=0.001) as client:
        with pytest.raises(VaultConnectionError):
            await client.kv.read("secret", "a", token="t")  # GET: two attempts, two failures: open
        assert state(breaker) == "open"
        with pytest.raises(CircuitOpenError):
            await client.kv.read("secret", "a", token="t")
        server2 = TestServer(fake, host="127.0.0.1", port=port)
        await server2.start_server()
        try:
            with pytest.raises(CircuitOpenError):
                await client.kv.read("secret", "a", token="t")  # still cooling down: Vault is not asked
            assert hits == []
            clock.now += 5.0
            out = await client.kv.read("secret", "a", token="t")  # the probe succeeds and closes it
            assert out.data == {"k": "v"}
            assert state(breaker) == "closed"
            assert len(hits) == 1
        finally:
            await server2.close()
