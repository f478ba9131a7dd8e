"""Billing a request against its agent's rate-limit bucket (GCRA, :mod:`bridge.ratelimit`).

``rate_limit_middleware`` (:mod:`bridge.middlewares`) charges 1 token before the body is read; a handler that
learns the request's whole cost from its body (a Transit batch of N items costs N) bills the rest with
:func:`charge`, through the same limiter API, before Vault is called.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from bridge.auth.identity import Identity
from bridge.errors import InvalidRequestError, RateLimitedError
from bridge.keys import IDENTITY, LIMITER, RATE_DECISION, SETTINGS
from bridge.ratelimit import Decision, Quota

log = structlog.get_logger("bridge.access")


def bucket(identity: Identity, default: Quota) -> tuple[str, Quota]:
    """The identity's bucket and quota. One bucket per agent and limit: an agent's keys without a ``rate_limit``
    share the default one; a key with its own limit has a bucket for that limit (one key's spending never turns
    into another limit's debt)."""
    own = identity.rate_limit
    if own is None:
        return identity.subject, default
    return f"{identity.subject}#{own.requests}/{own.window:g}/{own.burst}", own


def rate_limited(request: web.Request, quota: Quota, decision: Decision, cost: int) -> RateLimitedError:
    identity = request[IDENTITY]
    log.info("ratelimit.rejected", agent=identity.subject, cost=cost, remaining=decision.remaining)
    what = "request" if cost == 1 else f"request (cost {cost})"
    return RateLimitedError(
        f"Rate limit exceeded for this {what}: {quota.requests} requests per {quota.window:g}s, in bursts of at "
        f"most {quota.burst}; retry after the Retry-After seconds.", headers=decision.headers(),
        extra={"cost": cost})  # the cost known when refused: 1 before the body is read, a batch's items after


async def charge(request: web.Request, cost: int) -> None:
    """Bill a request whose cost is ``cost`` tokens in all (known once its body is parsed, before Vault is
    called): the middleware charged 1, this charges the other ``cost - 1``, in one step through the same limiter
    API. A cost larger than the whole bucket can never pass and is 400 ``batch_too_large``; a refusal is 429 like
    the middleware's, and costs nothing (the middleware's token is given back)."""
    identity = request.get(IDENTITY)
    if cost <= 1 or identity is None or not request.app[SETTINGS].rate_limit_enabled:
        return
    limiter = request.app[LIMITER]
    key, quota = bucket(identity, limiter.default)
    if cost > quota.burst:
        raise InvalidRequestError(
            f"This request costs {cost} (one per batch item), more than this identity's whole rate-limit burst "
            f"of {quota.burst}; send at most {quota.burst} items per request.", code="batch_too_large",
            extra={"max_items": quota.burst})
    decision = await limiter.hit(key, quota, cost - 1)
    if not decision.allowed:
        # A refusal consumes nothing: give back the middleware's token. Then the answer is this whole request's:
        # Retry-After (the time until cost - 1 more tokens after that one) is the time until all cost fit.
        await limiter.hit(key, quota, -1)
        whole = Decision(False, decision.limit, min(decision.limit, decision.remaining + 1),
                         max(0.0, decision.reset_after - quota.interval), decision.retry_after)
        raise rate_limited(request, quota, whole, cost)
    request[RATE_DECISION] = decision
