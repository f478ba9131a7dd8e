"""Issue 10, "Done when": a fleet of 200 agents with 200 API keys shares two bridge replicas (real processes) and
one Redis, and runs a minute of mixed traffic (writes, reads, lists, Transit batches) at its limits.

Every agent runs one request at a time, alternating replicas, as fast as answers come, and after a 429 waits
exactly its ``Retry-After`` and sends the same request again. The assertions are about semantics, per agent,
never about throughput (the machine may be loaded):

- no 5xx, no broken connection;
- its own bucket and its own limit: ``RateLimit-Limit`` is the agent's burst on every answer; the first answer
  says ``burst - cost`` remaining (a full bucket); an agent never loses tokens it did not spend (what another
  agent does never shows in its numbers);
- exact headers: a request is refused only when the tokens left after its predecessor were fewer than its cost,
  ``Remaining`` moves by exactly the cost plus what refilled in between (bounded by the time that passed), a
  refusal's ``RateLimit-Reset`` equals its ``Retry-After``, and waiting ``Retry-After`` always suffices for the
  cost the bridge knew (a batch refused before its body was read, at cost 1, may then be refused for its items);
- the burst: every agent had its whole burst before its first refusal; and over the run no agent was admitted
  more than ``burst + rate * elapsed``.

The 200 keys live in one ``API_KEYS_FILE``; after the run a 201st key is appended to it and must work on both
replicas without a restart (the file is polled every second).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.devvault import DevVault
from tests.support.servers import BridgeProcess, RedisServer

pytestmark = pytest.mark.integration

AGENTS = 200
RUN_SECONDS = float(os.environ.get("FLEET_TEST_SECONDS", "60"))  # shorter only to debug the test itself
DEFAULT = {"requests": 60, "window_seconds": 60.0, "burst": 15}  # RATE_LIMIT_* of the replicas


def fleet_api_keys(count: int) -> dict[str, dict[str, Any]]:
    """The fleet's keys, written to its ``API_KEYS_FILE`` (one key per agent; some with a limit of their own)."""
    keys: dict[str, dict[str, Any]] = {}
    for i in range(count):
        entry: dict[str, Any] = {"agent": f"fleet-{i:03d}"}
        if i % 4 == 0:
            entry["rate_limit"] = {"requests": 30, "window_seconds": 60}  # bursts to its own 30
        elif i % 4 == 1:
            entry["rate_limit"] = {"requests": 90, "window_seconds": 60, "burst": 5}
        keys[f"fleet-{i:03d}-{secrets.token_hex(16)}"] = entry
    return keys


@dataclass(frozen=True)
class Answer:
    sent: float
    received: float
    status: int
    cost: int
    limit: int
    remaining: int
    reset: int
    retry_after: int | None
    code: str | None
    refused_cost: int  # a 429's "cost": 1 when refused before the body was read, the batch's items after
    retry_of_429: bool


@dataclass
class Agent:
    key: str
    name: str
    rate: float  # tokens per second
    burst: int
    answers: list[Answer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def agent_of(key: str, entry: dict[str, Any]) -> Agent:
    own = entry.get("rate_limit") or DEFAULT
    return Agent(key, entry["agent"], own["requests"] / float(own["window_seconds"]),
                 int(own.get("burst") or own["requests"]))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def drive(agent: Agent, session: aiohttp.ClientSession, replicas: list[str], deadline: float,
                seed: int) -> None:
    """One agent's minute: mixed operations, one at a time, alternating replicas; Retry-After honoured exactly."""
    rng = random.Random(seed)
    n = 0
    pending: tuple[str, str, Any, int] | None = None  # a refused request to send again
    while time.monotonic() < deadline:
        retry = pending is not None
        if pending is None:
            kind = rng.choice(("write", "read", "list", "transit"))
            slot = rng.randrange(4)
            if kind == "write":
                pending = ("PUT", f"/secrets/fleet/s{slot}", {"data": {"n": n, "by": agent.name}}, 1)
            elif kind == "read":
                pending = ("GET", f"/secrets/fleet/s{slot}", None, 1)
            elif kind == "list":
                pending = ("GET", "/secrets?prefix=fleet/", None, 1)
            else:
                items = rng.randint(1, min(5, agent.burst))
                pending = ("POST", "/transit/encrypt",
                           {"key": "k", "batch_input": [{"plaintext": b64(b"x" * i)} for i in range(items)]}, items)
        method, path, body, cost = pending
        url = replicas[n % len(replicas)] + path
        n += 1
        sent = time.monotonic()
        try:
            async with session.request(method, url, json=body, headers={"X-API-Key": agent.key}) as resp:
                payload = await resp.read()
                received = time.monotonic()
                status, headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            agent.failures.append(f"{method} {path}: {type(exc).__name__}")
            pending = None
            continue
        code, refused_cost = None, 0
        if status >= 400:
            try:
                error = json.loads(payload)["error"]
                code, refused_cost = error["code"], int(error.get("cost", 0))
            except (ValueError, KeyError, TypeError):
                code = "<not json>"
        if status >= 500 or status not in (200, 404, 429):
            agent.failures.append(f"{method} {path}: {status} {code}")
        try:
            answer = Answer(sent, received, status, cost, int(headers["RateLimit-Limit"]),
                            int(headers["RateLimit-Remaining"]), int(headers["RateLimit-Reset"]),
                            int(headers["Retry-After"]) if "Retry-After" in headers else None, code, refused_cost,
                            retry)
        except (KeyError, ValueError):
            agent.failures.append(f"{method} {path}: {status} without RateLimit headers")
            pending = None
            continue
        agent.answers.append(answer)
        if status == 429 and answer.retry_after is not None:
            await asyncio.sleep(answer.retry_after)  # exactly what the bridge said; then the same request again
        else:
            pending = None


def check(agent: Agent) -> list[str]:
    """Every semantic assertion about one agent's answers (returned, so that one report names every agent)."""
    problems = list(agent.failures)
    answers = agent.answers
    if not answers:
        return [*problems, "no answer at all"]
    first = answers[0]
    if first.status == 429 or first.remaining != agent.burst - first.cost:
        problems.append(f"first answer {first.status} remaining {first.remaining}: not a full bucket of "
                        f"{agent.burst}")
    admitted = 0
    refused_yet = False
    for i, a in enumerate(answers):
        if a.limit != agent.burst:
            problems.append(f"#{i}: RateLimit-Limit {a.limit}, its burst is {agent.burst}")
        if a.status == 429:
            if a.code != "rate_limited" or a.retry_after is None or a.retry_after < 1:
                problems.append(f"#{i}: 429 {a.code} Retry-After {a.retry_after}")
            if a.refused_cost not in (1, a.cost):
                problems.append(f"#{i}: refused at cost {a.refused_cost}, the request costs {a.cost}")
            if a.reset != a.retry_after:
                problems.append(f"#{i}: RateLimit-Reset {a.reset} != Retry-After {a.retry_after}")
            if a.remaining >= a.cost:
                problems.append(f"#{i}: refused with {a.remaining} tokens for a cost of {a.cost}")
            if not refused_yet and admitted < agent.burst - a.cost + 1:
                problems.append(f"#{i}: first refusal after only {admitted} of a burst of {agent.burst}")
            refused_yet = True
        else:
            admitted += a.cost
            if a.retry_after is not None:
                problems.append(f"#{i}: Retry-After on a {a.status}")
        if i == 0:
            continue
        prev = answers[i - 1]
        refill = agent.rate * (a.received - prev.sent) + 1  # the most that can have come back, plus floor()
        if a.status == 429:
            if a.retry_of_429 and a.refused_cost <= prev.refused_cost:
                # waiting Retry-After always suffices for what the bridge knew; only a batch refused before its
                # body was read (cost 1 then) can be refused again, for its items, with their own Retry-After
                problems.append(f"#{i}: refused again (cost {a.refused_cost}) after waiting Retry-After "
                                f"{prev.retry_after} (cost {prev.refused_cost})")
            if prev.remaining >= a.cost:  # tokens after the previous answer covered it: must pass
                problems.append(f"#{i}: refused though {prev.remaining} tokens were left for cost {a.cost}")
            if not prev.remaining <= a.remaining < prev.remaining + refill:
                problems.append(f"#{i}: {a.remaining} tokens after {prev.remaining} (+{refill:.1f} at most)")
        else:
            low = prev.remaining - a.cost
            if not low <= a.remaining < min(agent.burst - a.cost + 1, low + refill):
                problems.append(f"#{i}: {a.remaining} left after {prev.remaining} - cost {a.cost} "
                                f"(+{refill:.1f} at most)")
    elapsed = answers[-1].received - answers[0].sent
    if admitted > agent.burst + agent.rate * elapsed + 1:
        problems.append(f"admitted {admitted} in {elapsed:.1f}s: more than the bucket allows")
    return [f"{agent.name}: {p}" for p in problems]


async def test_a_fleet_of_200_agents_on_two_replicas_and_redis(
        redis_server: RedisServer, spawn_bridge: Callable[..., BridgeProcess], bao: DevVault,
        tmp_path: Path) -> None:
    keys = fleet_api_keys(AGENTS)
    key_file = tmp_path / "api-keys.json"
    key_file.write_text(json.dumps(keys), encoding="utf-8")
    env = {
        "VAULT_ADDR": bao.addr, "VAULT_TOKEN": bao.root_token,
        "API_KEYS_FILE": str(key_file),
        "RATE_LIMIT_BACKEND": "redis", "REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": f"fleet-{time.time_ns()}:",
        "RATE_LIMIT_REQUESTS": str(DEFAULT["requests"]),
        "RATE_LIMIT_WINDOW_SECONDS": str(DEFAULT["window_seconds"]),
        "RATE_LIMIT_BURST": str(DEFAULT["burst"]),
        "REDIS_TIMEOUT": "5s",  # a loaded machine must not turn into fail-open answers
        "RATE_LIMIT_FAIL_MODE": "closed",  # ... and if Redis did fail, it would show as 503s
    }
    one, two = await asyncio.gather(asyncio.to_thread(spawn_bridge, env), asyncio.to_thread(spawn_bridge, env))
    agents = [agent_of(key, entry) for key, entry in keys.items()]
    connector = aiohttp.TCPConnector(limit=AGENTS * 2)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        deadline = time.monotonic() + RUN_SECONDS
        await asyncio.gather(*(drive(a, session, [one.url, two.url][::(1 if i % 2 else -1)], deadline, seed=i)
                               for i, a in enumerate(agents)))
    problems = [p for a in agents for p in check(a)]
    total = sum(len(a.answers) for a in agents)
    refused = sum(1 for a in agents for x in a.answers if x.status == 429)
    print(f"fleet: {total} answers, {refused} refused, "
          f"{sum(1 for a in agents if any(x.status == 429 for x in a.answers))} agents at their limit")
    if problems and os.environ.get("FLEET_DEBUG"):
        bad = next(a for a in agents if check(a))
        for x in bad.answers[:40]:
            print(bad.name, round(x.sent % 1000, 3), round(x.received % 1000, 3), x.status, x.cost, x.remaining,
                  x.reset, x.retry_after, x.refused_cost, x.retry_of_429)
    assert not problems, "\n".join(problems[:40])
    assert refused > 0  # the fleet did run at its limits
    assert all(a.answers for a in agents)

    # A key added to the file works on both replicas without a restart.
    newcomer = f"fleet-new-{secrets.token_hex(16)}"
    key_file.write_text(json.dumps({**keys, newcomer: {"agent": "fleet-new"}}), encoding="utf-8")
    async with aiohttp.ClientSession(timeout=timeout) as session:
        waited = await asyncio.gather(*(until_accepted(session, url, newcomer) for url in (one.url, two.url)))
    print(f"fleet: the added key worked after {max(waited):.2f}s")


async def until_accepted(session: aiohttp.ClientSession, url: str, key: str) -> float:
    """Seconds until ``key`` is accepted at ``url`` (polled every 0.1 s; the bridge polls the file every second,
    so this is about 1 s; 20 s only bounds a badly loaded machine)."""
    started = time.monotonic()
    while True:
        async with session.get(f"{url}/whoami", headers={"X-API-Key": key}) as resp:
            if resp.status == 200:
                assert (await resp.json())["subject"] == "fleet-new"
                return time.monotonic() - started
            assert resp.status == 401, resp.status
        assert time.monotonic() - started < 20, "the key added to API_KEYS_FILE was never accepted"
        await asyncio.sleep(0.1)
