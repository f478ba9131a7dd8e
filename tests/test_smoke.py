"""End-to-end smoke test: write and read a secret through the bridge against the real OpenBao."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import API_KEY_ALICE

pytestmark = pytest.mark.integration


async def test_write_then_read(bridge_client: TestClient[Any, Any]) -> None:
    headers = {"X-API-Key": API_KEY_ALICE}
    resp = await bridge_client.put("/secrets/smoke/db", json={"data": {"pw": "x"}}, headers=headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["version"] >= 1
    resp = await bridge_client.get("/secrets/smoke/db", headers=headers)
    assert resp.status == 200
    assert (await resp.json())["data"] == {"pw": "x"}
    assert resp.headers["X-Request-Id"]
