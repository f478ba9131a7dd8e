"""Small, bounded, in-memory request statistics for the status page (``GET /status``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.errors import code_for_status


@dataclass(slots=True)
class _AgentCount:
    requests: int = 0
    rejections: int = 0
    errors: int = 0


@dataclass(slots=True)
class _Minute:
    minute: int
    requests: int = 0
    errors: int = 0
    rejections: int = 0
    agents: dict[str, _AgentCount] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentRow:
    agent: str
    requests: int
    rejections: int
    errors: int
    last_seen: float


@dataclass(frozen=True, slots=True)
class ErrorRow:
    at: float
    status: int
    code: str
    request_id: str
    route: str


@dataclass(frozen=True, slots=True)
class MinuteRow:
    minute_start: float
    requests: int
    errors: int
    rejections: int


OTHER_AGENTS = "(other)"


class OpsStats:
    """Small, bounded, in-memory request statistics for the status page.

    Per-minute buckets for the last ``minutes`` minutes (requests, errors, rate-limit rejections, and per
    agent), the last-seen time of at most ``max_agents`` agents, and the last ``max_errors`` errors (status,
    code, route template and request id only). Agents beyond ``max_agents`` in a minute count as ``(other)``.
    """

    def __init__(self, *, minutes: int = 30, max_agents: int = 500, max_errors: int = 50,
                 clock: Callable[[], float] = time.time) -> None:
        self.minutes = minutes
        self.max_agents = max_agents
        self._clock = clock
        self._buckets: deque[_Minute] = deque(maxlen=minutes)
        self._last_seen: dict[str, float] = {}
        self._errors: deque[ErrorRow] = deque(maxlen=max_errors)
        self.total = 0

    def _bucket(self, now: float) -> _Minute:
        minute = int(now // 60)
        if not self._buckets or self._buckets[-1].minute != minute:
            self._buckets.append(_Minute(minute))
        return self._buckets[-1]

    def record(self, *, agent: str, status: int, code: str, request_id: str, route: str) -> None:
        now = self._clock()
        bucket = self._bucket(now)
        self.total += 1
        bucket.requests += 1
        rejected = code == "rate_limited"
        failed = status >= 400
        bucket.rejections += rejected
        bucket.errors += failed
        if agent:
            key = agent if (agent in bucket.agents or len(bucket.agents) < self.max_agents) else OTHER_AGENTS
            count = bucket.agents.setdefault(key, _AgentCount())
            count.requests += 1
            count.rejections += rejected
            count.errors += failed
            if agent not in self._last_seen and len(self._last_seen) >= self.max_agents:
                del self._last_seen[min(self._last_seen, key=self._last_seen.__getitem__)]
            self._last_seen[agent] = now
        if failed:
            self._errors.append(ErrorRow(now, status, code or code_for_status(status), request_id, route))

    def per_minute(self) -> list[MinuteRow]:
        """One row per minute of the window, oldest first, zeros where nothing happened."""
        current = int(self._clock() // 60)
        by_minute = {b.minute: b for b in self._buckets}
        rows = []
        for minute in range(current - self.minutes + 1, current + 1):
            b = by_minute.get(minute)
            rows.append(MinuteRow(minute * 60.0, b.requests if b else 0, b.errors if b else 0,
                                  b.rejections if b else 0))
        return rows

    def agents(self) -> list[AgentRow]:
        """Agents active in the window, busiest first."""
        horizon = int(self._clock() // 60) - self.minutes
        totals: dict[str, _AgentCount] = {}
        for b in self._buckets:
            if b.minute <= horizon:
                continue
            for agent, c in b.agents.items():
                t = totals.setdefault(agent, _AgentCount())
                t.requests += c.requests
                t.rejections += c.rejections
                t.errors += c.errors
        rows = [AgentRow(a, c.requests, c.rejections, c.errors, self._last_seen.get(a, 0.0))
                for a, c in totals.items()]
        return sorted(rows, key=lambda r: (-r.requests, r.agent))

    def recent_errors(self) -> list[ErrorRow]:
        """Most recent first."""
        return list(reversed(self._errors))
