"""The broker's place in the app: ``app.cleanup_ctx.append(broker_ctx)`` makes ``app[BROKER]`` at start-up (its
outbound session) and closes it at shutdown. Settings: ``BROKER_TIMEOUT``, ``BROKER_MAX_RESPONSE_BYTES``,
``BROKER_MAX_REQUEST_BYTES``, ``BROKER_CACERT``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from bridge.broker.broker import Broker
from bridge.keys import BROKER, SETTINGS


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    broker = app.get(BROKER) or Broker.from_settings(app[SETTINGS])  # a test may put its own (fake DNS) first
    app[BROKER] = broker
    await broker.start()
    try:
        yield
    finally:
        await broker.close()


__all__ = ["broker_ctx"]
