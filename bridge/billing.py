"""Billing a request against its agent's rate-limit bucket (GCRA, :mod:`bridge.ratelimit`).

The rate-limit middleware charges 1 token before a request's body is read; an operation whose whole cost is
known only once its input is parsed (a Transit batch of N items costs N) is charged the rest by the executor
(:mod:`bridge.operations.pipeline`), through the same limiter, before Vault is called. Neither imports aiohttp.
"""

from __future__ import annotations

import structlog

from bridge.auth.identity import Identity
from bridge.errors import InvalidRequestError, RateLimitedError
from bridge.ratelimit import Decision, Quota, RateLimiter

log = structlog.get_logger("bridge.access")


def bucket(identity: Identity, default: Quota) -> tuple[str, Quota]:
    """The identity's bucket and quota. One bucket per agent and limit: an agent's keys without a ``rate_limit``
    share the default one; a key with its own limit has a bucket for that limit (one key's spending never turns
    into another limit's debt)."""
    own = identity.rate_limit
    if own is None:
        return identity.subject, default
    return f"{identity.subject}#{own.requests}/{own.window:g}/{own.burst}", own


def rate_limited(identity: Identity, quota: Quota, decision: Decision, cost: int) -> RateLimitedError:
    log.info("ratelimit.rejected", agent=identity.subject, cost=cost, remaining=decision.remaining)
    what = "request" if cost == 1 else f"request (cost {cost})"
    return RateLimitedError(
        f"Rate limit exceeded for this {what}: {quota.requests} requests per {quota.window:g}s, in bursts of at "
        f"most {quota.burst}; retry after the Retry-After seconds.", headers=decision.headers(),
        extra={"cost": cost})  # the cost known when refused: 1 before the body is read, a batch's items after


async def charge(limiter: RateLimiter, identity: Identity, cost: int, prepaid: int) -> Decision:
    """Bill a request whose cost is ``cost`` tokens in all, of which ``prepaid`` were charged already (by the
    middleware): the other ``cost - prepaid`` in one step. A cost larger than the whole bucket can never pass and
    is 400 ``batch_too_large``; a refusal is 429 like the middleware's and costs nothing (the prepaid tokens are
    given back), and its ``Retry-After`` is the time until the whole cost fits."""
    key, quota = bucket(identity, limiter.default)
    if cost > quota.burst:
        raise InvalidRequestError(
            f"This request costs {cost} (one per batch item), more than this identity's whole rate-limit burst "
            f"of {quota.burst}; send at most {quota.burst} items per request.", code="batch_too_large",
            extra={"max_items": quota.burst})
    decision = await limiter.hit(key, quota, cost - prepaid)
    if not decision.allowed:
        if prepaid:
            await limiter.hit(key, quota, -prepaid)
        whole = Decision(False, decision.limit, min(decision.limit, decision.remaining + prepaid),
                         max(0.0, decision.reset_after - prepaid * quota.interval), decision.retry_after)
        raise rate_limited(identity, quota, whole, cost)
    return decision
