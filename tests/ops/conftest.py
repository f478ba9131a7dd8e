"""Fixtures for the operations tests: a bridge built with any setting overridden, served on a real port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.config import Settings

OpsClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def ops_client(aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
               make_settings: Callable[..., Settings]) -> OpsClient:
    """``await ops_client(audit_log=..., rate_limit_requests=...)``: a test client on 127.0.0.1."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(make_settings(**overrides)))

    return make
