"""The executor on its own, without aiohttp (as the stdio transport will call it): scope first, then the input,
the cost charged against the rate limit, the service method, one audit record per call and the observer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from bridge.audit import AuditLog
from bridge.auth.identity import Identity
from bridge.errors import BridgeError, NotFoundError
from bridge.operations import Call, Executor, Operation, Registry
from bridge.ratelimit import MemoryRateLimiter, Quota

ALICE = Identity("alice", "api_key", frozenset({"read", "write"}))
READER = Identity("alice", "api_key", frozenset({"read"}))


class CountArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    items: list[int] = Field(default_factory=list, max_length=10)


class CountOut(BaseModel):
    name: str
    version: int


class Counter:
    def __init__(self, access: Any) -> None:
        self.calls: list[tuple[str, str]] = []

    def cost(self, args: CountArgs) -> int:
        return max(1, len(args.items))

    async def count(self, identity: Identity, args: CountArgs) -> CountOut:
        self.calls.append((identity.subject, args.name))
        if args.name == "missing":
            raise NotFoundError("No such thing.")
        return CountOut(name=args.name, version=len(args.items))

    async def closed(self, identity: Identity) -> bool:
        return identity.subject != "mallory"


COUNT = Operation(name="count", scope="write", input=CountArgs, output=CountOut, service=Counter, run=Counter.count,
                  cost=Counter.cost, available=Counter.closed, title="Count", summary="Count.", description="Count.",
                  audit=("name", "items"), mcp=False)


def executor(tmp_path: Path, *, limiter: MemoryRateLimiter | None = None) -> tuple[Executor, Counter, list[Any]]:
    service = Counter(None)
    seen: list[Any] = []
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    audit.open()
    run = Executor(Registry([COUNT]), {Counter: service}, audit=audit, limiter=limiter,
                   observe=lambda *outcome: seen.append(outcome))
    return run, service, seen


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


async def test_a_call_runs_the_service_method_and_is_recorded(tmp_path: Path) -> None:
    run, service, seen = executor(tmp_path)
    out = await run.execute(COUNT, Call(ALICE, "stdio"), {"name": "a", "items": [1, 2]})
    assert out == CountOut(name="a", version=2)
    assert service.calls == [("alice", "a")]
    assert seen == [("count", "stdio", "ok")]
    [record] = records(tmp_path)
    assert {k: record[k] for k in ("agent", "operation", "name", "items", "version", "outcome")} == {
        "agent": "alice", "operation": "count", "name": "a", "items": [1, 2], "version": 2, "outcome": "ok"}


async def test_scope_input_and_errors_are_refused_in_that_order(tmp_path: Path) -> None:
    run, service, seen = executor(tmp_path)
    loaded: list[bool] = []

    async def arguments() -> dict[str, Any]:
        loaded.append(True)
        return {"name": "b"}

    with pytest.raises(BridgeError) as scope:
        await run.execute(COUNT, Call(READER, "stdio"), arguments)
    assert (scope.value.status, scope.value.code, scope.value.extra) == (403, "forbidden", {"required_scope": "write"})
    assert loaded == []  # the arguments are not read for a caller without the scope
    with pytest.raises(BridgeError) as mcp_scope:
        await run.execute(COUNT, Call(READER, "mcp"), {"name": "b"})
    assert mcp_scope.value.code == "insufficient_scope"
    with pytest.raises(BridgeError) as closed:
        await run.execute(COUNT, Call(Identity("mallory", "jwt", frozenset({"write"})), "stdio"), {"name": "b"})
    assert closed.value.status == 403  # the operation's ``available`` hook
    with pytest.raises(BridgeError) as invalid:
        await run.execute(COUNT, Call(ALICE, "stdio"), {"name": 1})
    assert invalid.value.code == "invalid_request"
    with pytest.raises(NotFoundError):
        await run.execute(COUNT, Call(ALICE, "stdio"), {"name": "missing"})
    assert service.calls == [("alice", "missing")]
    assert [r["code"] for r in records(tmp_path)] == ["forbidden", "insufficient_scope", "forbidden",
                                                      "invalid_request", "not_found"]
    assert [r["outcome"] for r in records(tmp_path)] == ["denied", "denied", "denied", "denied", "error"]
    assert [r.get("name") for r in records(tmp_path)] == [None, "b", "b", 1, "missing"]  # raw or validated
    assert [outcome for _, _, outcome in seen] == ["forbidden", "insufficient_scope", "forbidden", "invalid_request",
                                                   "not_found"]


async def test_the_cost_is_charged_beyond_what_the_transport_prepaid(tmp_path: Path) -> None:
    limiter = MemoryRateLimiter(Quota(requests=5, window=60.0, burst=5))
    run, _, _ = executor(tmp_path, limiter=limiter)
    call = Call(ALICE, "stdio")  # no middleware charged anything: the whole cost
    await run.execute(COUNT, call, {"name": "a", "items": [1, 2, 3]})
    assert call.decision is not None
    assert call.decision.remaining == 2
    call = Call(ALICE, "rest", prepaid=1, decision=call.decision)  # the middleware charged 1 of 2
    await run.execute(COUNT, call, {"name": "a", "items": [1, 2]})
    assert call.decision is not None
    assert call.decision.remaining == 1
    with pytest.raises(BridgeError) as refused:
        await run.execute(COUNT, Call(ALICE, "stdio"), {"name": "a", "items": [1, 2]})
    assert (refused.value.status, refused.value.extra["cost"]) == (429, 2)
    with pytest.raises(BridgeError) as too_big:
        await run.execute(COUNT, Call(ALICE, "stdio"), {"name": "a", "items": list(range(6))})
    assert too_big.value.code == "batch_too_large"  # more than the whole burst: never passes
